"""VSE++ baseline: one pooled vector per image and per caption, scored by cosine."""
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from camp_jax.models.encoders import CaptionEncoder, ImageEncoder
from camp_jax.models.layers import pooled_caption, pooled_image


class VSE(nn.Module):
  """Joint embedding with CAMP's encoders and method names; its score is the pooled cosine."""
  # Two towers: a score needs no pair-wise computation (see CAMP.PAIRWISE).
  PAIRWISE: ClassVar[bool] = False
  has_gates: ClassVar[bool] = False  # no fusion gates (see CAMP.has_gates)
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

  def image_vectors(self, img_emb):
    """(N, R, d) -> (N, d), L2-normalised."""
    return pooled_image(img_emb)

  def caption_vectors(self, cap_emb, cap_mask):
    """(M, L, d), (M, L) -> (M, d), L2-normalised."""
    return pooled_caption(cap_emb, cap_mask)

  def score_matrix(self, img_emb, cap_emb, cap_mask, deterministic: bool = True):
    """Cosine of pooled embeddings: (Ni, R, d), (Nc, L, d), (Nc, L) -> (Ni, Nc)."""
    del deterministic
    return self.image_vectors(img_emb) @ self.caption_vectors(cap_emb, cap_mask).T

  def __call__(self, images, tokens, lengths, deterministic: bool = True):
    cap_emb, cap_mask = self.encode_captions(tokens, lengths)
    return self.score_matrix(self.encode_images(images), cap_emb, cap_mask)
