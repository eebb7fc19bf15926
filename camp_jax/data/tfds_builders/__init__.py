"""TFDS builders for the precomp release and the synthetic set (import tensorflow).

Build, e.g. for Flickr30K extracted to ~/data/f30k_precomp:

  builder = precomp_builder.CampPrecomp(config="flickr30k", data_dir=OUT)
  builder.download_and_prepare(file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir="~/data/f30k_precomp"))

then read with `reader.read_tfds_split("camp_precomp/flickr30k@OUT", "train")`, or in a run
with config.data.kind="tfds" and config.data.dir="camp_precomp/flickr30k@OUT".
The records are sharded array_record files (random access, so training keeps
the exact per-epoch order of the precomp path) that a pod can read from a bucket.
"""
