"""Loads a bundle and scores images against captions (numpy in, numpy out).

    model = camp_jax.inference.load("BUNDLE")
    img_emb = model.encode_images(features)                 # (N, R, img_dim) -> (N, R, d)
    cap_emb, cap_mask = model.encode_captions(ids, lengths)  # (M, T), (M,) -> (M, L, d), (M, L)
    scores = model.score_matrix(img_emb, cap_emb, cap_mask)  # (N, M)

Encoders run in fixed-size batches (one compilation for any number of rows); scoring goes
through `camp_jax.scoring` (CAMP's hoisted exact path, tiled and sharded).
"""
import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from camp_jax import batching, bundle, models, scoring

IMAGE_BATCH = 128
CAPTION_BATCH = 512


@dataclasses.dataclass
class Predictor:
  """A model with its parameters; every method is jit-compiled once per batch shape."""
  model_config: dict
  params: Any
  vocab: Any = None

  def __post_init__(self):
    self.model = models.build(self.model_config)
    self.params = jax.tree.map(jnp.asarray, self.params)

  def _jitted(self, method: str):
    return functools.partial(scoring.apply, self.model, self.params, method=method)

  def encode_images(self, features, batch_size: int = IMAGE_BATCH) -> np.ndarray:
    """(N, R, img_dim) -> (N, R, d); a memmap is read one batch at a time."""
    if len(getattr(features, "shape", ())) != 3 or features.shape[-1] != self.model_config[
        "img_dim"]:
      raise ValueError(f"image features have shape {np.shape(features)}, expected "
                       f"(N, regions, {self.model_config['img_dim']})")
    return batching.map_batches(
        lambda x: self._jitted("encode_images")(x.astype(np.float32)), (features,),
        batching.batch_size_for(len(features), batch_size))

  def encode_captions(self, token_ids, lengths,
                      batch_size: int = CAPTION_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(M, T) int ids, (M,) lengths -> word embeddings (M, L, d), mask (M, L).

    L is the longest caption, or the model's `pad_words_to` slots if it has them (the
    stage-1 model's scores depend on them).
    """
    token_ids, lengths = np.asarray(token_ids, np.int32), np.asarray(lengths, np.int32)
    if token_ids.ndim != 2 or lengths.shape != token_ids.shape[:1] or not len(lengths):
      raise ValueError(f"token_ids {token_ids.shape} and lengths {lengths.shape} must be "
                       "(M, T) and (M,) with M >= 1")
    if lengths.min() < 1 or lengths.max() > token_ids.shape[1]:
      raise ValueError(f"lengths must lie in [1, {token_ids.shape[1]}], got "
                       f"[{lengths.min()}, {lengths.max()}]")
    if token_ids.min() < 0 or token_ids.max() >= self.model_config["vocab_size"]:
      raise ValueError(f"token ids must lie in [0, {self.model_config['vocab_size']}), got "
                       f"[{token_ids.min()}, {token_ids.max()}]")
    if self.model_config.get("pad_words_to") is None:
      token_ids = token_ids[:, :int(lengths.max())]
    return batching.map_batches(self._jitted("encode_captions"), (token_ids, lengths),
                                batching.batch_size_for(len(lengths), batch_size))

  def encode_split(self, images, token_ids, lengths) -> tuple[np.ndarray, ...]:
    """A whole split: (img_emb (N, R, d), cap_emb (M, L, d), cap_mask (M, L))."""
    return (self.encode_images(images), *self.encode_captions(token_ids, lengths))

  def image_vectors(self, img_emb) -> np.ndarray:
    """Shortlist vectors (N, d) of region embeddings (N, R, d)."""
    return batching.map_batches(self._jitted("image_vectors"), (img_emb,),
                                batching.batch_size_for(len(img_emb), IMAGE_BATCH))

  def caption_vectors(self, cap_emb, cap_mask) -> np.ndarray:
    """Shortlist vectors (M, d) of word embeddings (M, L, d), (M, L)."""
    return batching.map_batches(self._jitted("caption_vectors"), (cap_emb, cap_mask),
                                batching.batch_size_for(len(cap_emb), CAPTION_BATCH))

  def score_matrix(self, img_emb, cap_emb, cap_mask, **kwargs) -> np.ndarray:
    """(N, R, d), (M, L, d), (M, L) -> (N, M) scores; kwargs go to `scoring.score_matrix`."""
    return scoring.score_matrix(self.model, self.params, np.asarray(img_emb),
                                np.asarray(cap_emb), np.asarray(cap_mask, bool), **kwargs)

  def score_pairs(self, img_emb, cap_emb, cap_mask, img_index, cap_index) -> np.ndarray:
    """Scores of the pairs (img_index[p], cap_index[p]): (P,)."""
    return scoring.score_pairs(self.model, self.params, img_emb, cap_emb, cap_mask,
                               img_index, cap_index)

  def explain_pair(self, img_emb, cap_emb, cap_mask) -> dict:
    """Attention maps, gates and score of one pair (R, d), (L, d), (L,), as numpy."""
    if not self.model.PAIRWISE:
      raise ValueError(f"model {self.model_config.get('name')!r} has no attention to "
                       "explain (expected a CAMP bundle)")
    out = self._jitted("explain_pair")(img_emb, cap_emb, cap_mask)
    return {k: np.asarray(v) for k, v in out.items()}


def load(path: str | os.PathLike) -> Predictor:
  """Loads a bundle written by `camp_jax.convert` or `camp_jax.export`."""
  model_config, params, vocab, _ = bundle.load(path)
  return Predictor(model_config, params, vocab)
