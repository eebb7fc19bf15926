r"""The gated fusion and attention pooling of one side, fused in a Pallas TPU kernel (forward).

  pooled(mix, own, other, head, dtype, interpret) -> (N_own, N_other, d)

For each pair (own item o, other item j), with n rows on the own side (regions of an image
or words of a caption) and k rows on the other side:
  x = g * relu(A_o + s * (M O_j))           the fused rows minus the own rows, (n, d)
  h = relu(x W + P_o)                       the pooling MLP's hidden layer
  w = mean over heads of softmax_rows(h W_heads + b_heads), masked rows excluded, (n,)
  pooled = sum_rows w * (x + V_o)           (d,)
where M (n, k) is the pair's second-attention map (E or F of `camp_fast`), s and g the
rows' inverse norms and gates, A_o, P_o, V_o the own item's fc-projection, pooling bias and
rows, O_j the other item's fc-projection. This is `camp_fast.pair_scores`'s chain, rewritten
with relu(g z) = g relu(z) (the gate is a sigmoid, or 1 with `gate="open"`: g >= 0). Every
ablation variant of the full model runs here: open gates are a gate column of ones, and the
score head (MLP or cosine) reads the pooled vectors outside the kernel.

Why a kernel: XLA writes every pair's (n, d) rows to HBM and reads them back between the
matmul and the pooling; here they stay in VMEM, and HBM sees only M, the per-item rows and
the pooled vectors. No VJP: it serves the passes that are not differentiated (evaluation
tiles, the train step's all-pairs pass under `backward_pairs="hardest"`).

`interpret=True` runs it in Pallas's interpreter (any backend: the tests).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from camp_jax.models.layers import MASKED_LOGIT

F32 = jnp.float32
LANES = 128
VMEM_LIMIT = 32 << 20   # Above v5e's 16 MiB default scoped limit, within every TPU's VMEM.


def other_block(n_other: int, most: int = 8) -> int:
  """Other items per grid step: the largest divisor of n_other that is at most `most`."""
  return max(b for b in range(1, min(n_other, most) + 1) if n_other % b == 0)


def _kernel(mix_ref, own_fc_ref, own_bias_ref, own_rows_ref, other_ref, w_ref, heads_ref,
            heads_bias_ref, out_ref, *, heads: int, dtype):
  """One own item x a block of other items; mix columns: [M | s | g | row mask]."""
  k = other_ref.shape[1]
  rnd = lambda x: x.astype(dtype).astype(F32)             # `camp_fast._dot`'s rounding
  dot = lambda a, b: rnd(jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=F32))
  lane = jax.lax.broadcasted_iota(jnp.int32, (1, mix_ref.shape[-1]), 1)
  head_lane = jax.lax.broadcasted_iota(jnp.int32, (1, LANES), 1) < heads
  own_fc, own_bias, own_rows = (r[0].astype(F32) for r in (own_fc_ref, own_bias_ref,
                                                            own_rows_ref))
  w, w_heads, b_heads = w_ref[...], heads_ref[...], heads_bias_ref[...]
  rows = []
  for j in range(other_ref.shape[0]):
    mix = mix_ref[0, j]                                                   # (n, k + 3)
    column = lambda c: jnp.sum(jnp.where(lane == c, mix, 0.0), axis=1, keepdims=True)
    inv_norm, gate, real = column(k), column(k + 1), column(k + 2)       # (n, 1) each
    x = rnd(gate * jnp.maximum(own_fc + inv_norm * dot(mix[:, :k], other_ref[j]), 0.0))
    hidden = jnp.maximum(dot(x, w) + own_bias, 0.0)
    logits = dot(hidden, w_heads) + b_heads                               # (n, LANES)
    logits = jnp.where(real > 0.0, logits, MASKED_LOGIT)
    p = jnp.exp(logits - jnp.max(logits, axis=0, keepdims=True))
    p = p / jnp.sum(p, axis=0, keepdims=True)
    weight = rnd(jnp.sum(jnp.where(head_lane, p, 0.0), axis=1, keepdims=True) / heads)
    rows.append(rnd(jnp.sum(weight * x, axis=0, keepdims=True))
                + rnd(jnp.sum(weight * own_rows, axis=0, keepdims=True)))
  out_ref[0, 0] = jnp.concatenate(rows, axis=0)


@functools.partial(jax.jit, static_argnames=("dtype", "interpret", "block"))
def pooled(mix, own, other, head, dtype=F32, interpret: bool = False, block: int | None = None):
  """The pooled fused rows of every (own, other) pair, unnormalised: (N_own, N_other, d).

  Args:
    mix: (N_own, N_other, n, k + 3) float32: [M | s | g | 1 for a real row, 0 masked].
    own: (fc, bias, rows), each (N_own, n, d): A, P (the MLP's bias per row), V; float32
      or `dtype`.
    other: (N_other, k, d), O; float32 or `dtype`.
    head: the pooling params {"hidden": {"kernel", "bias"}, "heads": {"kernel", "bias"}}
      (the hidden bias is already in P).
    dtype: the matmuls' operand dtype (float32 or bfloat16), rounded as `camp_fast._dot`.
    block: other items per grid step (default `other_block`).
  """
  n_own, n_other, n, _ = mix.shape
  k, d = other.shape[1:]
  heads = head["heads"]["kernel"].shape[1]
  block = block or other_block(n_other)
  # Heads padded to a full lane width: the kernel's matmuls stay 128-aligned.
  w_heads = jnp.pad(head["heads"]["kernel"], ((0, 0), (0, LANES - heads)))
  b_heads = jnp.pad(head["heads"]["bias"], (0, LANES - heads))[None]
  whole = lambda shape: pl.BlockSpec(shape, lambda b, o: (0,) * len(shape))
  per_own = pl.BlockSpec((1, n, d), lambda b, o: (o, 0, 0))
  pairs = n_own * n_other
  cost = pl.CostEstimate(
      flops=2 * pairs * n * (k * d + d * d + d * heads),      # the useful work, as XLA counts
      transcendentals=pairs * n * heads,
      bytes_accessed=4 * (mix.size + pairs * d) + jnp.dtype(dtype).itemsize * d * (d + LANES)
      + other.nbytes + sum(x.nbytes for x in own) * (n_other // block))
  out = pl.pallas_call(
      functools.partial(_kernel, heads=heads, dtype=jnp.dtype(dtype)),
      grid=(n_other // block, n_own),          # own items inner: an other block is read once
      in_specs=[pl.BlockSpec((1, block) + mix.shape[2:], lambda b, o: (o, b, 0, 0)),
                per_own, per_own, per_own,
                pl.BlockSpec((block, k, d), lambda b, o: (b, 0, 0)),
                whole((d, d)), whole((d, LANES)), whole((1, LANES))],
      out_specs=pl.BlockSpec((1, 1, block, d), lambda b, o: (o, b, 0, 0)),
      # Inside shard_map: the result varies over the mesh axes the pairs' maps vary over.
      out_shape=jax.ShapeDtypeStruct((n_own, n_other // block, block, d), F32,
                                     manual_axis_type=jax.typeof(mix).manual_axis_type),
      compiler_params=pltpu.CompilerParams(vmem_limit_bytes=VMEM_LIMIT),
      cost_estimate=cost, interpret=interpret,
  )(mix.astype(F32), *own, other,             # the features in their own dtype: no copies
    head["hidden"]["kernel"].astype(dtype), w_heads.astype(dtype), b_heads.astype(F32))
  return out.reshape(n_own, n_other, d)
