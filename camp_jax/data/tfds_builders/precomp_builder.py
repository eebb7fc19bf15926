"""TFDS builder for the SCAN precomp release (Flickr30K, COCO) as manual data."""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from camp_jax.data import precomp


@dataclasses.dataclass
class PrecompConfig(tfds.core.BuilderConfig):
  splits: tuple[str, ...] = ("train", "dev", "test")
  num_regions: int = 36
  feature_dim: int = 2048
  captions_per_image: int = 5


def features_dict(num_regions: int, feature_dim: int, captions_per_image: int):
  """One example per image: its features (R, D) and its captions in file order."""
  return tfds.features.FeaturesDict({
      "image_index": np.int64,
      "features": tfds.features.Tensor(shape=(num_regions, feature_dim), dtype=np.float32),
      "captions": tfds.features.Sequence(tfds.features.Text(), length=captions_per_image),
  })


def generate_examples(data_dir: str, split: str, captions_per_image: int):
  """Yields (index, example) per image of a precomp split, validated by `read_split`."""
  data = precomp.read_split(data_dir, split, captions_per_image=captions_per_image)
  k = data.captions_per_image
  for i in range(data.num_images):
    yield i, {"image_index": i, "features": np.asarray(data.images[i]),
              "captions": data.captions[i * k:(i + 1) * k]}


class CampPrecomp(tfds.core.GeneratorBasedBuilder):
  """Bottom-up-attention region features and captions in the SCAN precomp layout."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      PrecompConfig(name="flickr30k", description="f30k_precomp: 29,000/1,014/1,000 images."),
      PrecompConfig(name="coco", splits=("train", "dev", "test", "testall"),
                    description="coco_precomp: train incl. restval, dev 5,000, testall 5,000."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the precomp features of SCAN (https://github.com/kuanghuei/SCAN, data.zip)
  and pass the extracted folder that holds {split}_ims.npy and {split}_caps.txt
  (e.g. data/f30k_precomp) as the manual dir.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return self.dataset_info_from_configs(
        features=features_dict(c.num_regions, c.feature_dim, c.captions_per_image),
        homepage="https://github.com/kuanghuei/SCAN")

  def _split_generators(self, dl_manager):
    c = self.builder_config
    return {s: self._generate_examples(str(dl_manager.manual_dir), s) for s in c.splits}

  def _generate_examples(self, data_dir, split):
    return generate_examples(data_dir, split, self.builder_config.captions_per_image)
