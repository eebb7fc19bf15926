"""Pretrained word vectors in the release's format: `config.word_vectors` (path, mask, freeze).

The release's stage-1 config points `word_embed` at `f30kword2vec300dim_3.npy`: a float
(V, d) array, row i the vector of vocabulary id i of the release's `.pkl` vocabulary (so the
rows line up only with that vocabulary). An optional mask `.npy` of V entries (bool or 0/1,
shape (V,) or (V, 1)) marks the rows to take; the others keep their random initialisation.

`freeze=True` is the release's `embed_mask`: the rows taken get zero gradient, so the
pretrained vectors stay fixed while the other rows train (every row of `path` when there is
no mask). `from_config` gives the vectors and those rows for both uses.
"""
import os

import numpy as np


def _load(path: str, what: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such {what} file")
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise ValueError(f"{path}: not a plain .npy array ({e})") from e


def load_word_vectors(path: str | os.PathLike, vocab_size: int,
                      mask_path: str | os.PathLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
  """(vectors float32 (vocab_size, d), mask bool (vocab_size,) or None).

  Raises, naming the file and the expected shape, unless the vectors are a finite 2-D
  array with one row per vocabulary word, and the mask holds one 0/1 per word.
  """
  path = os.fspath(path)
  vectors = _load(path, "word-vector")
  expected = f"expected ({vocab_size}, d): one row per vocabulary id"
  if vectors.ndim != 2 or vectors.shape[1] == 0:
    raise ValueError(f"{path}: word vectors have shape {vectors.shape}; {expected}")
  if vectors.shape[0] != vocab_size:
    raise ValueError(f"{path}: {vectors.shape[0]} word vectors for a vocabulary of "
                     f"{vocab_size} words; {expected}, in the vocabulary's id order")
  if not np.issubdtype(vectors.dtype, np.number) or np.issubdtype(vectors.dtype,
                                                                  np.complexfloating):
    raise ValueError(f"{path}: word vectors of dtype {vectors.dtype}; expected real numbers")
  vectors = vectors.astype(np.float32)
  bad = np.argwhere(~np.isfinite(vectors))
  if len(bad):
    row, col = bad[0]
    raise ValueError(f"{path}: non-finite value {vectors[row, col]} at row {row}, dim {col} "
                     f"({len(bad)} in all); expected finite vectors")
  if mask_path is None:
    return vectors, None
  mask_path = os.fspath(mask_path)
  mask = _load(mask_path, "word-vector mask")
  if mask.ndim == 2 and mask.shape[1] == 1:
    mask = mask[:, 0]
  if mask.shape != (vocab_size,):
    raise ValueError(f"{mask_path}: word-vector mask has shape {mask.shape}; expected "
                     f"({vocab_size},), one entry per vocabulary id")
  if mask.dtype != np.bool_:
    if not np.issubdtype(mask.dtype, np.number) or not np.isin(mask, (0, 1)).all():
      raise ValueError(f"{mask_path}: word-vector mask must hold only 0/1 or booleans")
    mask = mask != 0
  return vectors, mask


def from_config(section, vocab_size: int) -> tuple[np.ndarray, np.ndarray] | None:
  """(vectors float32 (V, d), rows bool (V,)) of `config.word_vectors`, or None without a path.

  `rows` marks the rows taken from the vectors: the mask's, or every row without one. They
  are the rows `freeze=True` keeps fixed.
  """
  if not section.path:
    return None
  vectors, mask = load_word_vectors(section.path, vocab_size, section.mask or None)
  return vectors, np.ones(vocab_size, bool) if mask is None else mask
