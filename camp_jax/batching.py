"""Running a jitted function over many rows in fixed-size batches (few compilations)."""
from typing import Callable

import jax
import numpy as np


def pad_rows(x, rows: int) -> np.ndarray:
  """x (n, ...) with zero rows appended up to `rows`."""
  x = np.asarray(x)
  if len(x) >= rows:
    return x
  return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def batch_size_for(n: int, most: int) -> int:
  """A batch size for n rows: the next power of two (at least 16), at most `most`.

  Small inputs (one query) do not pay for a large padded batch, and only log2(most)
  shapes can ever compile.
  """
  return min(most, 1 << max(4, (max(n, 1) - 1).bit_length()))


def map_batches(fn: Callable, arrays, batch_size: int):
  """fn over batches of `batch_size` rows of `arrays` (the last one zero-padded), concatenated.

  Args:
    fn: (*batch_arrays) -> a pytree of arrays with the batch as leading axis.
    arrays: a tuple of (n, ...) arrays (memmaps are read one batch at a time).
    batch_size: rows per call; every call has this shape.

  Returns:
    The pytree of fn's outputs over all n rows, as numpy.
  """
  n = len(arrays[0])
  parts = []
  for start in range(0, n, batch_size):
    batch = [pad_rows(np.asarray(a[start:start + batch_size]), batch_size) for a in arrays]
    parts.append(jax.tree.map(lambda y, k=min(batch_size, n - start): np.asarray(y)[:k],
                              fn(*batch)))
  return jax.tree.map(lambda *ys: np.concatenate(ys), *parts)
