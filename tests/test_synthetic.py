"""Tests for camp_jax.data.synthetic."""
import json
import subprocess
import sys

import numpy as np
import pytest

from camp_jax.data import precomp
from camp_jax.data import synthetic
from camp_jax.data import tokenizer
from camp_jax.data import vocab as vocab_lib

SMALL = dict(num_train=40, num_dev=10, num_test=12, num_regions=6, feature_dim=16)


def _files(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_writes_precomp_format(tmp_path):
  synthetic.generate(tmp_path, **SMALL, seed=3)
  for split, n in (("train", 40), ("dev", 10), ("test", 12)):
    data = precomp.read_split(tmp_path, split)
    assert data.images.shape == (n, 6, 16) and data.num_captions == 5 * n
  vocab = vocab_lib.load_vocab(tmp_path / "vocab.json")
  assert 20 < len(vocab) < 150
  train = precomp.read_split(tmp_path, "train")
  assert vocab == vocab_lib.build_vocab(train.captions, threshold=1)
  for caption in train.captions:
    assert all(w in vocab for w in tokenizer.tokenize(caption)), caption


def test_deterministic_and_seeded(tmp_path):
  a, b, c = (tmp_path / n for n in "abc")
  synthetic.generate(a, **SMALL, seed=1)
  synthetic.generate(b, **SMALL, seed=1)
  synthetic.generate(c, **SMALL, seed=2)
  assert _files(a) == _files(b)
  assert _files(a)["train_ims.npy"] != _files(c)["train_ims.npy"]


def test_families_are_hard_negatives(tmp_path):
  synthetic.generate(tmp_path, **SMALL, seed=0, family_size=2)
  caps = precomp.read_split(tmp_path, "train").captions
  words = lambda i: {w for c in caps[5 * i:5 * i + 5] for w in tokenizer.tokenize(c)}
  kind = {w: k for k, names in enumerate(synthetic.OBJECTS) for w in names}
  objects = lambda i: {kind[w] for w in words(i) if w in kind}
  colours = lambda i: words(i) & set(synthetic.COLOURS)
  # Images 2j and 2j+1 name the same objects and colours, bound differently.
  for j in range(20):
    assert objects(2 * j) == objects(2 * j + 1)
    assert colours(2 * j) == colours(2 * j + 1)
    assert caps[10 * j] not in caps[10 * j + 5:10 * j + 10]


def test_ensure_synthetic_regenerates_on_change(tmp_path):
  synthetic.ensure_synthetic(tmp_path, **SMALL)
  manifest = json.loads((tmp_path / "synthetic.json").read_text())
  assert manifest["num_train"] == 40 and manifest["seed"] == 0
  stamp = (tmp_path / "train_ims.npy").stat().st_mtime_ns
  synthetic.ensure_synthetic(tmp_path, **SMALL)
  assert (tmp_path / "train_ims.npy").stat().st_mtime_ns == stamp
  synthetic.ensure_synthetic(tmp_path, **dict(SMALL, num_train=20))
  assert precomp.read_split(tmp_path, "train").num_images == 20
  with pytest.raises(TypeError, match="unknown synthetic settings"):
    synthetic.ensure_synthetic(tmp_path, num_trian=3)


def test_features_carry_attributes(tmp_path):
  # The fixed feature map must not depend on the data seed.
  assert np.array_equal(synthetic._feature_map(8)(np.eye(synthetic._CODE_DIM, dtype=np.float32)),
                        synthetic._feature_map(8)(np.eye(synthetic._CODE_DIM, dtype=np.float32)))
  synthetic.generate(tmp_path, **dict(SMALL, num_train=200), seed=0)
  feats = precomp.read_split(tmp_path, "train").images
  assert np.isfinite(feats).all() and 0.5 < feats.std() < 2


def test_light_modules_do_not_import_tensorflow():
  code = ("import sys; import camp_jax.data, camp_jax.data.tokenizer, camp_jax.data.vocab, "
          "camp_jax.data.precomp, camp_jax.data.synthetic, camp_jax.data.pipeline; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
