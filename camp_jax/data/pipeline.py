"""Training batches: which rows make batch k, and a stream that makes them ahead of time.

Training batch k of epoch e is a pure function of (seed, e, k): the epoch's image
permutation and caption choice come from `np.random.default_rng((seed, e))`, and global
batch k holds images perm[k*B:(k+1)*B] (each image at most once) with one of their captions
each. A host reads only its rows [start, stop) of each global batch (`host_rows`, from the
batch sharding), so the hosts' parts together equal the single-host batch, and the state
(epoch, step) resumes exactly. Captions are padded to the smallest length bucket that fits
the longest caption of the global batch, which every host computes alike, so shapes agree
across hosts.

Batches are made ahead by worker threads (`streams.ThreadStream`, the default) or tf.data
(`backend="tf"`), from memory-mapped rows copied straight into reused batch arrays.
"""
import os
import threading

import numpy as np

from camp_jax.data import precomp
from camp_jax.data import streams
from camp_jax.data import tokenizer

LENGTH_BUCKETS = (16, 32, 49)
BACKENDS = ("thread", "tf")


def _bucket(length: int, buckets) -> int:
  return next(b for b in buckets if b >= length)


def read_rows(images, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """images[indices] (float32), read in file order, returned in `indices` order.

  A numpy array or memmap is copied row by row into `out` (one copy; numpy releases the GIL
  for each); other row sources (TFDS records) are indexed with the whole array.
  """
  if out is None:
    out = np.empty((len(indices),) + tuple(images.shape[1:]), np.float32)
  if isinstance(images, np.ndarray):
    rows = images.view(np.ndarray)  # Plain views: no np.memmap bookkeeping per row.
    for position in np.argsort(indices, kind="stable"):
      out[position] = rows[indices[position]]
  else:
    order = np.argsort(indices, kind="stable")
    out[order] = images[indices[order]]
  return out


class TrainIterator:
  """Yields this host's rows of each global batch: {"images" (b, R, D) f32, "tokens" (b, T)
  i32, "lengths" (b,) i32}, b = stop - start of `host_rows`.

  With drop_remainder=False the last batch of an epoch is padded with masked rows and every
  batch gets "mask" (b,) bool.
  """

  def __init__(self, split: precomp.PrecompSplit, vocab, *, global_batch_size: int, seed: int,
               state: dict | None = None, host_rows: tuple[int, int] | None = None,
               length_buckets=LENGTH_BUCKETS, drop_remainder: bool = True, prefetch: int = 2,
               backend: str = "thread", workers: int | None = None):
    self._split, self._seed, self._global = split, int(seed), int(global_batch_size)
    self._buckets = tuple(sorted(length_buckets))
    if self._buckets[0] < 3:
      raise ValueError(f"length buckets must be >= 3 (<start> word <end>), got {length_buckets}")
    start, stop = (0, self._global) if host_rows is None else map(int, host_rows)
    if not 0 <= start < stop <= self._global:
      raise ValueError(f"host_rows {host_rows} outside the global batch [0, {self._global})")
    self._rows = slice(start, stop)
    self._drop = drop_remainder
    n = split.num_images
    self.steps_per_epoch = n // self._global if drop_remainder else -(-n // self._global)
    if self.steps_per_epoch == 0:
      raise ValueError(f"{split.path}/{split.name}: {n} images give no full batch of "
                       f"{self._global}")
    if backend not in BACKENDS:
      raise ValueError(f"backend {backend!r}, expected one of {BACKENDS}")
    self.backend, self._prefetch = backend, prefetch
    self.workers = workers or min(4, os.cpu_count() or 1)
    self._tokens, self._lengths = tokenizer.encode_all(split.captions, vocab,
                                                       max_words=self._buckets[-1] - 2)
    self._step = self._restore(state) if state else 0  # Global step: epoch * spe + step.
    self._orders, self._lock = {}, threading.Lock()
    self._pool = streams.BufferPool((stop - start,) + split.images.shape[1:], np.float32,
                                    size=self._prefetch + self.workers + 2)
    self._stream = None

  # Which rows make batch k.

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

  def batch_rows(self, global_step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(image ids, caption ids, valid) of this host's rows of batch `global_step`
    (epoch * steps_per_epoch + step), and the caption width of the whole global batch."""
    epoch, step = divmod(int(global_step), self.steps_per_epoch)
    perm, caps = self._epoch_order(epoch)
    images = perm[step * self._global:(step + 1) * self._global]
    captions = caps[step * self._global:(step + 1) * self._global]
    valid = np.arange(self._global) < len(images)
    pad = self._global - len(images)  # Only when drop_remainder=False.
    images, captions = np.pad(images, (0, pad)), np.pad(captions, (0, pad))
    width = _bucket(int(self._lengths[captions[valid]].max()), self._buckets)
    return images[self._rows], captions[self._rows], valid[self._rows], width

  @property
  def max_width(self) -> int:
    """The widest caption width (length bucket) of any batch: the longest caption's."""
    return _bucket(int(self._lengths.max()), self._buckets)

  def batch(self, global_step: int, images_out: np.ndarray | None = None
            ) -> dict[str, np.ndarray]:
    """This host's part of global batch `global_step`, images read into `images_out`."""
    images, captions, valid, width = self.batch_rows(global_step)
    out = {"images": read_rows(self._split.images, images, images_out),
           "tokens": self._tokens[captions, :width],
           "lengths": self._lengths[captions]}
    if not self._drop:
      out["images"][~valid] = 0
      out["tokens"][~valid] = 0
      out["tokens"][~valid, :2] = (tokenizer.START, tokenizer.END)
      out["lengths"][~valid] = 2
      out["mask"] = valid
    return out

  # The stream.

  def _keys(self) -> tuple[str, ...]:
    return ("images", "tokens", "lengths") + (() if self._drop else ("mask",))

  def _make_stream(self):
    if self.backend == "thread":
      return streams.ThreadStream(lambda g: self.batch(g, self._pool.get()), self._step,
                                  prefetch=self._prefetch, workers=self.workers)
    keys = self._keys()
    dtypes = (np.float32, np.int32, np.int32, np.bool_)[:len(keys)]
    empty = (np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.int32),
             np.zeros((0,), np.int32), np.zeros((0,), bool))[:len(keys)]
    return streams.TFStream(lambda g: tuple(self.batch(g)[k] for k in keys), self._step,
                            prefetch=self._prefetch, workers=self.workers,
                            dtypes=dtypes, stopped_value=empty)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._stream is None:
      self._stream = self._make_stream()
    batch = next(self._stream)
    if isinstance(batch, tuple):
      batch = dict(zip(self._keys(), batch))
    self._step += 1
    return batch

  def close(self):
    """Stops making batches and frees the stream; a later `next` restarts it at this step."""
    stream, self._stream = self._stream, None
    if stream is not None:
      stream.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def train_batches(split: precomp.PrecompSplit, vocab, *, global_batch_size: int, seed: int,
                  state: dict | None = None, host_rows: tuple[int, int] | None = None,
                  **kwargs) -> TrainIterator:
  """Endless training iterator over this host's `host_rows` (default: all) of each global
  batch; see `TrainIterator` for `length_buckets`, `drop_remainder`, `prefetch`, `backend`
  and `workers`."""
  return TrainIterator(split, vocab, global_batch_size=global_batch_size, seed=seed,
                       state=state, host_rows=host_rows, **kwargs)
