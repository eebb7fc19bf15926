"""The score matrix of many images x many captions.

`reference_score_matrix` is the straightforward transcription (every pair expanded through
the model's `score_matrix`), computed in fixed-size tiles so nothing recompiles per tile.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("model",))
def _reference_tile(model, params, img_emb, cap_emb, cap_mask):
  return model.apply({"params": params}, img_emb, cap_emb, cap_mask, method="score_matrix")


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)]) if rows > len(x) else x


def reference_score_matrix(model, params, img_emb, cap_emb, cap_mask,
                           image_tile: int = 8, caption_tile: int = 64) -> np.ndarray:
  """(Ni, R, d), (Nc, L, d), (Nc, L) -> (Ni, Nc), tile by tile, pairs expanded as the original."""
  n_img, n_cap = len(img_emb), len(cap_emb)
  scores = np.zeros((n_img, n_cap), np.float32)
  image_tile, caption_tile = min(image_tile, n_img), min(caption_tile, n_cap)
  for i in range(0, n_img, image_tile):
    imgs = _pad_rows(img_emb[i:i + image_tile], image_tile)
    for j in range(0, n_cap, caption_tile):
      caps = _pad_rows(cap_emb[j:j + caption_tile], caption_tile)
      mask = _pad_rows(cap_mask[j:j + caption_tile], caption_tile)
      tile = _reference_tile(model, params, imgs, caps, mask)
      scores[i:i + image_tile, j:j + caption_tile] = np.asarray(tile)[:n_img - i, :n_cap - j]
  return scores


def score_matrix(model, params, img_emb, cap_emb, cap_mask) -> np.ndarray:
  """The score matrix by the best available exact path."""
  return reference_score_matrix(model, params, img_emb, cap_emb, cap_mask)
