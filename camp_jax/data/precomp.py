"""Reader for the SCAN "precomp" release: `{split}_ims.npy` + `{split}_caps.txt`.

`{split}_ims.npy` holds float32 (N, R, D) region features (Flickr30K/COCO:
R=36, D=2048); `{split}_caps.txt` one UTF-8 caption per line, the captions of
image i at lines k*i .. k*i+k-1 (k = 5). Some copies store one feature row per
caption (each image repeated k times); that layout is detected (rows ==
captions) and read through a strided view, so every image appears once.
Features stay memory-mapped: COCO train is ~33 GB.
"""
import dataclasses
import os
import pathlib
import zipfile

import numpy as np

_FINITE_CHUNK_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class PrecompSplit:
  """One split. `images` is a read-only memmap (view) float32 (num_images, R, D)."""
  name: str
  path: str  # The folder that holds the files.
  images: np.ndarray
  captions: list[str]
  captions_per_image: int = 5
  per_caption_layout: bool = False  # True if the file repeats each image per caption.

  @property
  def num_images(self) -> int:
    return self.images.shape[0]

  @property
  def num_captions(self) -> int:
    return len(self.captions)

  @property
  def num_regions(self) -> int:
    return self.images.shape[1]

  @property
  def feature_dim(self) -> int:
    return self.images.shape[2]

  def slice_images(self, start: int, stop: int) -> "PrecompSplit":
    """Images [start, stop) and their captions, e.g. COCO 1K folds or the first 1K of dev."""
    if not 0 <= start < stop <= self.num_images:
      raise IndexError(f"{self.path}/{self.name}: image slice [{start}, {stop}) outside "
                       f"[0, {self.num_images})")
    k = self.captions_per_image
    return dataclasses.replace(self, name=f"{self.name}[{start}:{stop}]",
                               images=self.images[start:stop],
                               captions=self.captions[start * k:stop * k])


def read_captions(path: str | os.PathLike) -> list[str]:
  """UTF-8 lines, stripped; an empty or undecodable line raises with its 1-based number."""
  data = pathlib.Path(path).read_bytes()
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()  # The newline that ends the last line.
  captions = []
  for number, line in enumerate(lines, start=1):
    try:
      caption = line.decode("utf-8").strip()
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}:{number}: caption is not valid UTF-8 ({e.reason} at byte "
                       f"{e.start}: {line[max(0, e.start - 10):e.start + 10]!r})") from e
    if not caption:
      raise ValueError(f"{path}:{number}: empty caption (every line must hold one caption)")
    captions.append(caption)
  return captions


def assert_finite(images: np.ndarray, path: str, row_stride: int = 1) -> None:
  """Raises on the first NaN/Inf, reading `images` (N, R, D) in bounded chunks."""
  row_bytes = max(1, images[0].nbytes if len(images) else 1)
  chunk = max(1, _FINITE_CHUNK_BYTES // row_bytes)
  for start in range(0, len(images), chunk):
    block = np.asarray(images[start:start + chunk])
    if not np.isfinite(block).all():
      i, r, d = np.argwhere(~np.isfinite(block))[0]
      raise ValueError(f"{path}: non-finite feature {block[i, r, d]} at image {start + i} "
                       f"(file row {(start + i) * row_stride}), region {r}, dim {d}")


def read_split(data_dir: str | os.PathLike, split: str, *, captions_per_image: int = 5,
               check_finite: bool = True) -> PrecompSplit:
  """Reads and validates one split of a precomp folder.

  Args:
    data_dir: folder with `{split}_ims.npy` and `{split}_caps.txt`.
    split: e.g. "train", "dev", "test", "testall".
    captions_per_image: k; captions of image i are lines k*i .. k*i+k-1.
    check_finite: scan the features for NaN/Inf (chunked; reads the
      whole file once, so turn off for repeated runs on COCO-sized data).
  """
  data_dir = os.fspath(data_dir)
  ims_path = os.path.join(data_dir, f"{split}_ims.npy")
  caps_path = os.path.join(data_dir, f"{split}_caps.txt")
  for p in (ims_path, caps_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"{p}: missing file for split {split!r} of the precomp folder "
                              f"{data_dir} (expected {split}_ims.npy and {split}_caps.txt)")
  rows = open_features(ims_path)
  captions = read_captions(caps_path)
  k, n, c = captions_per_image, rows.shape[0], len(captions)
  if n * k == c:
    images, per_caption = rows, False
  elif n == c and c % k == 0 and k > 1:
    images, per_caption = rows[::k], True
    # Cheap sanity check on the first image's group that rows really repeat.
    if not np.array_equal(rows[0], rows[k - 1]):
      raise ValueError(f"{ims_path}: {n} rows for {c} captions looks like one row per caption, "
                       f"but rows 0 and {k - 1} differ; expected each image repeated {k} times")
  else:
    raise ValueError(f"{caps_path}: {c} captions for {n} feature rows in {ims_path}; expected "
                     f"{k} captions per image ({n * k} lines) or one row per caption")
  if check_finite:
    assert_finite(images, ims_path, row_stride=k if per_caption else 1)
  return PrecompSplit(name=split, path=data_dir, images=images, captions=captions,
                      captions_per_image=k, per_caption_layout=per_caption)


def open_features(ims_path: str | os.PathLike, img_dim: int | None = None) -> np.ndarray:
  """The region features of a `{split}_ims.npy`, memory-mapped (only the header is read).

  Raises, naming the file, unless they are float32 (images, regions, dim) with at least one
  image and, if `img_dim` is given, dim == img_dim.
  """
  if not os.path.isfile(ims_path):
    raise FileNotFoundError(f"{ims_path}: no such feature file (expected a precomp folder "
                            "with {split}_ims.npy and {split}_caps.txt)")
  try:
    rows = np.load(ims_path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{ims_path}: not a plain .npy array ({e})") from e
  if not isinstance(rows, np.ndarray):  # An .npz archive.
    rows.close()
    raise ValueError(f"{ims_path}: not a plain .npy array (a {type(rows).__name__})")
  if rows.dtype != np.float32:
    raise ValueError(f"{ims_path}: expected dtype float32, got {rows.dtype}")
  if rows.ndim != 3 or (img_dim is not None and rows.shape[-1] != img_dim):
    want = "(images, regions, dim)" if img_dim is None else f"(images, regions, {img_dim})"
    model = "" if img_dim is None else f" (model img_dim={img_dim})"
    raise ValueError(f"{ims_path}: region features have shape {rows.shape}; expected "
                     f"{want}{model}")
  if rows.shape[0] == 0:
    raise ValueError(f"{ims_path}: no images")
  return rows


def check_feature_file(ims_path: str | os.PathLike, img_dim: int,
                       check_finite: bool = False) -> None:
  """Raises, naming the file, unless its features are float32 (N, R, img_dim) (header only)
  and, with `check_finite`, all finite (reads the whole file once, in chunks)."""
  rows = open_features(ims_path, img_dim)
  if check_finite:
    assert_finite(rows, os.fspath(ims_path))
