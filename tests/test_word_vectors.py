"""Tests for camp_jax.data.word_vectors on small .npy files."""
import ml_collections
import numpy as np
import pytest

from camp_jax.data import word_vectors


def test_reads_vectors_and_mask(tmp_path):
  vectors = np.arange(12, dtype=np.float64).reshape(4, 3)
  np.save(tmp_path / "w.npy", vectors)
  np.save(tmp_path / "m.npy", np.array([0, 1, 1, 0], np.int64))
  got, mask = word_vectors.load_word_vectors(tmp_path / "w.npy", 4, tmp_path / "m.npy")
  assert got.dtype == np.float32 and got.shape == (4, 3)
  np.testing.assert_array_equal(got, vectors)
  assert mask.dtype == np.bool_ and mask.tolist() == [False, True, True, False]
  got, mask = word_vectors.load_word_vectors(tmp_path / "w.npy", 4)
  assert mask is None
  np.save(tmp_path / "m2.npy", np.array([[True], [False], [True], [True]]))  # (V, 1)
  _, mask = word_vectors.load_word_vectors(tmp_path / "w.npy", 4, tmp_path / "m2.npy")
  assert mask.tolist() == [True, False, True, True]


@pytest.mark.parametrize("array, vocab_size, match", [
    (np.zeros((5, 3), np.float32), 4, r"w.npy: 5 word vectors for a vocabulary of 4 words; "
                                      r"expected \(4, d\)"),
    (np.zeros((4, 3, 1), np.float32), 4, r"w.npy: word vectors have shape \(4, 3, 1\); "
                                         r"expected \(4, d\)"),
    (np.zeros((4,), np.float32), 4, r"shape \(4,\); expected \(4, d\)"),
    (np.zeros((4, 0), np.float32), 4, r"shape \(4, 0\)"),
    (np.array([[0, 1], [2, np.nan], [0, 0], [0, 0]]), 4, r"w.npy: non-finite value nan at row 1, "
                                                         r"dim 1 \(1 in all\)"),
    (np.array([[0, 1], [2, 3], [np.inf, 0], [0, -np.inf]]), 4, r"inf at row 2, dim 0 \(2 in all"),
    (np.array([["a"], ["b"], ["c"], ["d"]]), 4, r"dtype <U1; expected real numbers"),
])
def test_refuses_bad_vectors(tmp_path, array, vocab_size, match):
  np.save(tmp_path / "w.npy", array)
  with pytest.raises(ValueError, match=match):
    word_vectors.load_word_vectors(tmp_path / "w.npy", vocab_size)


@pytest.mark.parametrize("mask, match", [
    (np.ones(5, bool), r"m.npy: word-vector mask has shape \(5,\); expected \(4,\)"),
    (np.ones((4, 2), bool), r"shape \(4, 2\); expected \(4,\)"),
    (np.array([0, 1, 2, 1]), r"m.npy: word-vector mask must hold only 0/1"),
])
def test_refuses_bad_masks(tmp_path, mask, match):
  np.save(tmp_path / "w.npy", np.zeros((4, 3), np.float32))
  np.save(tmp_path / "m.npy", mask)
  with pytest.raises(ValueError, match=match):
    word_vectors.load_word_vectors(tmp_path / "w.npy", 4, tmp_path / "m.npy")


def test_missing_and_unreadable_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope.npy: no such word-vector file"):
    word_vectors.load_word_vectors(tmp_path / "nope.npy", 4)
  (tmp_path / "w.npy").write_bytes(b"not numpy")
  with pytest.raises(ValueError, match=r"w.npy: not a plain .npy array"):
    word_vectors.load_word_vectors(tmp_path / "w.npy", 4)
  np.save(tmp_path / "w.npy", np.zeros((4, 3), np.float32))
  with pytest.raises(FileNotFoundError, match=r"m.npy: no such word-vector mask file"):
    word_vectors.load_word_vectors(tmp_path / "w.npy", 4, tmp_path / "m.npy")


def test_from_config_gives_the_rows_taken(tmp_path):
  section = ml_collections.ConfigDict(dict(path="", mask="", freeze=False))
  assert word_vectors.from_config(section, 4) is None
  np.save(tmp_path / "w.npy", np.ones((4, 3), np.float32))
  section.path = str(tmp_path / "w.npy")
  vectors, rows = word_vectors.from_config(section, 4)
  assert vectors.shape == (4, 3) and rows.tolist() == [True] * 4  # no mask: every row
  np.save(tmp_path / "m.npy", np.array([1, 0, 0, 1]))
  section.mask = str(tmp_path / "m.npy")
  _, rows = word_vectors.from_config(section, 4)
  assert rows.tolist() == [True, False, False, True]
