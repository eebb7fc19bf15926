"""The training feed as a tf.data graph: global step -> this process's rows, native ops only.

Batch g of a run (epoch e, step s = divmod(g, steps_per_epoch)) is made by one traced
function of g, with no Python per row or per batch:
  * position p = s * B + j of the epoch (j < B, the global batch) holds image
    `index_shuffle(p, seed=(seed, e), max_index=N - 1)`: a stateless permutation of the
    N images per epoch, so every image comes once per epoch (with drop_remainder, the last
    N mod B of the permutation are skipped, as before);
  * its caption is image * k + c, c uniform in [0, k) from `stateless_uniform` keyed by
    (seed, g): one caption per image per epoch, drawn afresh each epoch;
  * positions p >= N (only without drop_remainder) are padding rows, masked;
  * the caption width is the smallest length bucket that holds the longest caption of the
    whole global batch (every process computes it alike), then rows [start, stop) of the
    global batch are this process's: only their features are gathered.
`tf.data` maps steps start, start + 1, ... in parallel (AUTOTUNE), in order, and prefetches,
so the position is the step number: nothing else to checkpoint.
"""
import numpy as np
import tensorflow as tf

from camp_jax.data import tokenizer

_ALIGN = 64  # Bytes; tensorflow's CPU kernels check it (EIGEN_MAX_ALIGN_BYTES).


def features_tensor(images) -> tf.Tensor:
  """Region features (N, R, D) float32 as a CPU tensor for `tf.gather`.

  A C-contiguous memmap (a precomp `*_ims.npy` or a slice of one) is mapped again
  copy-on-write and handed to tensorflow through DLPack without a copy: batches are gathered
  straight from the page cache and the file is never written. Anything else (the strided
  view of a one-row-per-caption file, TFDS records) is read into memory once: N*R*D*4 bytes.
  """
  mapped = _copy_on_write_map(images)
  if mapped is None or mapped.ctypes.data % _ALIGN:
    mapped = _aligned_empty(images.shape)
    chunk = max(1, (256 << 20) // max(1, mapped[0].nbytes))
    for start in range(0, len(mapped), chunk):
      mapped[start:start + chunk] = images[start:start + chunk]
  return tf.experimental.dlpack.from_dlpack(mapped.__dlpack__())


def _copy_on_write_map(images) -> np.ndarray | None:
  """The bytes of memmap (view) `images` mapped again, writeable in this process only."""
  if not (isinstance(images, np.memmap) and images.flags.c_contiguous and images.filename
          and images.dtype == np.float32):
    return None
  root = images
  while isinstance(root.base, np.memmap):
    root = root.base
  offset = root.offset + images.ctypes.data - root.ctypes.data  # File offset of images[0].
  return np.memmap(images.filename, np.float32, mode="c", offset=offset, shape=images.shape)


def _aligned_empty(shape) -> np.ndarray:
  """An uninitialised float32 array at an address tensorflow's kernels accept."""
  raw = np.empty(int(np.prod(shape)) * 4 + _ALIGN, np.uint8)
  skip = -raw.ctypes.data % _ALIGN
  return raw[skip:skip + int(np.prod(shape)) * 4].view(np.float32).reshape(shape)


def train_dataset(features: tf.Tensor, tokens: np.ndarray, lengths: np.ndarray, *,
                  seed: int, global_batch_size: int, steps_per_epoch: int,
                  captions_per_image: int, rows: tuple[int, int], buckets: tuple[int, ...],
                  drop_remainder: bool, start_step: int) -> tf.data.Dataset:
  """Batches start_step, start_step + 1, ... of this process's `rows` (see the module doc):
  {"images" (b, R, D) f32, "tokens" (b, W) i32, "lengths" (b,) i32[, "mask" (b,) bool]}.

  Args:
    features: (N, R, D) float32, from `features_tensor`.
    tokens, lengths: every caption's ids (N * k, T) int32, padded, and lengths (N * k,).
    rows: [start, stop) of the global batch that this process reads.
    buckets: ascending caption widths; the last must hold the longest caption.
  """
  n, k, big_b = int(features.shape[0]), int(captions_per_image), int(global_batch_size)
  start, stop = rows
  tokens, lengths = tf.constant(tokens), tf.constant(lengths)
  buckets = tf.constant(buckets, tf.int32)
  pad_row = tf.constant([tokenizer.START, tokenizer.END] + [0] * (int(tokens.shape[1]) - 2),
                        tf.int32)

  def batch(g):
    epoch, step = g // steps_per_epoch, g % steps_per_epoch
    position = step * big_b + tf.range(big_b, dtype=tf.int64)
    valid = position < n
    image = tf.random.experimental.index_shuffle(
        tf.minimum(position, n - 1), tf.stack([tf.constant(seed, tf.int64), epoch]), n - 1)
    draw = tf.random.stateless_uniform([big_b], tf.stack([tf.constant(seed, tf.int64), g]),
                                       minval=0, maxval=k, dtype=tf.int64)
    caption = image * k + draw
    length = tf.gather(lengths, caption)
    longest = tf.reduce_max(tf.where(valid, length, 0))
    width = tf.gather(buckets, tf.searchsorted(buckets, longest[None]))[0]
    image, caption, valid = image[start:stop], caption[start:stop], valid[start:stop]
    out = {"images": tf.gather(features, image),
           "tokens": tf.gather(tokens, caption)[:, :width],
           "lengths": length[start:stop]}
    if not drop_remainder:
      out["images"] = tf.where(valid[:, None, None], out["images"], 0.0)
      out["tokens"] = tf.where(valid[:, None], out["tokens"], pad_row[None, :width])
      out["lengths"] = tf.where(valid, out["lengths"], 2)
      out["mask"] = valid
    return out

  options = tf.data.Options()
  # The default rewrites serialise the graph, copying the captured features (gigabytes).
  options.experimental_optimization.apply_default_optimizations = False
  return (tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
          .map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .prefetch(tf.data.AUTOTUNE).with_options(options))

