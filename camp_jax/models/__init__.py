"""Models: CAMP (full and stage-1 variants) and the VSE++ baseline.

`build(model_config)` makes a module from the JSON-able dict that bundles and checkpoints
store, e.g. {"name": "camp", "variant": "gate_fusion", "vocab_size": 8590, ...};
`model_config(config, ...)` makes that dict from a run config.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from camp_jax.models.camp import CAMP, GATES, HEADS, VARIANTS
from camp_jax.models.vse import VSE

MODELS = {"camp": CAMP, "vse": VSE}
DTYPES = ("float32", "bfloat16")  # model.dtype: the compute dtype (parameters stay float32)
# Run-config fields that only CAMP has.
_CAMP_ONLY = ("variant", "gate", "head", "pad_words_to", "pool_heads", "dropout_rate")


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


def init_params(model: CAMP | VSE, rng):
  """Fresh parameters of a model `build` made: its shapes do not depend on the inputs'
  sizes, so one image of 2 regions and one caption of 3 words initialise it."""
  images = jnp.zeros((1, 2, model.img_dim), jnp.float32)
  tokens, lengths = jnp.ones((1, 3), jnp.int32), jnp.full((1,), 3, jnp.int32)
  return model.init(rng, images, tokens, lengths)["params"]


def with_word_vectors(params, vectors: np.ndarray, mask: np.ndarray | None = None):
  """params with the word embedding's rows set from `vectors` (V, word_dim).

  With `mask` (V,) only the rows marked true are set (the words that have a pretrained
  vector); the others keep their initial values.
  """
  embedding = params["txt_enc"]["embed"]["embedding"]
  if vectors.shape != embedding.shape:
    raise ValueError(f"word vectors of shape {vectors.shape}; this model's embedding is "
                     f"{embedding.shape} (vocabulary size x config.model.word_dim)")
  rows = np.ones(len(vectors), bool) if mask is None else np.asarray(mask, bool)
  new = jnp.where(rows[:, None], jnp.asarray(vectors, embedding.dtype), embedding)
  encoder = {**params["txt_enc"], "embed": {"embedding": new}}
  return {**params, "txt_enc": encoder}


__all__ = ["CAMP", "GATES", "HEADS", "VSE", "VARIANTS", "build", "init_params", "model_config",
           "with_word_vectors"]
