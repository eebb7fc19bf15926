"""Models: CAMP (full and stage-1 variants) and the VSE++ baseline.

`build(model_config)` makes a module from the JSON-able dict that bundles and checkpoints
store, e.g. {"name": "camp", "variant": "gate_fusion", "vocab_size": 8590, ...};
`model_config(config, ...)` makes that dict from a run config.
"""
import dataclasses

from camp_jax.models.camp import CAMP, VARIANTS
from camp_jax.models.vse import VSE

MODELS = {"camp": CAMP, "vse": VSE}
# Run-config fields that only CAMP has.
_CAMP_ONLY = ("variant", "pad_words_to", "pool_heads", "dropout_rate")


def build(model_config) -> CAMP | VSE:
  """Returns the model named by model_config["name"] with the other fields as attributes."""
  config = dict(model_config)
  name = config.pop("name", "camp")
  if name not in MODELS:
    raise ValueError(f"model.name is {name!r}, expected one of {sorted(MODELS)}")
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(config) - fields)
  if unknown:
    raise ValueError(f"model config for {name!r} has unknown fields {unknown}; "
                     f"expected some of {sorted(fields)}")
  if "dtype" in config and isinstance(config["dtype"], str):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    config["dtype"] = jnp.dtype(config["dtype"])
  return cls(**config)


def model_config(config, vocab_size: int, img_dim: int) -> dict:
  """The JSON-able model config (what bundles store) from a run config and the data sizes."""
  cfg = dict(config.model.to_dict(), vocab_size=vocab_size, img_dim=img_dim)
  if cfg.get("pad_words_to", None) == 0:
    cfg["pad_words_to"] = None  # 0 on the command line means "no padding".
  if cfg.get("name") == "vse":
    for key in _CAMP_ONLY:
      cfg.pop(key, None)
  return cfg


__all__ = ["CAMP", "VSE", "VARIANTS", "build", "model_config"]
