"""What a run config's programs see, without its data: batch shapes, epoch and split sizes.

The compile-only analysis needs no features on disk: the shapes come from the dataset the
config names (the SCAN precomp sets) or from its synthetic settings.
"""
import dataclasses

from camp_jax.data import pipeline

# SCAN precomp sets (https://github.com/kuanghuei/SCAN, data.zip): 36 regions x 2048 per
# image, 5 captions per image. Train images: f30k 29,000; coco 113,287 (train + restval).
# Evaluation: F30K test 1,000 images; COCO testall (5K) 5,000 images. The vocabulary sizes
# of the released vocab files only size the word-embedding table (V x 300, a few MB).
DATASETS = {
    "f30k_precomp": dict(train_images=29_000, vocab_size=8_481,
                         eval_images={"test": 1_000, "dev": 1_014}),
    "coco_precomp": dict(train_images=113_287, vocab_size=11_755,
                         eval_images={"testall": 5_000, "test": 1_000, "dev": 5_000}),
}
PRECOMP = dict(regions=36, img_dim=2048, captions_per_image=5)
# The widest caption a training or evaluation batch holds (tokens incl. <start>/<end>).
CAPTION_WIDTH = pipeline.LENGTH_BUCKETS[-1]


@dataclasses.dataclass(frozen=True)
class Workload:
  dataset: str
  batch_size: int
  regions: int
  img_dim: int
  caption_width: int
  vocab_size: int
  train_images: int
  eval_split: str
  eval_images: int
  eval_captions: int

  @property
  def steps_per_epoch(self) -> int:
    """As train.py: one caption per image per epoch, whole batches."""
    return max(1, self.train_images // self.batch_size)


def for_config(config) -> Workload:
  """The sizes of `config`'s train step and of the first of its eval splits."""
  data = config.data
  split = config.eval_splits[0]
  if data.kind == "synthetic":
    s = data.synthetic
    evals = {"test": s.num_test, "dev": s.num_dev}
    if split not in evals:
      raise ValueError(f"synthetic data has no eval split {split!r}")
    # Synthetic vocabularies are small; 1,000 words bounds them.
    return Workload("synthetic", config.batch_size, s.num_regions, s.feature_dim,
                    CAPTION_WIDTH, 1_000, s.num_train, split, evals[split], 5 * evals[split])
  name = data.dir.rstrip("/").split("/")[-1]
  if name not in DATASETS:
    raise ValueError(f"config.data.dir={data.dir!r}: the analysis knows the precomp sets "
                     f"{sorted(DATASETS)} (by folder name) and synthetic data")
  d = DATASETS[name]
  if split not in d["eval_images"]:
    raise ValueError(f"{name} has no eval split {split!r}; known: {sorted(d['eval_images'])}")
  images = d["eval_images"][split]
  return Workload(name, config.batch_size, PRECOMP["regions"], PRECOMP["img_dim"],
                  CAPTION_WIDTH, d["vocab_size"], d["train_images"], split, images,
                  PRECOMP["captions_per_image"] * images)
