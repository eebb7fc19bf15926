"""Reads TFDS-built precomp records back as a `PrecompSplit`."""
import numpy as np
import tensorflow_datasets as tfds

from camp_jax.data import precomp
from camp_jax.data.tfds_builders import precomp_builder  # pylint: disable=unused-import
from camp_jax.data.tfds_builders import synthetic_builder  # pylint: disable=unused-import


class RecordImages:
  """Random access to the features of an array_record split, like a memmap (N, R, D)."""

  def __init__(self, source, shape, record_of_image: np.ndarray):
    self._source = source
    self._record_of_image = record_of_image  # TFDS stores examples in hashed-key order.
    self.shape = tuple(shape)
    self.dtype = np.dtype(np.float32)
    self.ndim = 3

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return self._source[int(self._record_of_image[index])]["features"]
    indices = self._record_of_image[index]
    if indices.ndim != 1:
      raise IndexError(f"RecordImages takes an int, a slice or a 1-D index array, got {index!r}")
    rows = self._source.__getitems__(indices.tolist()) if len(indices) else []
    return np.stack([r["features"] for r in rows]) if rows else np.zeros(
        (0,) + self.shape[1:], np.float32)


def read_tfds_split(spec: str, split: str) -> precomp.PrecompSplit:
  """`spec` = "NAME[/CONFIG][@DATA_DIR]", e.g. "camp_synthetic/tiny@/tmp/tfds"."""
  name, _, data_dir = spec.partition("@")
  builder = tfds.builder(name, data_dir=data_dir or None)
  try:
    source = builder.as_data_source(split=split)
    texts = builder.as_data_source(split=split, decoders={"features": tfds.decode.SkipDecoding()})
  except NotImplementedError as e:
    raise ValueError(f"{builder.data_dir}: split {split!r} must be built with "
                     f"file_format='array_record' for random access ({e})") from e
  n = len(source)
  shape = builder.info.features["features"].shape
  k = builder.info.features["captions"].shape[0]
  record_of_image = np.full(n, -1, np.int64)
  captions = [None] * n
  for start in range(0, n, 1024):
    for r, ex in enumerate(texts.__getitems__(list(range(start, min(n, start + 1024)))), start):
      i = int(ex["image_index"])
      if not 0 <= i < n or record_of_image[i] >= 0:
        raise ValueError(f"{builder.data_dir}/{split}: record {r} holds image_index {i}; "
                         f"expected each of 0..{n - 1} once")
      record_of_image[i] = r
      captions[i] = [c.decode("utf-8") if isinstance(c, bytes) else c for c in ex["captions"]]
  return precomp.PrecompSplit(name=split, path=str(builder.data_dir),
                              images=RecordImages(source, (n, *shape), record_of_image),
                              captions=[c for caps in captions for c in caps],
                              captions_per_image=k)
