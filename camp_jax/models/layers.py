"""Small building blocks shared by the models: initialisers, attention, normalisation."""
import math

import jax
import jax.numpy as jnp

# Masked keys get this logit, as in the original (`masked_fill(mask == 0, -1e9)`).
MASKED_LOGIT = -1e9


def symmetric_uniform(bound: float):
  """Initialiser drawing from U(-bound, bound)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_default_init(fan_in: int):
  """PyTorch's default for Linear/GRU weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return symmetric_uniform(1.0 / math.sqrt(fan_in))


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """x / (||x|| + eps) along the last axis, as the original's `l2norm`."""
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def attend(query: jax.Array, key: jax.Array, value: jax.Array,
           key_mask: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v with masked keys.

  Args:
    query: (..., Lq, d).
    key: (..., Lk, d).
    value: (..., Lk, dv).
    key_mask: optional (..., Lk) bool; False keys get a -1e9 logit.

  Returns:
    (..., Lq, dv).
  """
  return attention_weights(query, key, key_mask) @ value


def attention_weights(query: jax.Array, key: jax.Array,
                      key_mask: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(d)): (..., Lq, d), (..., Lk, d) -> (..., Lq, Lk)."""
  logits = query @ jnp.swapaxes(key, -1, -2) / math.sqrt(query.shape[-1])
  if key_mask is not None:
    logits = jnp.where(key_mask[..., None, :], logits, MASKED_LOGIT)
  return jax.nn.softmax(logits, axis=-1)


def pooled_image(img_emb: jax.Array) -> jax.Array:
  """Mean over regions, L2-normalised: (..., R, d) -> (..., d)."""
  return l2_normalize(jnp.mean(img_emb, axis=-2))


def pooled_caption(cap_emb: jax.Array, cap_mask: jax.Array) -> jax.Array:
  """Mean over real words, L2-normalised: (..., L, d), (..., L) -> (..., d)."""
  m = cap_mask[..., None].astype(cap_emb.dtype)
  return l2_normalize(jnp.sum(cap_emb * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0))
