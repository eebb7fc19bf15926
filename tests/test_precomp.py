"""Tests for camp_jax.data.precomp on small folders written here."""
import numpy as np
import pytest

from camp_jax.data import precomp


def write_split(folder, split="dev", num_images=4, regions=3, dim=5, per_caption=False,
                captions=None, dtype=np.float32):
  images = np.arange(num_images * regions * dim, dtype=np.float32).reshape(
      num_images, regions, dim) / 7
  if per_caption:
    images = np.repeat(images, 5, axis=0)
  np.save(folder / f"{split}_ims.npy", images.astype(dtype))
  if captions is None:
    captions = [f"Image {i} caption {j}." for i in range(num_images) for j in range(5)]
  data = captions if isinstance(captions, bytes) else ("\n".join(captions) + "\n").encode()
  (folder / f"{split}_caps.txt").write_bytes(data)
  return images


def test_reads_split(tmp_path):
  images = write_split(tmp_path, "test")
  split = precomp.read_split(tmp_path, "test")
  assert isinstance(split.images, np.memmap)
  np.testing.assert_array_equal(split.images, images)
  assert (split.num_images, split.num_captions, split.captions_per_image) == (4, 20, 5)
  assert (split.num_regions, split.feature_dim) == (3, 5)
  assert split.captions[7] == "Image 1 caption 2." and split.captions_per_image == 5
  assert split.name == "test" and split.path == str(tmp_path) and not split.per_caption_layout


def test_per_caption_layout_reads_each_image_once(tmp_path):
  rows = write_split(tmp_path, per_caption=True)
  split = precomp.read_split(tmp_path, "dev")
  assert split.per_caption_layout and split.num_images == 4 and split.num_captions == 20
  assert isinstance(split.images, np.memmap)  # A strided view, not a copy.
  np.testing.assert_array_equal(split.images, rows[::5])
  plain = tmp_path / "plain"
  plain.mkdir()
  write_split(plain)
  np.testing.assert_array_equal(precomp.read_split(plain, "dev").images, split.images)


def test_slice_images(tmp_path):
  write_split(tmp_path)
  part = precomp.read_split(tmp_path, "dev").slice_images(1, 3)
  assert part.num_images == 2 and part.captions[0] == "Image 1 caption 0."
  assert part.num_captions == 10
  with pytest.raises(IndexError, match=r"\[2, 9\)"):
    part.slice_images(2, 9)


def test_crlf_and_missing_final_newline(tmp_path):
  caps = "\r\n".join(f"c {i}" for i in range(20)).encode()
  write_split(tmp_path, captions=caps)
  assert precomp.read_split(tmp_path, "dev").captions[-1] == "c 19"


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"train_ims.npy: missing file"):
    precomp.read_split(tmp_path, "train")
  write_split(tmp_path, "train")
  (tmp_path / "train_caps.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"train_caps.txt: missing file"):
    precomp.read_split(tmp_path, "train")


def test_caption_count_not_a_multiple(tmp_path):
  write_split(tmp_path, captions=[f"c {i}" for i in range(18)])
  with pytest.raises(ValueError, match=r"dev_caps.txt: 18 captions for 4 feature rows"):
    precomp.read_split(tmp_path, "dev")


def test_repeated_layout_with_different_rows(tmp_path):
  write_split(tmp_path, num_images=20)
  (tmp_path / "dev_caps.txt").write_text("\n".join(f"c {i}" for i in range(20)))
  with pytest.raises(ValueError, match=r"rows 0 and 4 differ"):
    precomp.read_split(tmp_path, "dev")


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 3, 5), np.float64), "expected dtype float32, got float64"),
    (np.zeros((4, 15), np.float32), r"dev_ims.npy: region features have shape \(4, 15\); "
                                    r"expected \(images, regions, dim\)$"),
    (np.zeros((0, 3, 5), np.float32), r"dev_ims.npy: no images"),
])
def test_bad_dtype_or_rank(tmp_path, array, match):
  write_split(tmp_path)
  np.save(tmp_path / "dev_ims.npy", array)
  with pytest.raises(ValueError, match=match):
    precomp.read_split(tmp_path, "dev")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features(tmp_path, monkeypatch, value):
  images = write_split(tmp_path, num_images=6)
  images[4, 2, 1] = value
  np.save(tmp_path / "dev_ims.npy", images)
  monkeypatch.setattr(precomp, "_FINITE_CHUNK_BYTES", 100)  # Several chunks.
  with pytest.raises(ValueError, match=r"dev_ims.npy: non-finite feature .* image 4 "
                                       r"\(file row 4\), region 2, dim 1"):
    precomp.read_split(tmp_path, "dev")
  assert precomp.read_split(tmp_path, "dev", check_finite=False).num_images == 6


def test_empty_caption_names_line(tmp_path):
  caps = [f"c {i}" for i in range(20)]
  caps[12] = "   "
  write_split(tmp_path, captions=caps)
  with pytest.raises(ValueError, match=r"dev_caps.txt:13: empty caption"):
    precomp.read_split(tmp_path, "dev")


def test_non_utf8_names_line(tmp_path):
  caps = ("\n".join(f"c {i}" for i in range(7)) + "\ncaf\xe9 latin-1\n").encode("latin-1")
  caps += ("\n".join(f"c {i}" for i in range(12)) + "\n").encode()
  write_split(tmp_path, captions=caps)
  with pytest.raises(ValueError, match=r"dev_caps.txt:8: caption is not valid UTF-8"):
    precomp.read_split(tmp_path, "dev")


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_check_feature_file(tmp_path, value):
  images = write_split(tmp_path, num_images=6)
  path = tmp_path / "dev_ims.npy"
  precomp.check_feature_file(path, 5, check_finite=True)
  with pytest.raises(ValueError) as e:
    precomp.check_feature_file(path, 7)
  assert str(e.value) == (f"{path}: region features have shape (6, 3, 5); expected "
                          "(images, regions, 7) (model img_dim=7)")
  images[5, 0, 4] = value
  np.save(path, images)
  precomp.check_feature_file(path, 5)  # The header only.
  with pytest.raises(ValueError) as e:
    precomp.check_feature_file(path, 5, check_finite=True)
  assert str(e.value) == (f"{path}: non-finite feature {value} at image 5 (file row 5), "
                          "region 0, dim 4")
  path.write_bytes(b"PK\x03\x04 a zip, not a .npy")
  with pytest.raises(ValueError, match=r"dev_ims.npy: not a plain .npy array") as e:
    precomp.check_feature_file(path, 5)
  assert "\n" not in str(e.value)
  np.savez(path, images)  # np.savez adds .npz: write the archive under the .npy name.
  (tmp_path / "dev_ims.npy.npz").rename(path)
  with pytest.raises(ValueError, match=r"dev_ims.npy: not a plain .npy array \(a NpzFile\)"):
    precomp.check_feature_file(path, 5)
  with pytest.raises(FileNotFoundError, match=r"test_ims.npy: no such feature file"):
    precomp.check_feature_file(tmp_path / "test_ims.npy", 5)
