"""Tests for camp_jax.data.synthetic."""
import json
import os
import pathlib
import sys

import ml_collections
import numpy as np
import pytest

from camp_jax import data
from camp_jax.data import precomp
from camp_jax.data import synthetic
from camp_jax.data import tokenizer
from camp_jax.data import vocab as vocab_lib
from tests import helpers

SMALL = dict(num_train=40, num_dev=10, num_test=12, num_regions=8, feature_dim=16)


def _files(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_writes_precomp_format(tmp_path):
  synthetic.generate(tmp_path, **SMALL, seed=3)
  for split, n in (("train", 40), ("dev", 10), ("test", 12)):
    data = precomp.read_split(tmp_path, split)
    assert data.images.shape == (n, 8, 16) and data.num_captions == 5 * n
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
  # The feature map is fixed: another data seed draws regions of each role from the same map,
  # so their mean features agree (a map drawn per seed gives a correlation near 0).
  means = []
  for seed in (0, 1):
    synthetic.generate(tmp_path / str(seed), **dict(SMALL, num_train=200), seed=seed)
    feats = precomp.read_split(tmp_path / str(seed), "train").images
    assert np.isfinite(feats).all() and 0.5 < feats.std() < 2
    roles, _ = synthetic.read_roles(tmp_path / str(seed), "train")
    means.append([feats[roles == synthetic.REGION_ROLES.index(r)].mean(0)
                  for r in ("object", "background", "clutter")])
  assert np.corrcoef(np.ravel(means[0]), np.ravel(means[1]))[0, 1] > 0.95


TINY = dict(num_train=24, num_dev=6, num_test=8, num_regions=12, feature_dim=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("tiny"), **TINY, seed=4)


def _roles(name):
  return synthetic.REGION_ROLES.index(name)


def test_default_level_is_the_documented_one():
  assert synthetic.DEFAULTS["num_regions"] == 12
  assert synthetic.DEFAULTS["clutter_regions"] == 4
  assert synthetic.DEFAULTS["filler_phrases"] == 1
  assert "exactly 4 are CLUTTER" in synthetic.__doc__
  assert all(2 <= len(p.split()) <= 4 for p in synthetic.FILLERS)


@pytest.mark.parametrize("split,n", [("train", 24), ("dev", 6), ("test", 8)])
def test_relevance_shapes_match_the_split(tiny, split, n):
  region, word = synthetic.read_relevance(tiny, split)
  data = precomp.read_split(tiny, split)
  assert region.shape == data.images.shape[:2] == (n, 12) and region.dtype == bool
  assert word.shape == (data.num_captions, tokenizer.MAX_WORDS + 2) and word.dtype == bool
  assert [r.shape for r in synthetic.read_roles(tiny, split)] == [region.shape, word.shape]


def test_clutter_is_never_relevant_and_named_objects_are(tiny):
  region, _ = synthetic.read_relevance(tiny, "train")
  roles, _ = synthetic.read_roles(tiny, "train")
  caps = precomp.read_split(tiny, "train").captions
  kind = {w: k for k, names in enumerate(synthetic.OBJECTS) for w in names}
  clutter = roles == _roles("clutter")
  assert (clutter.sum(1) == 4).all()  # The setting, in every image.
  assert not region[clutter].any() and not region[roles == _roles("leftover")].any()
  assert region[roles == _roles("object")].all() and region[roles == _roles("second_view")].all()
  for i in range(24):  # One relevant first view per object kind the captions name.
    named = {kind[w] for c in caps[5 * i:5 * i + 5] for w in tokenizer.tokenize(c) if w in kind}
    assert (region[i] & (roles[i] == _roles("object"))).sum() == len(named) in (2, 3)
    assert (roles[i] == _roles("background")).sum() == 2


def test_word_relevance_aligns_with_tokens(tiny):
  _, word = synthetic.read_relevance(tiny, "train")
  _, roles = synthetic.read_roles(tiny, "train")
  split = precomp.read_split(tiny, "train")
  vocab = vocab_lib.load_vocab(tiny + "/vocab.json")
  tokens, lengths = tokenizer.encode_all(split.captions, vocab)
  assert tokens.shape == word.shape and (tokens[:, 0] == tokenizer.START).all()
  filler = roles == synthetic.WORD_ROLES.index("filler")
  assert not word[filler].any()
  # Words naming an attribute of a region; places only as "the left" ("from left to right"
  # names none), the background by its noun.
  named = {*synthetic.COLOURS, *(w for group in synthetic.OBJECTS + synthetic.SIZES
                                 + synthetic.MATERIALS for w in group),
           *(b.split()[-1] for b in synthetic.BACKGROUNDS)}
  for c, caption in enumerate(split.captions):
    words = tokenizer.tokenize(caption)
    assert 1 + len(words) + 1 == lengths[c] <= 32
    expect = [False] + [w in named or (w in synthetic.SLOTS and words[t - 1] == "the")
                        for t, w in enumerate(words)]
    np.testing.assert_array_equal(word[c], np.pad(expect, (0, word.shape[1] - len(expect))),
                                  err_msg=caption)
    phrase = " ".join(words[t - 1] for t in np.flatnonzero(filler[c]))
    assert phrase in synthetic.FILLERS, caption  # One filler phrase per caption.


def test_relevance_is_deterministic_and_manifested(tmp_path, tiny):
  synthetic.generate(tmp_path, **TINY, seed=4)
  assert _files(tmp_path) == _files(pathlib.Path(tiny))
  manifest = json.loads((tmp_path / "synthetic.json").read_text())
  assert manifest["version"] == 2 and manifest["clutter_regions"] == 4
  assert manifest["files"]["word_relevance"] == "{split}_word_relevance.npy"


def test_levels_are_settable_and_checked(tmp_path):
  synthetic.generate(tmp_path, **dict(TINY, num_regions=7), clutter_regions=2,
                     filler_phrases=0, seed=1)
  roles, words = synthetic.read_roles(tmp_path, "dev")
  assert ((roles == _roles("clutter")).sum(1) == 2).all()
  assert not (words == synthetic.WORD_ROLES.index("filler")).any()
  with pytest.raises(ValueError, match=r"num_regions=6 cannot hold 3 objects and "
                     r"clutter_regions=4"):
    synthetic.generate(tmp_path / "x", **dict(TINY, num_regions=6))


def test_load_relevance_from_the_config(tmp_path):
  sizes = dict(TINY, num_train=10, num_dev=2, num_test=2)
  config = ml_collections.ConfigDict(dict(kind="synthetic", dir=str(tmp_path / "s"), vocab="",
                                          synthetic=sizes))
  region, word = data.load_relevance(config, "dev")
  assert region.shape == (2, 12) and word.shape == (10, tokenizer.MAX_WORDS + 2)
  (tmp_path / "s" / "dev_word_relevance.npy").unlink()
  config.kind = "precomp"
  with pytest.raises(FileNotFoundError, match=r"dev_word_relevance.npy: no word relevance"):
    data.load_relevance(config, "dev")


def test_light_modules_do_not_import_tensorflow(tmp_path):
  code = ("import sys; import camp_jax.data, camp_jax.data.tokenizer, camp_jax.data.vocab, "
          "camp_jax.data.precomp, camp_jax.data.synthetic, camp_jax.data.pipeline; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  helpers.run([sys.executable, "-c", code], tmp_path / "logs" / "imports", env=dict(os.environ))
