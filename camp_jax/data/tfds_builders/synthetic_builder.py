"""TFDS builder for the built-in synthetic set (generated locally, no download)."""
import dataclasses
import os

import tensorflow_datasets as tfds

from camp_jax.data import synthetic
from camp_jax.data.tfds_builders import precomp_builder


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  sizes: dict = dataclasses.field(default_factory=dict)  # Overrides of synthetic.DEFAULTS.

  def settings(self) -> dict:
    return dict(synthetic.DEFAULTS, **self.sizes)


class CampSynthetic(tfds.core.GeneratorBasedBuilder):
  """Scenes of coloured objects with templated captions, clutter and filler; see `synthetic`.
  The relevance files stay in the generated folder (download_dir/camp_synthetic/CONFIG)."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"2.0.0": "Clutter regions and filler words (synthetic data version 2).",
                   "1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default"),
      SyntheticConfig(name="tiny", sizes=dict(num_train=64, num_dev=16, num_test=16,
                                              num_regions=4, feature_dim=8, clutter_regions=1)),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.settings()
    return self.dataset_info_from_configs(
        features=precomp_builder.features_dict(s["num_regions"], s["feature_dim"], 5))

  def _split_generators(self, dl_manager):
    out = os.path.join(str(dl_manager.download_dir), "camp_synthetic", self.builder_config.name)
    synthetic.ensure_synthetic(out, **self.builder_config.sizes)
    return {s: self._generate_examples(out, s) for s in ("train", "dev", "test")}

  def _generate_examples(self, data_dir, split):
    return precomp_builder.generate_examples(data_dir, split, 5)
