r"""CAMP's hoisted exact path: the reference's scores with the pair-independent work done once.

  image_features(fp, img_emb, variant, dtype) -> per-image quantities (Ni, ...)
  caption_features(fp, cap_emb, cap_mask, variant, dtype) -> per-caption quantities (Nc, ...)
  pair_scores(fp, img, cap, variant, pad_words_to, dtype, gate=, head=) -> (Ni, Nc) scores

`fp` is the params dict of `CrossModalFusion`; `CAMP` exposes these as methods
(`model.apply(variables, ..., method="image_features")`), so scoring and training read no
parameter names (only `convert`, which maps the release's, and configs' `trainable` patterns). All three are pure jnp: jit them, differentiate them.

Why the fast path does less work (one pair: regions V (R, d), words T (L, d), s = sqrt(d),
Dense kernels are (in, out)). Every linear map that does not depend on the pair is applied
once per item, and attention maps are composed before they are applied:
  * both first-attention logit maps and the gate products come from ONE contraction of
    [V Wiq Wtk^T / s ; V Wik Wtq^T / s ; V] (3R, d) with T (L, d): A (R, L), B^T, M = V T^T;
  * Tv = A T, so the second logits (Tv Wq)(Tv Wk)^T / s = A G_t A^T with G_t (L, L) per
    caption, and Fv = C A T = E T with E = C A (R, L); likewise Ft = (D B) V with G_v (R, R);
  * |Fv_r|^2 = (E H_t E^T)_rr with H_t = T T^T, <V_r, Fv_r> = sum_l E_rl M_rl: Fv is
    never formed; Fv_n W1b = E (T W1b) / |Fv| with T W1b per caption;
  * fc_1(concat(V, Fv_n) g) = g (V W1a + Fv_n W1b); the pooling MLP's first layer on
    X + V is X W + (V W + b); averaging the heads' weights first gives one weighted sum.
What is left per pair is the pooling MLP on the fused rows ((R + L) d^2 multiply-adds),
the score head (2 d^2) and O(R L d) contractions. The stage-1 variant needs no d^2 work per
pair at all (the means of E T and (D B) V are (mean E) T and (sum D B) V).
Where no gradient is taken, `pooling="pallas"` runs the gated fusion and pooling of each side
in one TPU kernel (`pooling_kernel`), so the fused rows never reach HBM.

Captions can be scored on their real lengths (the scoring driver trims them into length
buckets): masking is complete in the full model, and for the stage-1 model with
`pad_words_to` every padded slot (a zero word) is the same row, computed once and weighted
by the number of padded slots. Masked word slots must hold zero vectors, as
`encode_captions` produces.
"""
import functools
import math

import jax
import jax.numpy as jnp

from camp_jax.models import pooling_kernel
from camp_jax.models.layers import MASKED_LOGIT

F32 = jnp.float32


def rounded_weights(fp: dict, dtype) -> dict:
  """The fusion params as float32 values representable in `dtype` (the bfloat16 mode)."""
  if jnp.dtype(dtype) == F32:
    return fp
  return jax.tree.map(lambda w: w.astype(dtype).astype(F32), fp)


def _dot(eq, a, b, dtype):
  """einsum of operands cast to `dtype`, as float32 (bfloat16 results are rounded first)."""
  return jnp.einsum(eq, a.astype(dtype), b.astype(dtype)).astype(F32)


def _masked_softmax(logits, mask, axis=-1):
  if mask is not None:
    logits = jnp.where(mask, logits, MASKED_LOGIT)
  return jax.nn.softmax(logits, axis=axis)


def _inv_norm(sq):
  """1 / (sqrt(sq) + 1e-8), the original's l2norm, from a squared norm."""
  return 1.0 / (jnp.sqrt(jnp.maximum(sq, 0.0)) + 1e-8)


def image_features(fp: dict, img_emb: jax.Array, variant: str, dtype=F32) -> dict:
  """Per-image quantities of the fast path: (Ni, R, d) -> dict of (Ni, ...) arrays."""
  d = img_emb.shape[-1]
  k = lambda name: fp[name]["kernel"]
  v = img_emb.astype(F32)
  # The composed first-attention maps, in float32 whatever the compute dtype.
  w_a = k("img_query_fc") @ k("txt_key_fc").T / math.sqrt(d)
  w_b = k("img_key_fc") @ k("txt_query_fc").T / math.sqrt(d)
  stack = [v @ w_a, v @ w_b] + ([v] if variant == "gate_fusion" else [])
  out = {"stack": jnp.concatenate(stack, axis=1).astype(dtype),                 # (Ni, 3R, d)
         "gram": (v @ k("weighted_img_query_fc")) @ jnp.swapaxes(
             v @ k("weighted_img_key_fc"), 1, 2) / math.sqrt(d),               # G_v (Ni, R, R)
         "v": v.astype(dtype)}
  if variant == "gate_fusion":
    pool = fp["final_reduce_1"]["hidden"]
    out.update(sqnorm=v @ jnp.swapaxes(v, 1, 2),                               # H_v (Ni, R, R)
               fc1=(v @ k("fc_1")[:d]).astype(dtype),                          # V W1a
               fc2=(v @ k("fc_2")[d:]).astype(dtype),                          # V W2b
               pool=(v @ pool["kernel"] + pool["bias"]).astype(dtype))         # V Wh + bh
  return out


def caption_features(fp: dict, cap_emb: jax.Array, cap_mask: jax.Array, variant: str,
                     dtype=F32) -> dict:
  """Per-caption quantities of the fast path: (Nc, L, d), (Nc, L) -> dict of (Nc, ...)."""
  d = cap_emb.shape[-1]
  k = lambda name: fp[name]["kernel"]
  t = cap_emb.astype(F32)
  out = {"t": t.astype(dtype), "mask": cap_mask.astype(bool),
         "gram": (t @ k("weighted_txt_query_fc")) @ jnp.swapaxes(
             t @ k("weighted_txt_key_fc"), 1, 2) / math.sqrt(d)}               # G_t (Nc, L, L)
  if variant == "gate_fusion":
    pool = fp["final_reduce_2"]["hidden"]
    out.update(sqnorm=t @ jnp.swapaxes(t, 1, 2),                               # H_t (Nc, L, L)
               fc1=(t @ k("fc_1")[d:]).astype(dtype),                          # T W1b
               fc2=(t @ k("fc_2")[:d]).astype(dtype),                          # T W2a
               pool=(t @ pool["kernel"] + pool["bias"]).astype(dtype))         # T Wh + bh
  return out


def _head_logits(hidden, kernel, dtype):
  """(i, c, n, e) x (e, heads) -> (i, c, n, heads), rounded like `_dot`.

  On GPUs as one broadcast product per head: XLA's Triton GEMM emitter finds no tiles for
  the backward of a dot that contracts over 4 heads (the train step does not compile for
  H100 with default flags). CPUs and TPUs keep the dot, which they fuse better.
  """
  def as_dot(hidden, kernel):
    return _dot("icne,eh->icnh", hidden, kernel, dtype)

  def as_products(hidden, kernel):
    h, k = hidden.astype(dtype).astype(F32), kernel.astype(dtype).astype(F32)
    out = jnp.stack([jnp.sum(h * k[:, j], -1) for j in range(k.shape[1])], -1)
    return out.astype(dtype).astype(F32)

  return jax.lax.platform_dependent(hidden, kernel, cuda=as_products, default=as_dot)


def _pool_weights(head, x, bias_rows, mask, dtype):
  """Head-averaged attention-pooling weights of rows relu(x W + b_rows) -> (..., n)."""
  hidden = jax.nn.relu(_dot("icnd,de->icne", x, head["hidden"]["kernel"], dtype) + bias_rows)
  logits = _head_logits(hidden, head["heads"]["kernel"], dtype) + head["heads"]["bias"]
  if mask is not None:
    logits = jnp.where(mask[..., None], logits, MASKED_LOGIT)
  return jnp.mean(jax.nn.softmax(logits, axis=-2), axis=-1)


def _fused_pooled(fp, img, cap, e, f, inv_v, gate_v, inv_t, gate_t, dtype):
  """Gated fusion and attention pooling of both sides: pooled V' and T', (i, c, d) each."""
  x_v = jax.nn.relu(gate_v[..., None] * (img["fc1"][:, None] + inv_v[..., None] * _dot(
      "icrl,cld->icrd", e, cap["fc1"], dtype))).astype(dtype)                  # V' - V
  x_t = jax.nn.relu(gate_t[..., None] * (cap["fc2"][None] + inv_t[..., None] * _dot(
      "iclr,ird->icld", f, img["fc2"], dtype))).astype(dtype)                  # T' - T
  # Attention pooling of V' = x_v + V and T' = x_t + T.
  w_v = _pool_weights(fp["final_reduce_1"], x_v, img["pool"][:, None], None, dtype)
  w_t = _pool_weights(fp["final_reduce_2"], x_t, cap["pool"][None], cap["mask"][None], dtype)
  v = _dot("icr,icrd->icd", w_v, x_v, dtype) + _dot("icr,ird->icd", w_v, img["v"], dtype)
  t = _dot("icl,icld->icd", w_t, x_t, dtype) + _dot("icl,cld->icd", w_t, cap["t"], dtype)
  return v, t


def _head_scores(fc_out: dict, v, t, head: str, dtype):
  """The score of each pair from its unit pooled vectors (i, c, d): fc_out's MLP, or cosine."""
  if head == "cosine":
    return jnp.sum(v * t, axis=-1)
  if head != "mlp":
    raise ValueError(f"pair_scores(head={head!r}): expected 'mlp' or 'cosine'")
  # One product with the whole kernel: no slices.
  hidden = jax.nn.relu(_dot("icd,de->ice", jnp.concatenate([v, t], -1),
                            fc_out["hidden"]["kernel"], dtype) + fc_out["hidden"]["bias"])
  return jax.nn.sigmoid(_dot("ice,eo->ico", hidden, fc_out["out"]["kernel"], dtype)[..., 0]
                        + fc_out["out"]["bias"][0])


def pair_scores(fp: dict, img: dict, cap: dict, variant: str, pad_words_to: int | None = None,
                dtype=F32, with_gates: bool = False, pooling: str = "xla", *,
                gate: str = "adaptive", head: str = "mlp"):
  """Scores of every image x caption from `image_features` and `caption_features`: (Ni, Nc).

  With `with_gates` (full model only), also its gates, a free by-product: (scores,
  {"region_gate": (Ni, Nc, R), "word_gate": (Ni, Nc, L)}). `pooling` (full model): "xla",
  or the `pooling_kernel` ("pallas" on TPU, "interpret" anywhere; not differentiable).
  `gate` / `head` (full model): `camp.GATES` / `camp.HEADS` ("open": gates of 1;
  "cosine": the cosine of the pooled vectors, fc_out unread); both kernels serve all four.
  """
  if pooling not in ("xla", "pallas", "interpret"):
    raise ValueError(f"pair_scores(pooling={pooling!r}): expected 'xla', 'pallas' or "
                     "'interpret' (scoring.pooling_for resolves 'auto')")
  if gate not in ("adaptive", "open"):
    raise ValueError(f"pair_scores(gate={gate!r}): expected 'adaptive' or 'open'")
  r, n_words = img["gram"].shape[-1], cap["t"].shape[1]
  mask = cap["mask"][None, :, None, :]                                         # (1, c, 1, L)
  # (i, c, kR, L); contracting in the stack's own layout spares a transposed copy of it.
  logits = jnp.swapaxes(_dot("ikd,cld->ikcl", img["stack"], cap["t"], dtype), 1, 2)
  a = _masked_softmax(logits[:, :, :r], mask)                                  # A (i, c, R, L)
  b_t = jax.nn.softmax(logits[:, :, r:2 * r], axis=-2)                         # B^T (i, c, R, L)
  # Second attention on the region side: C = softmax(A G_t A^T), E = C A.
  ag = jnp.einsum("icrl,clm->icrm", a, cap["gram"])
  e = jnp.einsum("icrs,icsl->icrl", jax.nn.softmax(
      jnp.einsum("icrm,icsm->icrs", ag, a), axis=-1), a)
  # ... and on the word side: D = softmax(B G_v B^T) over real words, F = D B (i, c, L, R).
  bg = jnp.einsum("icrl,irs->icls", b_t, img["gram"])
  dd = _masked_softmax(jnp.einsum("icls,icsm->iclm", bg, b_t), mask)
  f = jnp.einsum("iclm,icrm->iclr", dd, b_t)

  if variant == "cross_attention":
    v = _dot("icl,cld->icd", jnp.mean(e, axis=2), cap["t"], dtype)            # mean_r Fv
    if pad_words_to is None:                                                   # mean_l Ft
      m = cap["mask"].astype(F32)
      row_w = (f * m[None, :, :, None]).sum(2) / jnp.maximum(m.sum(1), 1.0)[None, :, None]
    else:
      # A padded slot (zero word) attends to every region uniformly: B row = 1/R.
      pad_logits = jnp.einsum("is,icsm->icm", jnp.mean(img["gram"], axis=1), b_t)
      pad_d = _masked_softmax(pad_logits, cap["mask"][None, :, :])
      f_pad = jnp.einsum("icm,icrm->icr", pad_d, b_t)
      slots = jax.core.max_dim(n_words, pad_words_to)
      row_w = (f.sum(2) + (slots - n_words) * f_pad) / slots
    t = _dot("icr,ird->icd", row_w, img["v"], dtype)
    v = v * _inv_norm(jnp.sum(v * v, -1, keepdims=True))
    t = t * _inv_norm(jnp.sum(t * t, -1, keepdims=True))
    if with_gates:
      raise ValueError("pair_scores(with_gates=True): the cross_attention variant has no gates")
    return jnp.sum(v * t, axis=-1)

  gate_dot = logits[:, :, 2 * r:]                                              # M = V T^T
  # Regions: |Fv_r|^2 = (E H_t E^T)_rr, <V_r, Fv_r> = sum_l E_rl M_rl.
  inv_v = _inv_norm(jnp.sum(jnp.einsum("icrl,clm->icrm", e, cap["sqnorm"]) * e, -1))
  gate_v = jax.nn.sigmoid(jnp.sum(e * gate_dot, -1) * inv_v)                   # (i, c, R)
  # Words: |Ft_l|^2 = (F H_v F^T)_ll, <T_l, Ft_l> = sum_r F_lr M_rl.
  inv_t = _inv_norm(jnp.sum(jnp.einsum("iclr,irs->icls", f, img["sqnorm"]) * f, -1))
  gate_t = jax.nn.sigmoid(jnp.einsum("iclr,icrl->icl", f, gate_dot) * inv_t)  # (i, c, L)
  if gate == "open":  # Fusion without adaptive gating (the gate products go unused).
    gate_v, gate_t = jnp.ones_like(gate_v), jnp.ones_like(gate_t)
  if pooling == "xla":
    v, t = _fused_pooled(fp, img, cap, e, f, inv_v, gate_v, inv_t, gate_t, dtype)
  else:  # The same chain in one Pallas kernel per side, the fused rows kept on chip.
    kernel = functools.partial(pooling_kernel.pooled, dtype=dtype,
                               interpret=pooling == "interpret")
    columns = lambda m, *cols: jnp.concatenate([m] + [c[..., None] for c in cols], -1)
    real = jnp.broadcast_to(cap["mask"][None], gate_t.shape).astype(F32)
    v = kernel(columns(e, inv_v, gate_v, jnp.ones_like(gate_v)),
               (img["fc1"], img["pool"], img["v"]), cap["fc1"], fp["final_reduce_1"])
    t = jnp.swapaxes(kernel(jnp.swapaxes(columns(f, inv_t, gate_t, real), 0, 1),
                            (cap["fc2"], cap["pool"], cap["t"]), img["fc2"],
                            fp["final_reduce_2"]), 0, 1)
  v = v * _inv_norm(jnp.sum(v * v, -1, keepdims=True))
  t = t * _inv_norm(jnp.sum(t * t, -1, keepdims=True))
  scores = _head_scores(fp.get("fc_out"), v, t, head, dtype)
  return (scores, {"region_gate": gate_v, "word_gate": gate_t}) if with_gates else scores
