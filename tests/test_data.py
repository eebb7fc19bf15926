"""Tests for camp_jax.data: one hop from `config.data` to a split and a vocabulary."""
import ml_collections
import numpy as np
import pytest

from camp_jax import data
from camp_jax.data import precomp
from camp_jax.data import synthetic
from camp_jax.data import vocab as vocab_lib

SMALL = dict(num_train=12, num_dev=4, num_test=4, num_regions=3, feature_dim=5,
             clutter_regions=0)


def _config(kind, folder, vocab=""):
  return ml_collections.ConfigDict(dict(kind=kind, dir=str(folder), vocab=vocab,
                                        synthetic=SMALL))


def test_synthetic_is_generated_on_first_use(tmp_path):
  config = _config("synthetic", tmp_path / "synth")
  split = data.load_split(config, "dev")
  assert (split.num_images, split.num_regions, split.feature_dim) == (4, 3, 5)
  assert split.path == str(tmp_path / "synth")
  vocab = data.load_vocab(config)
  assert vocab.path == tmp_path / "synth" / "vocab.json"  # The set's own vocabulary.
  config.vocab = str(tmp_path / "missing.json")  # A vocabulary named is used, never ignored.
  with pytest.raises(FileNotFoundError, match="missing.json"):
    data.load_vocab(config)
  assert vocab == vocab_lib.build_vocab(data.load_split(config, "train").captions, threshold=1)


def test_precomp_folder_with_its_own_or_another_vocabulary(tmp_path):
  folder = tmp_path / "f"
  synthetic.generate(folder, **SMALL)
  config = _config("precomp", folder)
  np.testing.assert_array_equal(data.load_split(config, "train").images,
                                precomp.read_split(folder, "train").images)
  assert data.load_vocab(config).path == folder / "vocab.json"
  other = tmp_path / "other.json"
  other.write_bytes((folder / "vocab.json").read_bytes())
  assert data.load_vocab(_config("precomp", folder, str(other))).path == other
  with pytest.raises(FileNotFoundError, match=r"nope.json not found"):
    data.load_vocab(_config("precomp", folder, str(tmp_path / "nope.json")))
  with pytest.raises(FileNotFoundError, match=r"missing.*: no such precomp folder"):
    data.load_split(_config("precomp", tmp_path / "missing"), "train")
  with pytest.raises(FileNotFoundError, match=r"testall_ims.npy: missing file"):
    data.load_split(config, "testall")


def test_bad_kind_and_tfds_without_vocabulary(tmp_path):
  with pytest.raises(ValueError, match=r"config.data.kind is 'csv'"):
    data.load_split(_config("csv", tmp_path), "train")
  with pytest.raises(ValueError, match=r"config.data.vocab must name the vocabulary"):
    data.load_vocab(_config("tfds", "camp_synthetic/tiny"))


def test_tfds_source(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from camp_jax.data.tfds_builders import synthetic_builder  # pylint: disable=g-import-not-at-top
  builder = synthetic_builder.CampSynthetic(config="tiny", data_dir=tmp_path / "tfds")
  builder.download_and_prepare(file_format="array_record", download_dir=tmp_path / "dl")
  folder = tmp_path / "dl" / "camp_synthetic" / "tiny"
  config = _config("tfds", f"camp_synthetic/tiny@{tmp_path / 'tfds'}",
                   vocab=str(folder / "vocab.json"))
  records = data.load_split(config, "dev")
  assert records.captions == precomp.read_split(folder, "dev").captions
  assert data.load_vocab(config).path == folder / "vocab.json"
