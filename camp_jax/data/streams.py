"""Background producers of numbered batches, their teardown, and reusable batch memory.

A stream calls `fn(g)` for g = start, start + 1, ... ahead of the consumer and yields the
results in order of g, whatever order they finish in:
  * `ThreadStream` (the default): a few worker threads. The batch function spends its time
    in numpy copies, which release the GIL, so the workers overlap.
  * `TFStream`: tf.data with a `tf.numpy_function`. Deleting a tf.data iterator while a
    call is in flight can deadlock on the GIL, so its calls go through a `CallGuard`, and
    an atexit hook closes the streams still open before the interpreter shuts down.
`BufferPool` hands out the same large arrays again once nobody holds them: on some machines
faulting in a fresh 36 MB batch costs more than filling it.
"""
import atexit
import logging
import sys
import threading
import time
import weakref

import numpy as np

_OPEN = weakref.WeakSet()  # Streams not yet closed, closed at exit.


@atexit.register
def _close_open_streams():
  for stream in list(_OPEN):
    stream.close()


class ThreadStream:
  """fn(start), fn(start + 1), ... computed by `workers` threads, at most `prefetch` ahead."""

  def __init__(self, fn, start: int, *, prefetch: int, workers: int):
    self._fn, self._next_task, self._next_out = fn, start, start
    self._ahead = max(1, prefetch) + workers - 1  # Tasks started but not yet consumed.
    self._done, self._stopped = {}, False
    self._cv = threading.Condition()
    self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
    for t in self._threads:
      t.start()
    _OPEN.add(self)

  def _work(self):
    while True:
      with self._cv:
        while not self._stopped and self._next_task > self._next_out + self._ahead:
          self._cv.wait()
        if self._stopped:
          return
        g, self._next_task = self._next_task, self._next_task + 1
      try:
        result = (True, self._fn(g))
      except Exception as e:  # pylint: disable=broad-except
        result = (False, e)  # Re-raised in the consumer, at its turn.
      with self._cv:
        if not self._stopped:
          self._done[g] = result
        self._cv.notify_all()

  def __iter__(self):
    return self

  def __next__(self):
    with self._cv:
      while self._next_out not in self._done:
        if self._stopped:
          raise StopIteration
        self._cv.wait()
      ok, value = self._done.pop(self._next_out)
      self._next_out += 1
      self._cv.notify_all()
    if not ok:
      raise value
    return value

  def close(self, timeout_s: float = 60.0):
    """Stops the workers and waits for the batches they are making."""
    with self._cv:
      self._stopped = True
      self._done.clear()
      self._cv.notify_all()
    deadline = time.monotonic() + timeout_s
    for t in self._threads:
      t.join(max(0.0, deadline - time.monotonic()))
    _OPEN.discard(self)


class CallGuard:
  """Wraps a batch function: counts calls in flight; after stop() calls return
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
  def active(self) -> int:
    return self._active

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


class TFStream:
  """The tuples fn(start), fn(start + 1), ... (numpy, `dtypes`) through tf.data."""

  def __init__(self, fn, start: int, *, prefetch: int, workers: int, dtypes, stopped_value):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    hide_gpus_from_tensorflow()
    self.guard = CallGuard(fn, stopped_value)
    tf_dtypes = [tf.as_dtype(d) for d in dtypes]
    ds = tf.data.Dataset.counter(start).map(
        lambda g: tf.numpy_function(lambda x: self.guard(int(x)), [g], tf_dtypes),
        num_parallel_calls=workers, deterministic=True)
    # Nothing to autotune (parallelism and prefetch are fixed), and the autotuning thread
    # makes deleting the iterator wait for its next wake-up: exits took 16-75 s longer.
    options = tf.data.Options()
    options.autotune.enabled = False
    self._it = ds.prefetch(prefetch).with_options(options).as_numpy_iterator()
    _OPEN.add(self)

  def __iter__(self):
    return self

  def __next__(self):
    if self._it is None:
      raise StopIteration
    return self._it.next()

  def close(self):
    """Lets the calls in flight finish, then drops the tf.data iterator."""
    if self._it is not None:
      self.guard.stop()
      self._it = None
    _OPEN.discard(self)


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


class BufferPool:
  """Arrays of one shape, handed out again once only the pool refers to them.

  A buffer is reused only when its reference count (CPython) says that nobody else holds
  it: not the consumer, not a view, not jax or tf aliasing its memory. So a batch that is
  still referenced is never overwritten. At most `size` buffers are kept; when all are in
  use, `get` returns a fresh array.
  """

  def __init__(self, shape, dtype, size: int):
    self._shape, self._dtype, self._size = tuple(shape), np.dtype(dtype), size
    self._buffers, self._lock, self._free_refs = [], threading.Lock(), None

  def get(self) -> np.ndarray:
    with self._lock:
      for k in range(len(self._buffers)):
        if sys.getrefcount(self._buffers[k]) == self._free_refs:
          return self._buffers[k]
      buf = np.empty(self._shape, self._dtype)
      if len(self._buffers) < self._size:
        self._buffers.append(buf)
        del buf
        # The count of a buffer nobody else holds (the list and getrefcount's argument).
        self._free_refs = sys.getrefcount(self._buffers[-1])
        return self._buffers[-1]
      return buf
