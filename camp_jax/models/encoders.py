"""Encoders: precomputed region features -> region embeddings, token ids -> word embeddings."""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camp_jax.models.layers import symmetric_uniform, torch_default_init


class ImageEncoder(nn.Module):
  """Linear map of each region feature: (..., R, img_dim) -> (..., R, d), no normalisation."""
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, regions: jax.Array) -> jax.Array:
    fan_in = regions.shape[-1]
    bound = math.sqrt(6.0 / (fan_in + self.embed_dim))  # Xavier uniform, as the release.
    return nn.Dense(self.embed_dim, dtype=self.dtype, name="fc",
                    kernel_init=symmetric_uniform(bound),
                    bias_init=nn.initializers.zeros)(regions)


class GRU(nn.Module):
  """One GRU direction with PyTorch's gate layout ([r; z; n] stacked, separate b_in and b_hn).

  The input projection of every time step is one matmul outside the recurrence; only the
  hidden projection runs inside `lax.scan`.
  """
  hidden_dim: int

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """(N, T, in) -> hidden states (N, T, H), starting from h = 0 at t = 0."""
    h_dim = self.hidden_dim
    init = torch_default_init(h_dim)
    gates_x = nn.Dense(3 * h_dim, kernel_init=init, bias_init=init, name="input")(inputs)
    w_h = self.param("hidden_kernel", init, (h_dim, 3 * h_dim))
    b_h = self.param("hidden_bias", init, (3 * h_dim,))

    def step(h, gx):
      gh = h @ w_h + b_h
      r = jax.nn.sigmoid(gx[:, :h_dim] + gh[:, :h_dim])
      z = jax.nn.sigmoid(gx[:, h_dim:2 * h_dim] + gh[:, h_dim:2 * h_dim])
      n = jnp.tanh(gx[:, 2 * h_dim:] + r * gh[:, 2 * h_dim:])
      h = (1.0 - z) * n + z * h
      return h, h

    h0 = jnp.zeros(inputs.shape[:1] + (h_dim,), gates_x.dtype)
    _, states = jax.lax.scan(step, h0, jnp.swapaxes(gates_x, 0, 1))
    return jnp.swapaxes(states, 0, 1)


def reverse_within_length(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses the first `lengths[i]` steps of each row, leaving padding in place.

  (N, T, ...) -> (N, T, ...). It is its own inverse, so it also maps outputs back.
  """
  steps = jnp.arange(x.shape[1])
  index = jnp.where(steps[None] < lengths[:, None], lengths[:, None] - 1 - steps[None], steps[None])
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


class CaptionEncoder(nn.Module):
  """Embedding + one-layer bidirectional GRU over the real tokens, directions averaged.

  The backward direction starts at each caption's last real token (a packed sequence in
  the original); padded positions come out as zero vectors.
  """
  vocab_size: int
  word_dim: int
  embed_dim: int

  @nn.compact
  def __call__(self, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """tokens (N, T) int, lengths (N,) -> word embeddings (N, T, d), mask (N, T) bool."""
    mask = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
    words = nn.Embed(self.vocab_size, self.word_dim, name="embed",
                     embedding_init=symmetric_uniform(0.1))(tokens)
    forward = GRU(self.embed_dim, name="forward")(words)
    backward = GRU(self.embed_dim, name="backward")(reverse_within_length(words, lengths))
    backward = reverse_within_length(backward, lengths)
    return jnp.where(mask[..., None], (forward + backward) / 2, 0.0), mask

