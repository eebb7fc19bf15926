"""Input pipeline: per-host numpy batches for training and evaluation.

Training batch k of epoch e is a pure function of (seed, e, k): the epoch's
image permutation and caption choice come from `np.random.default_rng((seed,
e))`, global batch k holds images perm[k*B:(k+1)*B] (each image at most once),
and host h takes rows [h*b, (h+1)*b) with b = B / process_count. So the
batches of all hosts together equal the single-host batch, and the state
(epoch, step) resumes exactly. Captions are padded to the smallest length
bucket that fits the longest caption of the global batch, which every host
computes alike, so shapes agree across hosts. tf.data runs the batch function
in parallel and prefetches; without tensorflow a thread does the prefetching.
TensorFlow is imported only when a training iterator is built.

`close()` stops a training iterator's stream (an atexit hook closes those still open), so
no tf.data iterator is torn down mid-call while the interpreter shuts down.
"""
import atexit
import logging
import os
import queue
import threading
import time
import weakref
from typing import Iterator

import numpy as np

from camp_jax.data import precomp
from camp_jax.data import tokenizer

LENGTH_BUCKETS = (16, 32, 49)


def load_split(source: str | os.PathLike, split: str, **kwargs) -> precomp.PrecompSplit:
  """A precomp folder, or TFDS records as "tfds:NAME[/CONFIG][@DATA_DIR]"."""
  source = os.fspath(source)
  if source.startswith("tfds:"):
    from camp_jax.data.tfds_builders import reader  # pylint: disable=g-import-not-at-top
    return reader.read_tfds_split(source[len("tfds:"):], split)
  return precomp.read_split(source, split, **kwargs)


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  return process_index, process_count


def _bucket(length: int, buckets) -> int:
  return next(b for b in buckets if b >= length)


class _CallGuard:
  """Wraps a stream's batch function: counts calls in flight; after stop() calls return
  `stopped_value` (empty arrays nobody reads) at once.

  `stop()` returns once no call has run for `quiet_s`: the consumer no longer pulls, so the
  bounded buffers fill, the producers wait, and the stream can be deleted without a call
  in flight (deleting a tf.data iterator mid-call can deadlock on the GIL).
  """

  def __init__(self, fn, stopped_value):
    self._fn, self._stopped_value, self._lock = fn, stopped_value, threading.Lock()
    self._active, self._last, self._stopped = 0, time.monotonic(), False

  def __call__(self, g):
    with self._lock:
      self._last = time.monotonic()
      if self._stopped:
        return self._stopped_value
      self._active += 1
    try:
      return self._fn(g)
    finally:
      with self._lock:
        self._active -= 1
        self._last = time.monotonic()

  @property
  def stopped(self) -> bool:
    return self._stopped

  def stop(self, quiet_s: float = 0.2, timeout_s: float = 60.0) -> bool:
    with self._lock:
      self._stopped = True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      with self._lock:
        if not self._active and time.monotonic() - self._last >= quiet_s:
          return True
      time.sleep(quiet_s / 4)
    logging.warning("input stream still busy %.0f s after close(); deleting it anyway",
                    timeout_s)
    return False


_OPEN_ITERATORS = weakref.WeakSet()


@atexit.register
def _close_open_iterators():
  for it in list(_OPEN_ITERATORS):
    it.close()


def _read_rows(images, indices: np.ndarray) -> np.ndarray:
  """images[indices] read in file order (memmap-friendly), returned in `indices` order."""
  order = np.argsort(indices, kind="stable")
  out = np.empty((len(indices),) + tuple(images.shape[1:]), np.float32)
  out[order] = images[indices[order]]
  return out


class TrainIterator:
  """Yields {"images" (b, R, D) f32, "tokens" (b, T) i32, "lengths" (b,) i32}.

  With drop_remainder=False the last batch of an epoch is padded with masked
  rows and every batch gets "mask" (b,) bool.
  """

  def __init__(self, split: precomp.PrecompSplit, vocab, *, global_batch_size: int, seed: int,
               length_buckets=LENGTH_BUCKETS, process_index=None, process_count=None,
               drop_remainder: bool = True, state: dict | None = None, prefetch: int = 2,
               backend: str = "auto"):
    self._split = split
    self._seed = int(seed)
    self._buckets = tuple(sorted(length_buckets))
    if self._buckets[0] < 3:
      raise ValueError(f"length buckets must be >= 3 (<start> word <end>), got {length_buckets}")
    self._host, self._hosts = _process(process_index, process_count)
    if global_batch_size % self._hosts:
      raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                       f"process_count {self._hosts}")
    self._global = global_batch_size
    self._local = global_batch_size // self._hosts
    self._drop = drop_remainder
    n = split.num_images
    self.steps_per_epoch = n // global_batch_size if drop_remainder else -(-n // global_batch_size)
    if self.steps_per_epoch == 0:
      raise ValueError(f"{split.path}/{split.name}: {n} images give no full batch of "
                       f"{global_batch_size}")
    self._tokens, self._lengths = tokenizer.encode_all(split.captions, vocab,
                                                       max_words=self._buckets[-1] - 2)
    self._step = self._restore(state) if state else 0  # Global step: epoch * spe + step.
    self._prefetch = prefetch
    self._backend = backend
    self.backend = None  # "tf" or "thread" once the first batch is requested.
    self._stream = self._guard = None
    self._orders, self._lock = {}, threading.Lock()

  def _identity(self) -> dict:
    return {"seed": self._seed, "global_batch_size": self._global,
            "num_images": self._split.num_images, "drop_remainder": self._drop}

  def get_state(self) -> dict:
    """JSON-able position after the last batch returned."""
    epoch, step = divmod(self._step, self.steps_per_epoch)
    return dict(self._identity(), epoch=epoch, step=step)

  def _restore(self, state: dict) -> int:
    for key, value in self._identity().items():
      if key in state and state[key] != value:
        raise ValueError(f"pipeline state has {key}={state.get(key)!r} but this pipeline "
                         f"has {value!r}; resuming would change the example order")
    if not 0 <= state["step"] < self.steps_per_epoch or state["epoch"] < 0:
      raise ValueError(f"pipeline state {state} outside {self.steps_per_epoch} steps per epoch")
    return state["epoch"] * self.steps_per_epoch + state["step"]

  def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Image permutation (N,) and the caption drawn for each, from (seed, epoch)."""
    with self._lock:  # Batches are made in parallel threads.
      if epoch not in self._orders:
        rng = np.random.default_rng((self._seed, epoch))
        n, k = self._split.num_images, self._split.captions_per_image
        perm = rng.permutation(n)
        self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
        self._orders[epoch] = perm, perm * k + rng.integers(k, size=n)
      return self._orders[epoch]

  def batch(self, global_step: int) -> dict[str, np.ndarray]:
    """This host's part of global batch `global_step` (epoch * steps_per_epoch + step)."""
    epoch, step = divmod(int(global_step), self.steps_per_epoch)
    perm, caps = self._epoch_order(epoch)
    rows = slice(step * self._global, (step + 1) * self._global)
    images, captions = perm[rows], caps[rows]
    valid = np.ones(self._global, bool)
    if len(images) < self._global:  # Only when drop_remainder=False.
      valid[len(images):] = False
      pad = self._global - len(images)
      images, captions = np.pad(images, (0, pad)), np.pad(captions, (0, pad))
    length = _bucket(int(self._lengths[captions[valid]].max()), self._buckets)
    local = slice(self._host * self._local, (self._host + 1) * self._local)
    images, captions, valid = images[local], captions[local], valid[local]
    out = {"images": _read_rows(self._split.images, images),
           "tokens": self._tokens[captions, :length],
           "lengths": self._lengths[captions]}
    if not self._drop:
      out["images"][~valid] = 0
      out["tokens"][~valid] = 0
      out["tokens"][~valid, :2] = (tokenizer.START, tokenizer.END)
      out["lengths"][~valid] = 2
      out["mask"] = valid
    return out

  def _make_stream(self) -> Iterator[tuple]:
    keys = ("images", "tokens", "lengths") + (() if self._drop else ("mask",))
    empty = (np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.int32),
             np.zeros((0,), np.int32), np.zeros((0,), bool))[:len(keys)]
    fn = self._guard = _CallGuard(lambda g: tuple(self.batch(g)[k] for k in keys), empty)
    backend = self._backend
    if backend == "auto":
      try:
        import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
        backend = "tf"
      except ImportError:
        backend = "thread"
    self.backend = backend
    if backend == "tf":
      stream = _tf_stream(fn, self._step, self._prefetch, len(keys))
    else:
      stream = _thread_stream(fn, self._step, self._prefetch, lambda: fn.stopped)
    return (dict(zip(keys, b)) for b in stream)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._stream is None:
      self._stream = self._make_stream()
      _OPEN_ITERATORS.add(self)
    batch = next(self._stream)
    self._step += 1
    return batch

  def close(self):
    """Stops prefetching and frees the stream; a later `next` restarts it at this step."""
    stream, guard, self._stream, self._guard = self._stream, self._guard, None, None
    _OPEN_ITERATORS.discard(self)
    if stream is not None:
      guard.stop()
      stream.close()  # Drops the tf.data iterator (or ends the thread's queue reader).

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def hide_gpus_from_tensorflow() -> None:
  """Keeps tensorflow (tf.data, summary writers) off the GPUs, whose memory is JAX's.

  Call before anything initialises tensorflow; a no-op without tensorflow.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF was initialised before; its device choice stands.
    logging.warning("could not hide GPUs from tensorflow: %s", e)


def _tf_stream(fn, start: int, prefetch: int, num_outputs: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  hide_gpus_from_tensorflow()
  dtypes = [tf.float32, tf.int32, tf.int32, tf.bool][:num_outputs]
  ds = tf.data.Dataset.counter(start).map(
      lambda g: tf.numpy_function(lambda x: fn(int(x)), [g], dtypes),
      num_parallel_calls=2, deterministic=True)
  # Nothing to autotune (parallelism and prefetch are fixed), and the autotuning thread makes
  # deleting the iterator wait for its next wake-up: exits took 16-75 s longer with it.
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.prefetch(prefetch).with_options(options).as_numpy_iterator()


def _thread_stream(fn, start: int, prefetch: int, stopped=lambda: False):
  q = queue.Queue(maxsize=max(1, prefetch))

  def work():
    g = start
    while not stopped():
      try:
        q.put(("ok", fn(g)))
      except Exception as e:  # pylint: disable=broad-except
        q.put(("error", e))  # Re-raised in the consumer.
        return
      g += 1

  threading.Thread(target=work, daemon=True).start()
  try:
    while True:
      kind, value = q.get()
      if kind == "error":
        raise value
      yield value
  finally:  # On close: free the queue so a worker blocked in put() sees the stop and ends.
    while not q.empty():
      q.get_nowait()


def train_batches(split: precomp.PrecompSplit, vocab, *, global_batch_size: int, seed: int,
                  length_buckets=LENGTH_BUCKETS, process_index=None, process_count=None,
                  drop_remainder: bool = True, state: dict | None = None,
                  **kwargs) -> TrainIterator:
  """Endless training iterator; see `TrainIterator`."""
  return TrainIterator(split, vocab, global_batch_size=global_batch_size, seed=seed,
                       length_buckets=length_buckets, process_index=process_index,
                       process_count=process_count, drop_remainder=drop_remainder,
                       state=state, **kwargs)


def eval_arrays(split: precomp.PrecompSplit, vocab, max_len: int = LENGTH_BUCKETS[-1],
                length_buckets=LENGTH_BUCKETS) -> dict[str, np.ndarray]:
  """All images once and all captions in order, for tiled all-pairs scoring.

  Returns images (N, R, D) (the memmap, unread), tokens int32 (C, T), lengths
  int32 (C,), caption_image int32 (C,) (index of each caption's image), where T
  is the smallest bucket <= max_len fitting the longest caption.
  """
  buckets = tuple(b for b in sorted(length_buckets) if b < max_len) + (max_len,)
  tokens, lengths = tokenizer.encode_all(split.captions, vocab, max_words=max_len - 2)
  t = _bucket(int(lengths.max()), buckets)
  caption_image = np.arange(split.num_captions, dtype=np.int32) // split.captions_per_image
  return {"images": split.images, "tokens": tokens[:, :t], "lengths": lengths,
          "caption_image": caption_image}


def eval_batches(arrays: dict[str, np.ndarray], side: str, *, batch_size: int,
                 process_index=None, process_count=None) -> Iterator[dict[str, np.ndarray]]:
  """This host's rows of fixed-size global batches over one side of `eval_arrays`.

  side="images" yields {"images", "mask"}; side="captions" {"tokens", "lengths",
  "mask"}. The last batch is padded; "mask" (b,) marks real rows. Every host
  yields ceil(n / batch_size) batches.
  """
  keys = {"images": ("images",), "captions": ("tokens", "lengths")}[side]
  host, hosts = _process(process_index, process_count)
  if batch_size % hosts:
    raise ValueError(f"batch_size {batch_size} is not divisible by process_count {hosts}")
  local = batch_size // hosts
  n = len(arrays[keys[0]])
  for start in range(0, n, batch_size):
    lo = min(n, start + host * local)
    hi = min(n, lo + local)
    batch = {}
    for k in keys:
      rows = np.asarray(arrays[k][lo:hi])
      batch[k] = np.concatenate([rows, np.zeros((local - len(rows),) + rows.shape[1:],
                                                rows.dtype)])
    if side == "captions":
      batch["lengths"][hi - lo:] = 2  # Padding rows: an empty caption, <start> <end>.
      batch["tokens"][hi - lo:, :2] = (tokenizer.START, tokenizer.END)
    batch["mask"] = np.arange(local) < hi - lo
    yield batch
