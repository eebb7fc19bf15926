r"""The score matrix of many images x many captions: an exact fast path and the reference.

  fast_score_matrix(model, params, img_emb, cap_emb, cap_mask) -> (Ni, Nc) jax.Array
      Pure, jittable and differentiable in params and embeddings; the training loss uses it.
  score_matrix(model, params, img_emb, cap_emb, cap_mask, ...) -> (Ni, Nc) np.ndarray
      The evaluation driver: captions in length buckets, memory-bounded tiles with static
      shapes, tiles sharded over the images axis of a mesh, progress logging.
  reference_score_matrix(...)
      The model's own transcription (every pair expanded), tile by tile.

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

`score_matrix` also scores captions on their real lengths: masking is complete in the full
model, and for the stage-1 model with `pad_words_to` every padded slot (a zero word) is the
same row, computed once and weighted by the number of padded slots. Masked word slots must
hold zero vectors, as `encode_captions` produces.
"""
import functools
import math
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from camp_jax.models.layers import MASKED_LOGIT

P = jax.sharding.PartitionSpec
F32 = jnp.float32
DEFAULT_BUCKETS = (8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 50)


# ----------------------------------------------------------------------------------------
# The fast path: per-item features, then the per-pair part.
# ----------------------------------------------------------------------------------------
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


def _pool_weights(head, x, bias_rows, mask, dtype):
  """Head-averaged attention-pooling weights of rows relu(x W + b_rows) -> (..., n)."""
  hidden = jax.nn.relu(_dot("icnd,de->icne", x, head["hidden"]["kernel"], dtype) + bias_rows)
  logits = _dot("icne,eh->icnh", hidden, head["heads"]["kernel"], dtype) + head["heads"]["bias"]
  if mask is not None:
    logits = jnp.where(mask[..., None], logits, MASKED_LOGIT)
  return jnp.mean(jax.nn.softmax(logits, axis=-2), axis=-1)


def pair_scores(fp: dict, img: dict, cap: dict, variant: str, pad_words_to: int | None = None,
                dtype=F32) -> jax.Array:
  """Scores of every image x caption from `image_features` and `caption_features`: (Ni, Nc)."""
  r, n_words = img["gram"].shape[-1], cap["t"].shape[1]
  mask = cap["mask"][None, :, None, :]                                         # (1, c, 1, L)
  logits = _dot("ikd,cld->ickl", img["stack"], cap["t"], dtype)               # (i, c, kR, L)
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
      slots = max(n_words, pad_words_to)
      row_w = (f.sum(2) + (slots - n_words) * f_pad) / slots
    t = _dot("icr,ird->icd", row_w, img["v"], dtype)
    v = v * _inv_norm(jnp.sum(v * v, -1, keepdims=True))
    t = t * _inv_norm(jnp.sum(t * t, -1, keepdims=True))
    return jnp.sum(v * t, axis=-1)

  gate_dot = logits[:, :, 2 * r:]                                              # M = V T^T
  # Regions: |Fv_r|^2 = (E H_t E^T)_rr, <V_r, Fv_r> = sum_l E_rl M_rl.
  inv_v = _inv_norm(jnp.sum(jnp.einsum("icrl,clm->icrm", e, cap["sqnorm"]) * e, -1))
  gate_v = jax.nn.sigmoid(jnp.sum(e * gate_dot, -1) * inv_v)[..., None]
  x_v = jax.nn.relu(gate_v * (img["fc1"][:, None] + inv_v[..., None] * _dot(
      "icrl,cld->icrd", e, cap["fc1"], dtype))).astype(dtype)                  # V' - V
  # Words: |Ft_l|^2 = (F H_v F^T)_ll, <T_l, Ft_l> = sum_r F_lr M_rl.
  inv_t = _inv_norm(jnp.sum(jnp.einsum("iclr,irs->icls", f, img["sqnorm"]) * f, -1))
  gate_t = jax.nn.sigmoid(jnp.einsum("iclr,icrl->icl", f, gate_dot) * inv_t)[..., None]
  x_t = jax.nn.relu(gate_t * (cap["fc2"][None] + inv_t[..., None] * _dot(
      "iclr,ird->icld", f, img["fc2"], dtype))).astype(dtype)                  # T' - T
  # Attention pooling of V' = x_v + V and T' = x_t + T, then the score head.
  w_v = _pool_weights(fp["final_reduce_1"], x_v, img["pool"][:, None], None, dtype)
  w_t = _pool_weights(fp["final_reduce_2"], x_t, cap["pool"][None], cap["mask"][None], dtype)
  v = _dot("icr,icrd->icd", w_v, x_v, dtype) + _dot("icr,ird->icd", w_v, img["v"], dtype)
  t = _dot("icl,icld->icd", w_t, x_t, dtype) + _dot("icl,cld->icd", w_t, cap["t"], dtype)
  v = v * _inv_norm(jnp.sum(v * v, -1, keepdims=True))
  t = t * _inv_norm(jnp.sum(t * t, -1, keepdims=True))
  head, d = fp["fc_out"], v.shape[-1]
  hidden = jax.nn.relu(_dot("icd,de->ice", v, head["hidden"]["kernel"][:d], dtype)
                       + _dot("icd,de->ice", t, head["hidden"]["kernel"][d:], dtype)
                       + head["hidden"]["bias"])
  return jax.nn.sigmoid(_dot("ice,eo->ico", hidden, head["out"]["kernel"], dtype)[..., 0]
                        + head["out"]["bias"][0])


def _fusion_config(model) -> tuple[str, int | None]:
  """(variant, pad_words_to used as the stage-1 slot count, or None)."""
  variant = model.variant
  pad = model.pad_words_to if variant == "cross_attention" else None
  return variant, pad


def fast_score_matrix(model, params, img_emb, cap_emb, cap_mask, *,
                      compute_dtype=F32) -> jax.Array:
  """What `model.apply(..., method="score_matrix")` computes, with the work hoisted.

  Pure jnp: jit it, differentiate it in params and embeddings. Deterministic (no dropout).

  Args:
    model: a `CAMP` module (its variant and pad_words_to are read).
    params: its params pytree (the one with a "fusion" entry).
    img_emb: (Ni, R, d) region embeddings.
    cap_emb: (Nc, L, d) word embeddings, zero vectors at masked slots.
    cap_mask: (Nc, L) bool. With the stage-1 `pad_words_to`, slots up to
      max(L, pad_words_to) count as padding, so a trimmed L gives the same scores.
    compute_dtype: float32, or bfloat16 for the d-sized products (statistics in float32).

  Returns:
    (Ni, Nc) float32 scores.
  """
  variant, pad = _fusion_config(model)
  fp = params["fusion"]
  if compute_dtype != F32:
    fp = jax.tree.map(lambda w: w.astype(compute_dtype).astype(F32), fp)
  img = image_features(fp, img_emb, variant, compute_dtype)
  cap = caption_features(fp, cap_emb, cap_mask, variant, compute_dtype)
  return pair_scores(fp, img, cap, variant, pad, compute_dtype)


# ----------------------------------------------------------------------------------------
# The evaluation driver: length buckets, memory-bounded static tiles, a mesh.
# ----------------------------------------------------------------------------------------
def bucket_widths_for(lengths: np.ndarray, width: int, buckets=DEFAULT_BUCKETS) -> np.ndarray:
  """Each caption's bucket: the smallest listed width >= its length, capped at `width`."""
  widths = np.array(sorted({min(int(w), width) for w in buckets} | {width}))
  return widths[np.searchsorted(widths, np.maximum(lengths, 1))]


def default_tile_bytes(platform: str) -> int:
  """Pair working set per block: small enough for the caches on CPU, large on accelerators."""
  return 32 << 20 if platform == "cpu" else 2 << 30


def pair_bytes(regions: int, width: int, dim: int) -> int:
  """Working set of one pair in a tile: a few (R + L, d) float32 buffers and the maps."""
  return 4 * (4 * (regions + width) * dim + 12 * regions * width + 4 * width * width)


@functools.partial(jax.jit, static_argnames=("variant", "dtype", "mesh"))
def _image_group(fp, img_emb, *, variant, dtype, mesh):
  """image_features of a group of images sharded over all mesh axes."""
  fn = functools.partial(image_features, variant=variant, dtype=dtype)
  spec = P(mesh.axis_names)
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(), spec), out_specs=spec)(fp, img_emb)


@functools.partial(jax.jit, static_argnames=("variant", "pad", "dtype", "mesh", "block"))
def _score_tile(fp, img, cap_emb, cap_mask, *, variant, pad, dtype, mesh, block):
  """(images of a group, sharded) x (a caption chunk, replicated) -> scores (Ni_group, C).

  Each device loops over caption blocks of `block` captions, so that only
  (local images x block) pairs are alive at a time.
  """
  def local(fp, img, cap_emb, cap_mask):
    cap = caption_features(fp, cap_emb, cap_mask, variant, dtype)
    cap = jax.tree.map(lambda x: x.reshape((-1, block) + x.shape[1:]), cap)
    out = jax.lax.map(lambda c: pair_scores(fp, img, c, variant, pad, dtype), cap)
    return jnp.moveaxis(out, 0, 1).reshape(out.shape[1], -1)                   # (ni, C)

  spec = P(mesh.axis_names)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), spec, P(), P()),
                       out_specs=spec)(fp, img, cap_emb, cap_mask)


def _split(n: int, most: int) -> tuple[int, int]:
  """(parts, size) with parts * size >= n, size <= most, parts as few and size as even as can be."""
  parts = -(-n // max(1, most))
  return parts, -(-n // parts)


def _log_progress(done: int, total: int, elapsed: float):
  rate = done / max(elapsed, 1e-9)
  logging.info("scored %d / %d pairs (%.1f%%), %.0f pairs/s, ETA %.0f s", done, total,
               100.0 * done / total, rate, (total - done) / max(rate, 1e-9))


def score_matrix(model, params, img_emb, cap_emb, cap_mask, *, compute_dtype=F32,
                 buckets=DEFAULT_BUCKETS, max_tile_bytes: int | None = None,
                 image_tile: int = 128, caption_chunk: int = 2048,
                 mesh: jax.sharding.Mesh | None = None,
                 progress: Callable[[int, int, float], None] | None = _log_progress,
                 progress_every_s: float = 30.0) -> np.ndarray:
  """The (Ni, Nc) score matrix of a CAMP model by the fast path, for evaluation.

  Captions are grouped by real length into `buckets` (at most one compilation of the
  tile function per width); images in groups of `image_tile` per device, sharded over
  all axes of `mesh` (default: every local device); each device scores its images against a
  chunk of captions in blocks whose working set stays within `max_tile_bytes` (default:
  32 MiB on CPU, where cache-sized blocks run ~2x faster than 256 MiB ones, 2 GiB on
  accelerators). Results stay
  on the devices until one gather at the end. Models other than CAMP (VSE) are scored
  directly. `progress(done_pairs, total_pairs, seconds)` runs every `progress_every_s`.

  Args:
    model, params: a CAMP module and its params pytree.
    img_emb: (Ni, R, d) numpy; cap_emb: (Nc, L, d) numpy; cap_mask: (Nc, L) bool.

  Returns:
    (Ni, Nc) float32 numpy scores.
  """
  if getattr(model, "variant", None) is None:                                 # VSE: one matmul.
    return np.asarray(jax.jit(functools.partial(model.apply, method="score_matrix"))(
        {"params": params}, img_emb, cap_emb, cap_mask))
  img_emb, cap_emb = np.asarray(img_emb, np.float32), np.asarray(cap_emb, np.float32)
  cap_mask = np.asarray(cap_mask, bool)
  (n_img, regions, dim), (n_cap, width) = img_emb.shape, cap_mask.shape
  variant, pad = _fusion_config(model)
  dtype = jnp.dtype(compute_dtype)
  mesh = mesh or jax.sharding.Mesh(np.array(jax.local_devices()), ("images",))
  n_dev, replicated = mesh.size, jax.sharding.NamedSharding(mesh, P())
  fp = jax.device_put(params["fusion"], replicated)
  if dtype != F32:
    fp = jax.tree.map(lambda w: w.astype(dtype).astype(F32), fp)
  static = dict(variant=variant, dtype=dtype, mesh=mesh)
  max_tile_bytes = max_tile_bytes or default_tile_bytes(mesh.devices.flat[0].platform)

  # Captions: sorted into buckets, each bucket cut into chunks of C = blocks x block.
  cap_widths = bucket_widths_for(cap_mask.sum(1), width, buckets)
  most_pairs = max(1, max_tile_bytes // pair_bytes(regions, int(cap_widths.max()), dim))
  groups, per_dev = _split(-(-n_img // n_dev), min(image_tile, most_pairs))
  chunks = []                                              # (columns, emb, mask, block)
  for w in np.unique(cap_widths):
    cols = np.flatnonzero(cap_widths == w)
    block = max(1, min(len(cols), max_tile_bytes // pair_bytes(regions, w, dim) // per_dev))
    parts, size = _split(len(cols), min(caption_chunk, len(cols)))
    blocks, block = _split(size, block)
    size = blocks * block
    for c in np.array_split(cols, parts):
      idx = np.concatenate([c, np.full(size - len(c), c[0])])                  # pad: repeat
      chunks.append((c, jax.device_put(cap_emb[idx, :w], replicated),
                     jax.device_put(cap_mask[idx, :w], replicated), block))

  # Images: groups of n_dev x per_dev, the last one zero-padded.
  group = n_dev * per_dev
  img_pad = np.concatenate([img_emb, np.zeros((groups * group - n_img, regions, dim),
                                              np.float32)])
  img_sharding = jax.sharding.NamedSharding(mesh, P(mesh.axis_names))
  results, pending, done, start, last_report = [], None, 0, time.perf_counter(), 0.0
  for g in range(groups):
    img = _image_group(fp, jax.device_put(img_pad[g * group:(g + 1) * group], img_sharding),
                       **static)
    for cols, emb, mask, block in chunks:
      out = _score_tile(fp, img, emb, mask, pad=pad, block=block, **static)
      results.append((g, cols, out))
      if pending is not None:                      # Keep one tile in flight, time the rest.
        pending[0].block_until_ready()
        done += pending[1]
      pending = (out, min(group, n_img - g * group) * len(cols))
      now = time.perf_counter() - start
      if progress is not None and now - last_report >= progress_every_s:
        progress(done, n_img * n_cap, now)
        last_report = now

  tiles = jax.device_get([r[2] for r in results])                 # the one gather
  if progress is not None and last_report > 0.0:
    progress(n_img * n_cap, n_img * n_cap, time.perf_counter() - start)
  scores = np.empty((n_img, n_cap), np.float32)
  for (g, cols, _), tile in zip(results, tiles):
    rows = min(group, n_img - g * group)
    scores[g * group:g * group + rows, cols] = tile[:rows, :len(cols)]
  return scores


# ----------------------------------------------------------------------------------------
# The reference: the model's own transcription, every pair expanded.
# ----------------------------------------------------------------------------------------
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


def caption_chunked(score_fn, img_emb, cap_emb, cap_mask, chunk: int) -> jax.Array:
  """score_fn over blocks of `chunk` captions, rematerialised: bounded memory under grad.

  For the training loss on a large batch: each block's activations are recomputed in the
  backward pass instead of stored, so memory grows with images x chunk, not images x
  captions. Captions (replicated in the train step) are split, image rows (sharded) are not.

  Args:
    score_fn: (img_emb, cap_emb, cap_mask) -> (Ni, c) scores, e.g. `fast_score_matrix`
      with the model and params bound.
    img_emb, cap_emb, cap_mask: (Ni, R, d), (Nc, L, d), (Nc, L).
    chunk: captions per block; 0 or >= Nc scores all at once. Must divide Nc.

  Returns:
    (Ni, Nc).
  """
  n_cap = cap_emb.shape[0]
  if not chunk or chunk >= n_cap:
    return score_fn(img_emb, cap_emb, cap_mask)
  if n_cap % chunk:
    raise ValueError(f"train_caption_chunk {chunk} does not divide the {n_cap} captions of "
                     "the batch")
  blocks = (cap_emb.reshape((n_cap // chunk, chunk) + cap_emb.shape[1:]),
            cap_mask.reshape((n_cap // chunk, chunk) + cap_mask.shape[1:]))
  block_scores = jax.lax.map(jax.checkpoint(lambda b: score_fn(img_emb, *b)), blocks)
  return jnp.moveaxis(block_scores, 0, 1).reshape(img_emb.shape[0], n_cap)
