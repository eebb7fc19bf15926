"""Inference bundles: a folder with params, the model config and optionally the vocabulary.

    BUNDLE/model.json   {"format_version": 1, "model": {...build() kwargs...}, ...}
    BUNDLE/params.npz   flat arrays keyed by "/"-joined parameter paths
    BUNDLE/vocab.json   SCAN-style vocabulary (optional)

Readable with numpy and json alone. `save` writes to a temporary folder and renames it into
place (`camp_jax.files`), so an interrupted write never leaves a half bundle at the destination.
"""
import json
import os
import pathlib
from typing import Any

import flax.traverse_util
import numpy as np

from camp_jax import files
from camp_jax.data import vocab as vocab_lib

FORMAT_VERSION = 1


def flatten_params(params) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def require_local(name: str, path: str | os.PathLike | None) -> None:
  """Refuses URLs: pathlib would turn gs://b/run into a local folder "gs:/b/run", and what is
  written there is lost with the machine."""
  if path and "://" in os.fspath(path):
    raise ValueError(f"{name}={path}: URLs are not supported; mount the bucket (e.g. gcsfuse, "
                     "as launch/tpu_pod.sh does) and pass the mounted folder")


def write(folder: str | os.PathLike, params, model_config: dict, vocab=None,
          extra: dict[str, Any] | None = None) -> pathlib.Path:
  """Writes the bundle files into `folder` (made if missing), in place; see `save`."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  meta = {"format_version": FORMAT_VERSION, "model": dict(model_config), **(extra or {})}
  (folder / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
  np.savez(folder / "params.npz", **flatten_params(params))
  if vocab is not None:
    vocab.save_json(folder / "vocab.json")
  return folder


def save(out: str | os.PathLike, params, model_config: dict, vocab=None,
         extra: dict[str, Any] | None = None, overwrite: bool = False) -> pathlib.Path:
  """Writes a bundle folder at `out` atomically and returns its path."""
  require_local("bundle folder", out)
  with files.atomic_path(out, overwrite) as tmp:
    write(tmp, params, model_config, vocab, extra)
  return pathlib.Path(out)


def load(path: str | os.PathLike) -> tuple[dict, dict, Any, dict]:
  """Reads a bundle: (model_config, params, vocab or None, metadata)."""
  path = pathlib.Path(path)
  meta_file = path / "model.json"
  if not meta_file.is_file():
    raise FileNotFoundError(f"{path} is not a camp_jax bundle: {meta_file} is missing")
  try:
    meta = json.loads(meta_file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_file}: not valid JSON ({e})") from e
  version = meta.get("format_version")
  if not isinstance(version, int) or version > FORMAT_VERSION:
    raise ValueError(f"{meta_file}: format_version {version!r} is not supported by this "
                     f"camp_jax (reads versions up to {FORMAT_VERSION}); upgrade camp_jax")
  if "model" not in meta:
    raise ValueError(f"{meta_file}: missing the 'model' field (the model config)")
  with np.load(path / "params.npz") as arrays:
    params = unflatten_params({k: arrays[k] for k in arrays.files})
  vocab = None
  if (path / "vocab.json").is_file():
    vocab = vocab_lib.load_vocab(path / "vocab.json")
  return meta["model"], params, vocab, meta
