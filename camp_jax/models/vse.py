"""VSE++ baseline: one pooled vector per image and per caption, scored by cosine."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camp_jax.models.encoders import CaptionEncoder, ImageEncoder
from camp_jax.models.layers import l2_normalize


def pooled_image(img_emb: jax.Array) -> jax.Array:
  """Mean over regions, L2-normalised: (N, R, d) -> (N, d)."""
  return l2_normalize(jnp.mean(img_emb, axis=-2))


def pooled_caption(cap_emb: jax.Array, cap_mask: jax.Array) -> jax.Array:
  """Mean over real words, L2-normalised: (N, L, d), (N, L) -> (N, d)."""
  m = cap_mask[..., None].astype(cap_emb.dtype)
  return l2_normalize(jnp.sum(cap_emb * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0))


class VSE(nn.Module):
  """Joint embedding with the same encoders as CAMP and the same method names."""
  vocab_size: int
  word_dim: int = 300
  embed_dim: int = 1024
  img_dim: int = 2048
  dtype: Any = jnp.float32

  def setup(self):
    self.img_enc = ImageEncoder(self.embed_dim, dtype=self.dtype)
    self.txt_enc = CaptionEncoder(self.vocab_size, self.word_dim, self.embed_dim)

  def encode_images(self, images):
    return self.img_enc(images)

  def encode_captions(self, tokens, lengths):
    return self.txt_enc(tokens, lengths)

  def score_matrix(self, img_emb, cap_emb, cap_mask, deterministic: bool = True):
    """Cosine of pooled embeddings: (Ni, R, d), (Nc, L, d), (Nc, L) -> (Ni, Nc)."""
    del deterministic
    return pooled_image(img_emb) @ pooled_caption(cap_emb, cap_mask).T

  def __call__(self, images, tokens, lengths, deterministic: bool = True):
    cap_emb, cap_mask = self.encode_captions(tokens, lengths)
    return self.score_matrix(self.encode_images(images), cap_emb, cap_mask)
