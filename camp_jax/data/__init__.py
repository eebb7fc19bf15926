"""Data: tokenizer, vocabulary, precomp reader, synthetic set, TFDS builders, pipeline.

`load_split(config.data, name)` and `load_vocab(config.data)` read a run's data from the
source `config.data.kind` names: the built-in synthetic set (generated into
`config.data.dir` on first use), a precomp folder, or TFDS records. Importing this package
is cheap; tensorflow is imported only by `feed` (the tf.data graph that `pipeline` builds
when an iterator is made) and `tfds_builders`.
"""
import os
import pathlib

from camp_jax.data import precomp, synthetic, vocab as vocab_lib

SOURCES = ("synthetic", "precomp", "tfds")


def _folder(data_config) -> pathlib.Path:
  """The precomp folder of a synthetic or precomp source (made on first use if synthetic)."""
  if data_config.kind == "synthetic":
    sizes = {k: data_config.synthetic[k] for k in data_config.synthetic}
    return pathlib.Path(synthetic.ensure_synthetic(data_config.dir, **sizes))
  folder = pathlib.Path(os.fspath(data_config.dir))
  if not folder.is_dir():
    raise FileNotFoundError(f"config.data.dir={os.fspath(folder)!r}: no such precomp folder")
  return folder


def _check_kind(data_config) -> str:
  if data_config.kind not in SOURCES:
    raise ValueError(f"config.data.kind is {data_config.kind!r}, expected one of {SOURCES}")
  return data_config.kind


def load_split(data_config, name: str) -> precomp.PrecompSplit:
  """Split `name` of the data `config.data` names; features stay memory-mapped."""
  if _check_kind(data_config) == "tfds":
    from camp_jax.data.tfds_builders import reader  # pylint: disable=g-import-not-at-top
    return reader.read_tfds_split(os.fspath(data_config.dir), name)
  return precomp.read_split(_folder(data_config), name)


def load_relevance(data_config, name: str):
  """(region_relevant bool (N, R), word_relevant bool (5N, T)) of split `name`: the truth
  the synthetic set writes (see `synthetic`); column t of a word row is token t of
  `tokenizer.encode(caption)`. Raises, naming the file, for data without it."""
  if _check_kind(data_config) == "tfds":
    raise ValueError(f"config.data.kind='tfds' ({data_config.dir}): relevance is read from a "
                     "synthetic or precomp folder")
  return synthetic.read_relevance(_folder(data_config), name)


def load_vocab(data_config) -> vocab_lib.Vocabulary:
  """The vocabulary of `config.data`, with the file it came from as `.path`:
  `config.data.vocab` when set, else the synthetic or precomp folder's vocab.json."""
  kind = _check_kind(data_config)
  if data_config.vocab:
    path = pathlib.Path(data_config.vocab)
  elif kind in ("synthetic", "precomp"):
    path = _folder(data_config) / "vocab.json"
  else:
    raise ValueError("config.data.vocab must name the vocabulary file for TFDS data")
  if not path.is_file():
    raise FileNotFoundError(f"vocabulary {path} not found (set config.data.vocab)")
  return vocab_lib.load_vocab(path)
