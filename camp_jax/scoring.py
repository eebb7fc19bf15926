r"""Scores of many images x many captions, for evaluation: the driver, its tile plan, pairs.

  score_matrix(model, params, img_emb, cap_emb, cap_mask) -> (Ni, Nc) numpy
      Captions in length buckets, memory-bounded tiles with static shapes, image groups
      split over every device of every process, progress logging. The embeddings may be
      numpy (every process holds them) or global arrays already on the devices.
  tile_plan(n_img, cap_widths, regions, dim, n_dev, max_tile_bytes) -> TilePlan
      The driver's image groups and caption chunks, without scoring (`camp_jax.aot` too).
  score_tile(model, params, img_features, cap_features, mesh=, block=, pooling=)
      One tile: a group of images (split over the devices) x a chunk of captions, both as
      features computed once (`image_features_split`, `caption_features_gathered`).
  score_pairs(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index) -> (P,)
      Given pairs only (reranking a shortlist); `aligned_pair_scores` and
      `picked_pair_scores` are its per-pair kernels, which the train step shares.
  reference_score_matrix(...) -> (Ni, Nc) numpy
      The model's own transcription, every pair expanded, tile by tile.
  pooling_for(mesh, choice) -> "xla" | "pallas" | "interpret"
      Where no gradient is taken: "auto" is the Pallas pooling kernel on TPU meshes.
  apply(model, params, *args, method=) -> a model method, jitted.

The driver does no maths of its own: CAMP's hoisted exact path is three model methods
(`image_features`, `caption_features`, `pair_scores`; see `camp_jax.models.camp_fast`).
Two-tower models (VSE, `PAIRWISE` False) score by one matrix product of their vectors.
The training objective's blocks are in `camp_jax.objective`.
"""
import dataclasses
import functools
import time
from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from camp_jax import batching, sharding

P = jax.sharding.PartitionSpec
DEFAULT_BUCKETS = (8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 50)
POOLING = ("auto", "xla", "pallas", "interpret")  # config.pooling_kernel


def pooling_for(mesh: jax.sharding.Mesh, choice: str = "auto") -> str:
  """`pair_scores`'s pooling where no gradient is taken: "auto" is the Pallas kernel on TPU."""
  if choice not in POOLING:
    raise ValueError(f"pooling={choice!r}: expected one of {POOLING}")
  if choice == "auto":
    return "pallas" if mesh.devices.flat[0].platform == "tpu" else "xla"
  return choice


def checks_vma(pooling: str) -> bool:
  """shard_map's check_vma: Pallas's interpreter (jax 0.10) fails its varying-axes checks."""
  return pooling != "interpret"


@functools.partial(jax.jit, static_argnames=("model", "method"))
def apply(model, params, *args, method: str):
  """model.apply({"params": params}, *args, method=method), jitted once per model and method."""
  return model.apply({"params": params}, *args, method=method)


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


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Captions scored together against an image group, all at one bucket width."""
  width: int
  columns: np.ndarray  # the captions (indices into the split)
  size: int            # captions per chunk, padded: blocks x block
  block: int           # captions per device-side block (`score_tile`'s loop)


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Images in `groups` groups of `image_group` (= devices x `images_per_device`, the last
  zero-padded); captions in `chunks`; each (group, chunk) pair is one `score_tile` call."""
  images_per_device: int
  image_group: int
  groups: int
  chunks: tuple[Chunk, ...]

  @property
  def tiles(self) -> int:
    return self.groups * len(self.chunks)


def tile_plan(n_img: int, cap_widths: np.ndarray, regions: int, dim: int, n_dev: int,
              max_tile_bytes: int, image_tile: int = 128, caption_chunk: int = 2048
              ) -> TilePlan:
  """`score_matrix`'s tiles: each device's working set stays within `max_tile_bytes`.

  Args:
    n_img: images to score; cap_widths: (Nc,) each caption's bucket width.
    regions, dim: R and d of the embeddings; n_dev: devices sharing each image group.
    max_tile_bytes: `default_tile_bytes` of the platform, or smaller.
    image_tile, caption_chunk: at most this many images per device, captions per chunk.
  """
  cap_widths = np.asarray(cap_widths)
  most_pairs = max(1, max_tile_bytes // pair_bytes(regions, int(cap_widths.max()), dim))
  groups, per_dev = _split(-(-n_img // n_dev), min(image_tile, most_pairs))
  chunks = []
  for w in np.unique(cap_widths):
    cols = np.flatnonzero(cap_widths == w)
    block = max(1, min(len(cols), max_tile_bytes // pair_bytes(regions, int(w), dim) // per_dev))
    parts, size = _split(len(cols), min(caption_chunk, len(cols)))
    blocks, block = _split(size, block)
    chunks += [Chunk(int(w), c, blocks * block, block) for c in np.array_split(cols, parts)]
  return TilePlan(per_dev, n_dev * per_dev, groups, tuple(chunks))


@functools.partial(jax.jit, static_argnames=("model", "mesh"))
def image_features_split(model, params, img_emb, *, mesh):
  """image_features of a group of images, split over every device (rows divide evenly)."""
  spec = P(mesh.axis_names)
  fn = lambda p, x: model.apply({"params": p}, x, method="image_features")
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(), spec), out_specs=spec)(params, img_emb)


@functools.partial(jax.jit, static_argnames=("model", "mesh"))
def caption_features_gathered(model, params, cap_emb, cap_mask, *, mesh):
  """caption_features of a chunk (replicated), each caption computed on one device and
  gathered to all: once per chunk, whatever the number of image groups and devices."""
  n, pad = cap_emb.shape[0], -cap_emb.shape[0] % mesh.size
  split = sharding.flat_sharding(mesh)
  emb, mask = jax.lax.with_sharding_constraint(
      (jnp.pad(cap_emb, ((0, pad), (0, 0), (0, 0))), jnp.pad(cap_mask, ((0, pad), (0, 0)))),
      split)
  out = jax.lax.with_sharding_constraint(
      model.apply({"params": params}, emb, mask, method="caption_features"), split)
  return jax.lax.with_sharding_constraint(jax.tree.map(lambda x: x[:n], out),
                                          sharding.replicated(mesh))


@functools.partial(jax.jit, static_argnames=("model", "mesh", "block", "pooling"))
def score_tile(model, params, img, cap, *, mesh, block, pooling="xla"):
  """(image features of a group, split) x (caption features of a chunk, replicated)
  -> (Ni_group, C).

  Each device loops over caption blocks of `block` captions, so that only
  (local images x block) pairs are alive at a time.
  """
  def local(params, img, cap):
    run = functools.partial(model.apply, {"params": params})
    cap = jax.tree.map(lambda x: x.reshape((-1, block) + x.shape[1:]), cap)
    out = jax.lax.map(lambda c: run(img, c, False, pooling, method="pair_scores"), cap)
    return jnp.moveaxis(out, 0, 1).reshape(out.shape[1], -1)                   # (ni, C)

  spec = P(mesh.axis_names)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), spec, P()), out_specs=spec,
                       check_vma=checks_vma(pooling))(params, img, cap)


@functools.partial(jax.jit, static_argnames=("width", "out"))
def _take(arrays, index, *, width, out):
  return jax.lax.with_sharding_constraint(tuple(a[index][:, :width] for a in arrays), out)


def _rows(arrays: tuple, index: np.ndarray, out: jax.sharding.NamedSharding,
          width: int | None = None) -> tuple:
  """Rows `index` (first `width` columns) of `arrays` as global arrays placed as `out`:
  gathered on the host from numpy, on the devices from global arrays."""
  if isinstance(arrays[0], jax.Array):
    index = sharding.put_global(np.asarray(index, np.int32), sharding.replicated(out.mesh))
    return _take(arrays, index, width=width, out=out)
  return sharding.put_global(tuple(np.asarray(a[index, :width]) for a in arrays), out)


def _lengths(cap_mask, mesh) -> np.ndarray:
  """Real words per caption, as numpy on every process."""
  if not isinstance(cap_mask, jax.Array):
    return np.asarray(cap_mask).sum(1)
  out = sharding.replicated(mesh)
  return np.asarray(sharding.host_local(jax.jit(lambda m: m.sum(1), out_shardings=out)(cap_mask)))


def _log_progress(done: int, total: int, elapsed: float):
  rate = done / max(elapsed, 1e-9)
  logging.info("scored %d / %d pairs (%.1f%%), %.0f pairs/s, ETA %.0f s", done, total,
               100.0 * done / total, rate, (total - done) / max(rate, 1e-9))


def score_matrix(model, params, img_emb, cap_emb, cap_mask, *, buckets=DEFAULT_BUCKETS,
                 max_tile_bytes: int | None = None, image_tile: int = 128,
                 caption_chunk: int = 2048, mesh: jax.sharding.Mesh | None = None,
                 progress: Callable[[int, int, float], None] | None = _log_progress,
                 progress_every_s: float = 30.0, pooling: str = "auto",
                 num_images: int | None = None, num_captions: int | None = None) -> np.ndarray:
  """The (Ni, Nc) score matrix, for evaluation.

  Captions are grouped by real length into `buckets` (at most one compilation of the tile
  function per width); images in groups of up to `image_tile` per device, split over every
  device of `mesh` (default: every device of every process, so each process scores its
  share of the pairs); each device scores its images against a chunk of captions in blocks
  whose working set stays within `max_tile_bytes` (default: 32 MiB on CPU, where
  cache-sized blocks run ~2x faster than 256 MiB ones, 2 GiB on accelerators); see
  `tile_plan`. Results stay on the devices until one gather at the end. On several
  processes every process must call this with the same arguments and every process gets
  the whole matrix. `progress(done_pairs, total_pairs, seconds)` runs every
  `progress_every_s`. `pooling` (`pooling_for`): "auto" fuses the pooling in a Pallas
  kernel on TPU.

  Args:
    model, params: a model and its params pytree.
    img_emb: (Ni, R, d); cap_emb: (Nc, L, d); cap_mask: (Nc, L) bool: numpy that every
      process holds, or global arrays on the mesh's devices (rows split over them, as
      `camp_jax.evaluate` encodes a split), whose first `num_images` / `num_captions`
      rows are real (the rest pads the rows to a multiple of the devices; default: all).

  Returns:
    (Ni, Nc) float32 numpy scores.
  """
  n_img, n_cap = num_images or len(img_emb), num_captions or len(cap_emb)
  mesh = mesh or sharding.make_mesh()
  if not model.PAIRWISE:
    return _two_tower_scores(model, params, img_emb, cap_emb, cap_mask, mesh)[:n_img, :n_cap]
  replicated = sharding.replicated(mesh)
  params = sharding.put_global(params, replicated)
  if not isinstance(img_emb, jax.Array):
    img_emb, cap_emb = np.asarray(img_emb, np.float32), np.asarray(cap_emb, np.float32)
    cap_mask = np.asarray(cap_mask, bool)
  (_, regions, dim), width = img_emb.shape, cap_mask.shape[1]
  max_tile_bytes = max_tile_bytes or default_tile_bytes(mesh.devices.flat[0].platform)
  pooling = pooling_for(mesh, pooling)
  cap_widths = bucket_widths_for(_lengths(cap_mask, mesh)[:n_cap], width, buckets)
  plan = tile_plan(n_img, cap_widths, regions, dim, mesh.size, max_tile_bytes, image_tile,
                   caption_chunk)
  chunks = []                                              # (columns, emb, mask, block)
  for c in plan.chunks:
    idx = np.concatenate([c.columns, np.full(c.size - len(c.columns), c.columns[0])])  # pad
    chunks.append((c.columns, *_rows((cap_emb, cap_mask), idx, replicated, c.width), c.block))

  group, img_sharding = plan.image_group, sharding.flat_sharding(mesh)
  here = sharding.host_rows(img_sharding, group)                  # this process's rows
  results, pending, done, mine = [], None, 0, 0
  start, last_report = time.perf_counter(), 0.0
  # Every item's features once: the images' kept on the devices (split over them), each
  # chunk's captions' computed once and scored against every image group.
  groups = []
  for g in range(plan.groups):
    real = min(group, n_img - g * group)
    idx = g * group + np.minimum(np.arange(group), real - 1)      # pad: repeat the last
    groups.append((g, real, image_features_split(
        model, params, *_rows((img_emb,), idx, img_sharding), mesh=mesh)))
  for cols, emb, mask, block in chunks:
    cap = caption_features_gathered(model, params, emb, mask, mesh=mesh)
    for g, real, img in groups:
      out = score_tile(model, params, img, cap, mesh=mesh, block=block, pooling=pooling)
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


def _two_tower_scores(model, params, img_emb, cap_emb, cap_mask, mesh) -> np.ndarray:
  """One product of the image and caption vectors: on the host's default device for numpy,
  on the mesh (gathered once) for global arrays."""
  if isinstance(img_emb, jax.Array):
    replicated = sharding.replicated(mesh)
    params = sharding.put_global(params, replicated)
    product = jax.jit(lambda a, b: a @ b.T, out_shardings=replicated)
  else:
    product = lambda a, b: a @ b.T
  scores = product(apply(model, params, img_emb, method="image_vectors"),
                   apply(model, params, cap_emb, cap_mask, method="caption_vectors"))
  return np.asarray(sharding.host_local(scores))


def _gather(arrays: list) -> list[np.ndarray]:
  """Global arrays -> numpy on every process: one collective on several processes."""
  if jax.process_count() == 1:
    return jax.device_get(arrays)
  return multihost_utils.process_allgather(arrays, tiled=True)


def aligned_pair_scores(model, params, img_feats, cap_feats):
  """Scores of (image p, caption p) for every p of per-pair features: (P,)."""
  def one(img, cap):
    img, cap = (jax.tree.map(lambda x: x[None], f) for f in (img, cap))
    return model.apply({"params": params}, img, cap, method="pair_scores")[0, 0]
  return jax.vmap(one)(img_feats, cap_feats)


@functools.partial(jax.jit, static_argnames="model")
def picked_pair_scores(model, params, img_feats, cap_feats, img_index, cap_index):
  """Scores of the pairs (img_index[p], cap_index[p]) of per-item features: (P,)."""
  pick = lambda feats, index: jax.tree.map(lambda x: x[index], feats)
  return aligned_pair_scores(model, params, pick(img_feats, img_index),
                             pick(cap_feats, cap_index))


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
    img_vec = apply(model, params, img_emb, method="image_vectors")
    cap_vec = apply(model, params, cap_emb, cap_mask, method="caption_vectors")
    return np.asarray(jnp.sum(img_vec[img_local] * cap_vec[cap_local], axis=-1))
  features = lambda method, *arrays: batching.map_batches(
      functools.partial(apply, model, params, method=method), arrays,
      batching.batch_size_for(len(arrays[0]), tile))
  img_feats = jax.device_put(features("image_features", img_emb))
  cap_feats = jax.device_put(features("caption_features", cap_emb, cap_mask))
  fn = functools.partial(picked_pair_scores, model, params, img_feats, cap_feats)
  return batching.map_batches(fn, (img_local, cap_local),
                              batching.batch_size_for(len(img_local), tile))


def reference_score_matrix(model, params, img_emb, cap_emb, cap_mask,
                           image_tile: int = 8, caption_tile: int = 64) -> np.ndarray:
  """(Ni, R, d), (Nc, L, d), (Nc, L) -> (Ni, Nc), tile by tile, pairs expanded as the original."""
  n_img, n_cap = len(img_emb), len(cap_emb)
  image_tile, caption_tile = min(image_tile, n_img), min(caption_tile, n_cap)
  rows = []
  for i in range(0, n_img, image_tile):
    imgs = batching.pad_rows(img_emb[i:i + image_tile], image_tile)
    tile = lambda c, m, imgs=imgs: apply(model, params, imgs, c, m, method="score_matrix").T
    rows.append(batching.map_batches(tile, (cap_emb, cap_mask), caption_tile).T)
  return np.concatenate(rows)[:n_img]
