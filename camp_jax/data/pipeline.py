"""Training batches: this process's rows of global batch k, made ahead by tf.data.

Batch k (epoch e, step s = divmod(k, steps_per_epoch)) is a pure function of (seed, k): a
stateless permutation of the images keyed by (seed, e) gives positions s*B .. s*B + B - 1 of
the epoch, each with one of its captions drawn from (seed, k) (see `feed` for the exact ops).
A process reads only its rows [start, stop) of each global batch (`host_rows`, from the
batch sharding), so the processes' parts together equal the single-process batch, and the
state (epoch, step) resumes exactly. Captions are padded to the smallest length bucket that
fits the longest caption of the global batch, which every process computes alike, so shapes
agree across processes.

The batches are a tf.data graph of native ops (`feed.train_dataset`): parallel, in order,
prefetched, the features gathered from the page cache of the memory-mapped precomp file
(which holds what was read of it: all of F30K train's 8.5 GB after an epoch). A TFDS source
or a one-row-per-caption file is read into memory at the first batch instead (N*R*D*4
bytes). Tensorflow is imported when the iterator is made.
"""
import logging
import os

from camp_jax.data import precomp
from camp_jax.data import tokenizer

LENGTH_BUCKETS = (16, 32, 49)
ORDER = "index_shuffle"  # The order of `feed`, in the state: a change refuses to resume.


def _bucket(length: int, buckets) -> int:
  return next(b for b in buckets if b >= length)


def prepare_tensorflow() -> None:
  """Sets tensorflow up for the feed; call before anything initialises it (main does).

  Hides the GPUs, whose memory is JAX's, and makes tensorflow's CPU allocator pool its
  memory (TF_CPU_ALLOCATOR_USE_BFC, unless set): a fresh 36 MB batch otherwise costs more
  in page faults than the gather that fills it (65 vs 10 ms here). A no-op without
  tensorflow.
  """
  os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF was initialised before; its device choice stands.
    logging.warning("could not hide GPUs from tensorflow: %s", e)


class TrainIterator:
  """Yields this process's rows of each global batch: {"images" (b, R, D) f32, "tokens"
  (b, T) i32, "lengths" (b,) i32}, b = stop - start of `host_rows`, T a length bucket.

  With drop_remainder=False the last batch of an epoch is padded with masked rows (zero
  features, caption <start><end>) and every batch gets "mask" (b,) bool.
  """

  def __init__(self, split: precomp.PrecompSplit, vocab, *, global_batch_size: int, seed: int,
               state: dict | None = None, host_rows: tuple[int, int] | None = None,
               length_buckets=LENGTH_BUCKETS, drop_remainder: bool = True):
    self._split, self._seed, self._global = split, int(seed), int(global_batch_size)
    self._buckets = tuple(sorted(length_buckets))
    if self._buckets[0] < 3:
      raise ValueError(f"length buckets must be >= 3 (<start> word <end>), got {length_buckets}")
    start, stop = (0, self._global) if host_rows is None else map(int, host_rows)
    if not 0 <= start < stop <= self._global:
      raise ValueError(f"host_rows {host_rows} outside the global batch [0, {self._global})")
    self._rows = (start, stop)
    self._drop = drop_remainder
    n = split.num_images
    self.steps_per_epoch = n // self._global if drop_remainder else -(-n // self._global)
    if self.steps_per_epoch == 0:
      raise ValueError(f"{split.path}/{split.name}: {n} images give no full batch of "
                       f"{self._global}")
    self._tokens, self._lengths = tokenizer.encode_all(split.captions, vocab,
                                                       max_words=self._buckets[-1] - 2)
    self._step = self._restore(state) if state else 0  # Global step: epoch * spe + step.
    self._features = self._batches = None
    prepare_tensorflow()

  def _identity(self) -> dict:
    return {"seed": self._seed, "global_batch_size": self._global, "order": ORDER,
            "num_images": self._split.num_images, "drop_remainder": self._drop}

  def get_state(self) -> dict:
    """JSON-able position after the last batch returned."""
    epoch, step = divmod(self._step, self.steps_per_epoch)
    return dict(self._identity(), epoch=epoch, step=step)

  def _restore(self, state: dict) -> int:
    for key, value in self._identity().items():
      if state.get(key) != value:
        raise ValueError(f"pipeline state has {key}={state.get(key)!r} but this pipeline "
                         f"has {value!r}; resuming would change the example order")
    if not 0 <= state["step"] < self.steps_per_epoch or state["epoch"] < 0:
      raise ValueError(f"pipeline state {state} outside {self.steps_per_epoch} steps per epoch")
    return state["epoch"] * self.steps_per_epoch + state["step"]

  @property
  def max_width(self) -> int:
    """The widest caption width (length bucket) of any batch: the longest caption's."""
    return _bucket(int(self._lengths.max()), self._buckets)

  def _start(self):
    from camp_jax.data import feed  # pylint: disable=g-import-not-at-top
    if self._features is None:
      self._features = feed.features_tensor(self._split.images)
    return feed.train_dataset(
        self._features, self._tokens, self._lengths, seed=self._seed,
        global_batch_size=self._global, steps_per_epoch=self.steps_per_epoch,
        captions_per_image=self._split.captions_per_image, rows=self._rows,
        buckets=self._buckets, drop_remainder=self._drop,
        start_step=self._step).as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._batches is None:
      self._batches = self._start()
    batch = next(self._batches)
    self._step += 1
    return batch

  def close(self):
    """Stops making batches and frees the features; a later `next` restarts at this step."""
    self._batches = self._features = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def train_batches(split: precomp.PrecompSplit, vocab, *, global_batch_size: int, seed: int,
                  state: dict | None = None, host_rows: tuple[int, int] | None = None,
                  **kwargs) -> TrainIterator:
  """Endless training iterator over this process's `host_rows` (default: all) of each
  global batch; see `TrainIterator` for `length_buckets` and `drop_remainder`."""
  return TrainIterator(split, vocab, global_batch_size=global_batch_size, seed=seed,
                       state=state, host_rows=host_rows, **kwargs)
