r"""Scores of many images x many captions: the evaluation driver, pair lists, training blocks.

  score_matrix(model, params, img_emb, cap_emb, cap_mask) -> (Ni, Nc) numpy
      Evaluation: captions in length buckets, memory-bounded tiles with static shapes, image
      groups split over every device of every process, progress logging.
  score_pairs(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index) -> (P,)
      Given pairs only (reranking a shortlist).
  batch_scores(model, params, img_emb, cap_emb, cap_mask, mesh, chunk) -> (B, B) jax.Array
      Training: the batch's score matrix in (image block x caption block) pieces, one per
      device, differentiable.
  batch_pair_scores(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index, mesh)
      Training: chosen pairs of the batch (those the loss reads), differentiable.
  reference_score_matrix(...) -> (Ni, Nc) numpy
      The model's own transcription, every pair expanded, tile by tile.
  pooling_for(mesh, choice) -> "xla" | "pallas" | "interpret"
      Where no gradient is taken: "auto" is the Pallas pooling kernel on TPU meshes.

The driver does no maths of its own: CAMP's hoisted exact path is three model methods
(`image_features`, `caption_features`, `pair_scores`; see `camp_jax.models.camp_fast`).
Two-tower models (VSE, `PAIRWISE` False) score by one matrix product of their vectors.
"""
import functools
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from camp_jax import batching, sharding

P = jax.sharding.PartitionSpec
DEFAULT_BUCKETS = (8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 50)
POOLING = ("auto", "xla", "pallas", "interpret")


def pooling_for(mesh: jax.sharding.Mesh, choice: str = "auto") -> str:
  """`pair_scores`'s pooling where no gradient is taken: "auto" is the Pallas kernel on TPU."""
  if choice not in POOLING:
    raise ValueError(f"pooling={choice!r}: expected one of {POOLING}")
  if choice == "auto":
    return "pallas" if mesh.devices.flat[0].platform == "tpu" else "xla"
  return choice


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


def _split(n: int, most: int) -> tuple[int, int]:
  """(parts, size) with parts * size >= n, size <= most, parts as few and size as even as can be."""
  parts = -(-n // max(1, most))
  return parts, -(-n // parts)


@functools.partial(jax.jit, static_argnames=("model", "mesh"))
def _image_group(model, params, img_emb, *, mesh):
  """image_features of a group of images split over every device."""
  spec = P(mesh.axis_names)
  fn = lambda p, x: model.apply({"params": p}, x, method="image_features")
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(), spec), out_specs=spec)(params, img_emb)


@functools.partial(jax.jit, static_argnames=("model", "mesh", "block", "pooling"))
def _score_tile(model, params, img, cap_emb, cap_mask, *, mesh, block, pooling="xla"):
  """(images of a group, split) x (a caption chunk, replicated) -> scores (Ni_group, C).

  Each device loops over caption blocks of `block` captions, so that only
  (local images x block) pairs are alive at a time.
  """
  def local(params, img, cap_emb, cap_mask):
    apply = functools.partial(model.apply, {"params": params})
    cap = apply(cap_emb, cap_mask, method="caption_features")
    cap = jax.tree.map(lambda x: x.reshape((-1, block) + x.shape[1:]), cap)
    out = jax.lax.map(lambda c: apply(img, c, False, pooling, method="pair_scores"), cap)
    return jnp.moveaxis(out, 0, 1).reshape(out.shape[1], -1)                   # (ni, C)

  spec = P(mesh.axis_names)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), spec, P(), P()), out_specs=spec,
                       check_vma=_checks_vma(pooling))(params, img, cap_emb, cap_mask)


def _checks_vma(pooling: str) -> bool:
  """Pallas's interpreter (jax 0.10) fails shard_map's varying-axes checks: off for it only."""
  return pooling != "interpret"


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _apply(model, params, *args, method):
  return model.apply({"params": params}, *args, method=method)


def _log_progress(done: int, total: int, elapsed: float):
  rate = done / max(elapsed, 1e-9)
  logging.info("scored %d / %d pairs (%.1f%%), %.0f pairs/s, ETA %.0f s", done, total,
               100.0 * done / total, rate, (total - done) / max(rate, 1e-9))


def score_matrix(model, params, img_emb, cap_emb, cap_mask, *, buckets=DEFAULT_BUCKETS,
                 max_tile_bytes: int | None = None, image_tile: int = 128,
                 caption_chunk: int = 2048, mesh: jax.sharding.Mesh | None = None,
                 progress: Callable[[int, int, float], None] | None = _log_progress,
                 progress_every_s: float = 30.0, pooling: str = "auto") -> np.ndarray:
  """The (Ni, Nc) score matrix, for evaluation.

  Captions are grouped by real length into `buckets` (at most one compilation of the tile
  function per width); images in groups of up to `image_tile` per device, split over every
  device of `mesh` (default: every device of every process, so each process scores its
  share of the pairs); each device scores its images against a chunk of captions in blocks
  whose working set stays within `max_tile_bytes` (default: 32 MiB on CPU, where
  cache-sized blocks run ~2x faster than 256 MiB ones, 2 GiB on accelerators). Results
  stay on the devices until one gather at the end. On several processes every process
  must call this with the same arguments (each holds the whole embeddings) and every
  process gets the whole matrix. `progress(done_pairs, total_pairs, seconds)` runs every
  `progress_every_s`. `pooling` (`pooling_for`): "auto" fuses the pooling in a Pallas kernel
  on TPU.

  Args:
    model, params: a model and its params pytree.
    img_emb: (Ni, R, d) numpy; cap_emb: (Nc, L, d) numpy; cap_mask: (Nc, L) bool.

  Returns:
    (Ni, Nc) float32 numpy scores.
  """
  if not model.PAIRWISE:
    vectors = (_apply(model, params, img_emb, method="image_vectors"),
               _apply(model, params, cap_emb, cap_mask, method="caption_vectors"))
    return np.asarray(vectors[0] @ vectors[1].T)
  img_emb, cap_emb = np.asarray(img_emb, np.float32), np.asarray(cap_emb, np.float32)
  cap_mask = np.asarray(cap_mask, bool)
  (n_img, regions, dim), (n_cap, width) = img_emb.shape, cap_mask.shape
  mesh = mesh or sharding.make_mesh()
  n_dev, replicated = mesh.size, sharding.replicated(mesh)
  params = sharding.put_global(params, replicated)
  max_tile_bytes = max_tile_bytes or default_tile_bytes(mesh.devices.flat[0].platform)
  pooling = pooling_for(mesh, pooling)

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
      chunks.append((c, *sharding.put_global((cap_emb[idx, :w], cap_mask[idx, :w]), replicated),
                     block))

  # Images: groups of n_dev x per_dev, the last one zero-padded, split over every device.
  group = n_dev * per_dev
  img_pad = batching.pad_rows(img_emb, groups * group)
  img_sharding = sharding.flat_sharding(mesh)
  here = sharding.host_rows(img_sharding, group)                  # this process's rows
  results, pending, done, mine = [], None, 0, 0
  start, last_report = time.perf_counter(), 0.0
  for g in range(groups):
    img = _image_group(model, params, sharding.put_global(img_pad[g * group:(g + 1) * group],
                                                          img_sharding), mesh=mesh)
    real = min(group, n_img - g * group)
    for cols, emb, mask, block in chunks:
      out = _score_tile(model, params, img, emb, mask, mesh=mesh, block=block, pooling=pooling)
      results.append((g, cols, out))
      mine += max(0, min(here[1], real) - here[0]) * len(cols)
      if pending is not None:                      # Keep one tile in flight, time the rest.
        pending[0].block_until_ready()
        done += pending[1]
      pending = (out, real * len(cols))
      now = time.perf_counter() - start
      if progress is not None and now - last_report >= progress_every_s:
        progress(done, n_img * n_cap, now)
        last_report = now

  tiles = _gather([r[2] for r in results])
  if progress is not None and last_report > 0.0:
    progress(n_img * n_cap, n_img * n_cap, time.perf_counter() - start)
  if jax.process_count() > 1:
    logging.info("process %d scored %d of %d pairs", jax.process_index(), mine, n_img * n_cap)
  scores = np.empty((n_img, n_cap), np.float32)
  for (g, cols, _), tile in zip(results, tiles):
    rows = min(group, n_img - g * group)
    scores[g * group:g * group + rows, cols] = tile[:rows, :len(cols)]
  return scores


def _gather(arrays: list) -> list[np.ndarray]:
  """Global arrays -> numpy on every process: one collective on several processes."""
  if jax.process_count() == 1:
    return jax.device_get(arrays)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(arrays, tiled=True)


def _aligned_pairs(model, params, img_feats, cap_feats):
  """Scores of (image p, caption p) for every p of per-pair features: (P,)."""
  def one(img, cap):
    img, cap = (jax.tree.map(lambda x: x[None], f) for f in (img, cap))
    return model.apply({"params": params}, img, cap, method="pair_scores")[0, 0]
  return jax.vmap(one)(img_feats, cap_feats)


@functools.partial(jax.jit, static_argnames="model")
def _pairs(model, params, img_feats, cap_feats, img_index, cap_index):
  pick = lambda feats, index: jax.tree.map(lambda x: x[index], feats)
  return _aligned_pairs(model, params, pick(img_feats, img_index), pick(cap_feats, cap_index))


def score_pairs(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index,
                tile: int = 512) -> np.ndarray:
  """Exact scores of the pairs (img_index[p], cap_index[p]): (P,).

  Reranking has no image x caption grid to share work across: the per-item features of
  the items involved are computed once, then only the per-pair part per pair, in tiles of
  power-of-two sizes (few compilations).
  """
  img_index, cap_index = np.asarray(img_index), np.asarray(cap_index)
  if not len(img_index):
    return np.empty(0, np.float32)
  images, img_local = np.unique(img_index, return_inverse=True)
  captions, cap_local = np.unique(cap_index, return_inverse=True)
  img_emb = np.asarray(img_emb[images], np.float32)
  cap_emb, cap_mask = np.asarray(cap_emb[captions], np.float32), np.asarray(cap_mask[captions])
  if not model.PAIRWISE:
    img_vec = _apply(model, params, img_emb, method="image_vectors")
    cap_vec = _apply(model, params, cap_emb, cap_mask, method="caption_vectors")
    return np.asarray(jnp.sum(img_vec[img_local] * cap_vec[cap_local], axis=-1))
  features = lambda method, *arrays: batching.map_batches(
      functools.partial(_apply, model, params, method=method), arrays,
      batching.batch_size_for(len(arrays[0]), tile))
  img_feats = jax.device_put(features("image_features", img_emb))
  cap_feats = jax.device_put(features("caption_features", cap_emb, cap_mask))
  fn = functools.partial(_pairs, model, params, img_feats, cap_feats)
  return batching.map_batches(fn, (img_local, cap_local),
                              batching.batch_size_for(len(img_local), tile))


def batch_scores(model, params, img_emb, cap_emb, cap_mask, mesh: jax.sharding.Mesh,
                 chunk: int = 0, with_gates: bool = False, pooling: str = "xla"):
  """The training batch's (B, B) score matrix by the fast path, one block per device.

  Device (i, c) of the ("images", "captions") mesh scores image block i against caption
  block c; the result is split the same way, so hardest negatives and the loss reduce over
  both axes. Differentiable (the params' gradients are summed over the devices).

  Args:
    model, params: a CAMP model and its params.
    img_emb, cap_emb, cap_mask: (B, R, d), (B, L, d), (B, L) global arrays.
    mesh: the training mesh.
    chunk: captions per rematerialised block on each device (`caption_chunked`); 0: all.
    with_gates: also return the full model's gates of every pair, {"region_gate":
      (B, B, R), "word_gate": (B, B, L)}, split like the scores.
    pooling: "xla"; "pallas" or "interpret" only where no gradient is taken.

  Returns:
    scores (B, B), or (scores, gates) with `with_gates`.
  """
  def local(params, img_emb, cap_emb, cap_mask):
    apply = functools.partial(model.apply, {"params": params})
    # Per-image features once, outside the (rematerialised) caption blocks.
    fn = lambda img, c, m: apply(img, apply(c, m, method="caption_features"), with_gates,
                                 pooling, method="pair_scores")
    return caption_chunked(fn, apply(img_emb, method="image_features"), cap_emb, cap_mask,
                           chunk)

  images, captions = sharding.AXES
  return jax.shard_map(local, mesh=mesh,
                       in_specs=(P(), P(images), P(captions), P(captions)),
                       out_specs=P(images, captions), check_vma=_checks_vma(pooling))(
                           params, img_emb, cap_emb, cap_mask)


def batch_pair_scores(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index,
                      mesh: jax.sharding.Mesh):
  """Scores of chosen pairs of the training batch by the fast path, differentiable: (P,).

  The pairs (img_index[p], cap_index[p]) are split over every device of the mesh (padded to
  a multiple of its size). On one device the per-item features of the batch are computed
  once and picked per pair. On several, each device computes the features of its own pairs
  from their embeddings: moving every item's features to every device (and their gradients
  back) would cost more HBM traffic than the d x d products it saves.

  Args:
    model, params: a CAMP model and its params.
    img_emb, cap_emb, cap_mask: (B, R, d), (B, L, d), (B, L) global arrays.
    img_index, cap_index: (P,) int rows of the pairs.
    mesh: the training mesh.
  """
  apply = functools.partial(model.apply, {"params": params})
  n = img_index.shape[0]
  split = lambda x: jax.lax.with_sharding_constraint(x, sharding.flat_sharding(mesh))
  img_index, cap_index = (split(jnp.pad(x, (0, -n % mesh.size))) for x in (img_index, cap_index))
  if mesh.size == 1:
    img = apply(img_emb, method="image_features")
    cap = apply(cap_emb, cap_mask, method="caption_features")
    return _pairs(model, params, img, cap, img_index, cap_index)[:n]
  img = apply(split(img_emb[img_index]), method="image_features")
  cap = apply(split(cap_emb[cap_index]), split(cap_mask[cap_index]), method="caption_features")
  return _aligned_pairs(model, params, img, cap)[:n]


def caption_chunked(score_fn, img, cap_emb, cap_mask, chunk: int):
  """score_fn over blocks of `chunk` captions, rematerialised: bounded memory under grad.

  For the training loss on a large batch: each block's activations are recomputed in the
  backward pass instead of stored, so memory grows with images x chunk, not images x
  captions.

  Args:
    score_fn: (img, cap_emb, cap_mask) -> (Ni, c, ...) scores, or a pytree of such arrays.
    img, cap_emb, cap_mask: the images ((Ni, R, d) or a pytree of per-image arrays, used
      by every block as it is), (Nc, L, d), (Nc, L).
    chunk: captions per block; 0 or >= Nc scores all at once. Must divide Nc.

  Returns:
    (Ni, Nc, ...), or the pytree of them.
  """
  n_cap = cap_emb.shape[0]
  if not chunk or chunk >= n_cap:
    return score_fn(img, cap_emb, cap_mask)
  if n_cap % chunk:
    raise ValueError(f"config.train_caption_chunk={chunk} does not divide the {n_cap} "
                     "captions that each device scores (the batch over the mesh's captions "
                     "axis); pick a divisor")
  blocks = (cap_emb.reshape((n_cap // chunk, chunk) + cap_emb.shape[1:]),
            cap_mask.reshape((n_cap // chunk, chunk) + cap_mask.shape[1:]))
  block_out = jax.lax.map(jax.checkpoint(lambda b: score_fn(img, *b)), blocks)
  return jax.tree.map(
      lambda x: jnp.moveaxis(x, 0, 1).reshape((x.shape[1], n_cap) + x.shape[3:]), block_out)


def reference_score_matrix(model, params, img_emb, cap_emb, cap_mask,
                           image_tile: int = 8, caption_tile: int = 64) -> np.ndarray:
  """(Ni, R, d), (Nc, L, d), (Nc, L) -> (Ni, Nc), tile by tile, pairs expanded as the original."""
  n_img, n_cap = len(img_emb), len(cap_emb)
  image_tile, caption_tile = min(image_tile, n_img), min(caption_tile, n_cap)
  rows = []
  for i in range(0, n_img, image_tile):
    imgs = batching.pad_rows(img_emb[i:i + image_tile], image_tile)
    tile = lambda c, m, imgs=imgs: _apply(model, params, imgs, c, m, method="score_matrix").T
    rows.append(batching.map_batches(tile, (cap_emb, cap_mask), caption_tile).T)
  return np.concatenate(rows)[:n_img]
