"""Models: CAMP (full and stage-1 variants) and the VSE++ baseline.

`build(model_config)` makes a module from the JSON-able dict that bundles and
configs store, e.g. {"name": "camp", "variant": "gate_fusion", "vocab_size": 8590, ...}.
"""
import dataclasses

from camp_jax.models.camp import CAMP, VARIANTS
from camp_jax.models.vse import VSE

MODELS = {"camp": CAMP, "vse": VSE}


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


__all__ = ["CAMP", "VSE", "VARIANTS", "build"]
