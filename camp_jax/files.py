"""Atomic writes: a file or folder appears whole at its path, or not at all.

  with files.atomic_path(out) as tmp:    # tmp: a fresh path beside `out`, nothing there yet
    np.save(tmp, scores)                 # or: tmp.mkdir(); write a folder's files into it

When the block ends without an error, `tmp` is renamed onto `out` (one `os.replace` on the
same filesystem); on an error, or a kill, `out` keeps its previous content and the
temporary copy is removed (a kill -9 leaves it as a hidden `.NAME.*` folder beside `out`).
"""
import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[pathlib.Path]:
  """Yields a temporary path with `path`'s name in a hidden folder beside it (so numpy
  keeps the name as it is); renames what was written there onto `path` at the end.

  An existing file at `path` is replaced atomically; an existing folder is removed just
  before the rename. With `overwrite=False`, an existing `path` raises FileExistsError.
  """
  path = pathlib.Path(path)
  if not overwrite and path.exists():
    raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    tmp = staging / path.name
    yield tmp
    if not tmp.exists():
      raise FileNotFoundError(f"nothing was written for {path}")
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    os.replace(tmp, path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes `text` to `path` atomically; returns the path."""
  with atomic_path(path) as tmp:
    tmp.write_text(text)
  return pathlib.Path(path)
