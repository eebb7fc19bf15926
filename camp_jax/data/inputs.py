"""The datasets a run config names: the built-in synthetic data, a precomp folder, or TFDS."""
import dataclasses
import functools
import os
import pathlib

from camp_jax.data import pipeline, precomp, synthetic, vocab as vocab_lib

SOURCES = ("synthetic", "precomp", "tfds")


@dataclasses.dataclass
class Inputs:
  """Where a run's data lives; splits are read (memory-mapped) on first use."""
  source: str
  vocab: vocab_lib.Vocabulary
  vocab_path: pathlib.Path

  def split(self, name: str) -> precomp.PrecompSplit:
    return _read(self.source, name)


@functools.lru_cache(maxsize=16)
def _read(source: str, name: str) -> precomp.PrecompSplit:
  return pipeline.load_split(source, name)


def load(data_config) -> Inputs:
  """Resolves `config.data` (kind, dir, vocab, synthetic sizes) into an `Inputs`."""
  kind = data_config.kind
  if kind not in SOURCES:
    raise ValueError(f"config.data.kind is {kind!r}, expected one of {SOURCES}")
  if kind == "synthetic":
    sizes = {k: data_config.synthetic[k] for k in data_config.synthetic}
    folder = pathlib.Path(synthetic.ensure_synthetic(data_config.dir, **sizes))
    source, vocab_path = str(folder), folder / "vocab.json"
  elif kind == "precomp":
    source = os.fspath(data_config.dir)
    if not pathlib.Path(source).is_dir():
      raise FileNotFoundError(f"config.data.dir={source!r}: no such precomp folder")
    vocab_path = pathlib.Path(data_config.vocab or pathlib.Path(source) / "vocab.json")
  else:
    source = f"tfds:{data_config.dir}"
    if not data_config.vocab:
      raise ValueError("config.data.vocab must name the vocabulary file for TFDS data")
    vocab_path = pathlib.Path(data_config.vocab)
  if not vocab_path.is_file():
    raise FileNotFoundError(f"vocabulary {vocab_path} not found (set config.data.vocab)")
  return Inputs(source, vocab_lib.load_vocab(vocab_path), vocab_path)
