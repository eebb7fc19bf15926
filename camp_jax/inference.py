"""Loads a bundle and scores images against captions (numpy in, numpy out).

    model = camp_jax.inference.load("BUNDLE")
    img_emb = model.encode_images(features)                 # (N, R, img_dim) -> (N, R, d)
    cap_emb, cap_mask = model.encode_captions(ids, lengths)  # (M, T), (M,) -> (M, L, d), (M, L)
    scores = model.score_matrix(img_emb, cap_emb, cap_mask)  # (N, M)
"""
import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from camp_jax import bundle, models


@dataclasses.dataclass
class Predictor:
  """A model with its parameters; every method is jit-compiled once per input shape."""
  model_config: dict
  params: Any
  vocab: Any = None

  def __post_init__(self):
    self.model = models.build(self.model_config)
    self.variables = {"params": jax.tree.map(jnp.asarray, self.params)}

  def _apply(self, method, *args):
    return _jitted(self.model, method)(self.variables, *args)

  def encode_images(self, features) -> np.ndarray:
    """(N, R, img_dim) -> (N, R, d)."""
    features = np.asarray(features, np.float32)
    if features.ndim != 3 or features.shape[-1] != self.model_config["img_dim"]:
      raise ValueError(f"image features have shape {features.shape}, expected "
                       f"(N, regions, {self.model_config['img_dim']})")
    return np.asarray(self._apply("encode_images", features))

  def encode_captions(self, token_ids, lengths) -> tuple[np.ndarray, np.ndarray]:
    """(M, T) int ids, (M,) lengths -> word embeddings (M, L, d), mask (M, L)."""
    token_ids, lengths = np.asarray(token_ids, np.int32), np.asarray(lengths, np.int32)
    if token_ids.ndim != 2 or lengths.shape != token_ids.shape[:1]:
      raise ValueError(f"token_ids {token_ids.shape} and lengths {lengths.shape} must be "
                       "(M, T) and (M,)")
    if lengths.min(initial=1) < 1 or lengths.max(initial=0) > token_ids.shape[1]:
      raise ValueError(f"lengths must lie in [1, {token_ids.shape[1]}], got "
                       f"[{lengths.min()}, {lengths.max()}]")
    if token_ids.min(initial=0) < 0 or token_ids.max(initial=0) >= self.model_config["vocab_size"]:
      raise ValueError(f"token ids must lie in [0, {self.model_config['vocab_size']}), got "
                       f"[{token_ids.min()}, {token_ids.max()}]")
    emb, mask = self._apply("encode_captions", token_ids, lengths)
    return np.asarray(emb), np.asarray(mask)

  def score_matrix(self, image_emb, caption_emb, caption_mask) -> np.ndarray:
    """(N, R, d), (M, L, d), (M, L) -> (N, M) scores, computed in tiles."""
    from camp_jax import scoring  # pylint: disable=g-import-not-at-top
    return np.asarray(scoring.score_matrix(self.model, self.variables["params"],
                                           np.asarray(image_emb), np.asarray(caption_emb),
                                           np.asarray(caption_mask, bool)))


@functools.lru_cache(maxsize=None)
def _jitted(model, method):
  return jax.jit(functools.partial(model.apply, method=method))


def load(path: str | os.PathLike) -> Predictor:
  """Loads a bundle written by `camp_jax.convert` or `camp_jax.export`."""
  model_config, params, vocab, _ = bundle.load(path)
  return Predictor(model_config, params, vocab)
