"""A precomp split encoded by a model once, cached on disk: what search and its evaluation read.

The encoder outputs of each side are cached in DATA_DIR/.camp_cache/ (or `cache_dir`), keyed
by a hash of the bundle's params, model config and vocabulary and the split, and checked
against the size and mtime of the split's files.
"""
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Callable

import numpy as np

from camp_jax import bundle, files
from camp_jax.data import precomp, tokenizer

CACHE_DIR = ".camp_cache"
_CACHE_VERSION = 2


def predictor_hash(predictor) -> str:
  """A short hash of the params, model config and vocabulary: what the cached outputs depend on."""
  h = hashlib.sha256(json.dumps(predictor.model_config, sort_keys=True, default=str).encode())
  for name, value in sorted(bundle.flatten_params(predictor.params).items()):
    value = np.ascontiguousarray(value)
    h.update(f"{name}:{value.dtype}:{value.shape}".encode())
    h.update(value.tobytes())
  if predictor.vocab is not None:
    h.update(json.dumps(predictor.vocab.word2idx, sort_keys=True).encode())
  return h.hexdigest()[:16]


def require_vocab(predictor, what: str):
  if predictor.vocab is None:
    raise ValueError(f"the bundle has no vocab.json; {what} needs the vocabulary the model "
                     "was trained with (export or convert it with one)")
  return predictor.vocab


class Gallery:
  """One split of a precomp folder with its encoder outputs, encoded once and cached.

  Attributes:
    split: the `PrecompSplit` (features memory-mapped).
    encoded: the sides ("images", "captions") this object had to encode (cache misses).
  """

  def __init__(self, predictor, data_dir: str | os.PathLike, split: str = "test",
               cache_dir: str | os.PathLike | None = None,
               log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)):
    self.predictor, self.log = predictor, log
    self.data_dir, self.split_name = pathlib.Path(data_dir), split
    self.ims_path = self.data_dir / f"{split}_ims.npy"
    self.caps_path = self.data_dir / f"{split}_caps.txt"
    precomp.check_feature_file(self.ims_path, predictor.model_config["img_dim"])
    self.split = precomp.read_split(self.data_dir, split, check_finite=False)
    self.cache_dir = pathlib.Path(cache_dir) if cache_dir else self.data_dir / CACHE_DIR
    self.encoded: list[str] = []
    self._key = None
    self._sides = {}

  @property
  def num_images(self) -> int:
    return self.split.num_images

  def _stamp(self) -> str:
    return json.dumps({p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                       for p in (self.ims_path, self.caps_path)}, sort_keys=True)

  def _cache_file(self, side: str) -> pathlib.Path:
    if self._key is None:
      self._key = predictor_hash(self.predictor)
    return self.cache_dir / f"{self._key}-{self.split_name}-{side}.npz"

  def _read_cache(self, path: pathlib.Path, stamp: str) -> dict | None:
    if not path.is_file():
      return None
    try:
      with np.load(path) as z:
        if str(z["stamp"]) == stamp and int(z["version"]) == _CACHE_VERSION:
          return {k: z[k] for k in z.files if k not in ("stamp", "version")}
    except (OSError, ValueError, KeyError) as e:
      self.log(f"warning: ignoring unreadable cache {path} ({e})")
    return None

  def _load_or_encode(self, side: str, encode: Callable[[], dict]) -> dict:
    if side in self._sides:
      return self._sides[side]
    path, stamp = self._cache_file(side), self._stamp()
    arrays = self._read_cache(path, stamp)
    if arrays is None:
      start = time.perf_counter()
      arrays = encode()
      self.encoded.append(side)
      self.log(f"encoded {side} of {self.data_dir}/{self.split_name} in "
               f"{time.perf_counter() - start:.1f} s")
      try:
        with files.atomic_path(path) as tmp:
          np.savez(tmp, stamp=stamp, version=_CACHE_VERSION, **arrays)
      except OSError as e:
        self.log(f"warning: could not write the cache {path} ({e}); continuing without it")
    self._sides[side] = arrays
    return arrays

  def images(self) -> dict:
    """{"emb": (N, R, d), "vec": (N, d)}."""
    def encode():
      precomp.assert_finite(self.split.images, str(self.ims_path))
      emb = self.predictor.encode_images(self.split.images)
      return {"emb": emb, "vec": self.predictor.image_vectors(emb)}
    return self._load_or_encode("images", encode)

  def captions(self) -> dict:
    """{"emb": (M, L, d), "mask": (M, L), "vec": (M, d)}."""
    def encode():
      vocab = require_vocab(self.predictor, f"encoding {self.caps_path}")
      emb, mask = self.predictor.encode_captions(
          *tokenizer.encode_all(self.split.captions, vocab))
      return {"emb": emb, "mask": mask, "vec": self.predictor.caption_vectors(emb, mask)}
    return self._load_or_encode("captions", encode)

  def encoded_sides(self) -> dict:
    """Both sides: {"images": ..., "captions": ...}."""
    return {"images": self.images(), "captions": self.captions()}
