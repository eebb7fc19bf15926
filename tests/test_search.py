"""Search: caching, shortlist + rerank against exhaustive scoring, refusals of bad input."""
import os

import jax
import numpy as np
import pytest

from camp_jax import bundle, cli, gallery as gallery_lib, inference, models, search
from camp_jax.search import __main__ as search_cli
from camp_jax.evaluate import shortlist
from camp_jax.data import synthetic, tokenizer, vocab as vocab_lib

NUM_IMAGES = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("search")
  gallery = synthetic.generate(root / "gallery", num_train=20, num_dev=2, num_test=NUM_IMAGES,
                               num_regions=4, feature_dim=10,
                               clutter_regions=1)
  vocab = vocab_lib.load_vocab(root / "gallery" / "vocab.json")
  config = dict(name="camp", vocab_size=len(vocab), word_dim=6, embed_dim=8, img_dim=10,
                pool_heads=2)
  model = models.build(config)
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 3, 10), np.float32),
                               np.zeros((1, 4), np.int32), np.ones((1,), np.int32))["params"]
  path = bundle.save(root / "bundle", params, config, vocab)
  return path, gallery, inference.load(path)


def _gallery(setup, tmp_path):
  _, data_dir, predictor = setup
  return gallery_lib.Gallery(predictor, data_dir, "test", cache_dir=tmp_path / "cache",
                             log=lambda s: None)


def test_rerank_of_everything_is_exhaustive_ranking(setup, tmp_path):
  _, _, predictor = setup
  gallery = _gallery(setup, tmp_path)
  img, cap = gallery.images(), gallery.captions()
  full = predictor.score_matrix(img["emb"], cap["emb"], cap["mask"])
  # Text -> image with every image shortlisted equals sorting the exact scores.
  query = gallery.split.captions[3]
  hits = search.text_to_image(predictor, gallery, query, top=5, shortlist=NUM_IMAGES)
  np.testing.assert_allclose(hits.scores, np.sort(full[:, 3])[::-1][:5], atol=1e-5)
  # The vocabulary is the training captions': test words it lacks are named, in order.
  assert hits.unknown_words == [w for w in tokenizer.tokenize(query)
                                if w not in predictor.vocab]
  # Image -> text likewise; with a short shortlist the tail keeps the stage-1 order.
  hits = search.image_to_text(predictor, gallery, 2, top=6, shortlist=full.shape[1])
  np.testing.assert_allclose(hits.scores, np.sort(full[2])[::-1][:6], atol=1e-5)
  hits = search.image_to_text(predictor, gallery, 2, top=6, shortlist=2)
  assert np.isfinite(hits.scores[:2]).all() and np.isnan(hits.scores[2:]).all()
  assert np.all(np.diff(hits.shortlist_scores[2:]) <= 0)


def test_gallery_is_encoded_once_and_cached(setup, tmp_path):
  first = _gallery(setup, tmp_path)
  vec = first.images()["vec"]
  first.captions()
  assert first.encoded == ["images", "captions"]
  second = _gallery(setup, tmp_path)
  np.testing.assert_array_equal(second.images()["vec"], vec)
  second.captions()
  assert second.encoded == []
  # A changed feature file (new mtime) invalidates the images cache.
  ims = second.ims_path
  os.utime(ims, ns=(ims.stat().st_atime_ns, ims.stat().st_mtime_ns + 10**9))
  third = _gallery(setup, tmp_path)
  third.images()
  assert third.encoded == ["images"]


def test_unknown_words_are_reported(setup, capsys):
  path, data_dir, _ = setup
  assert cli.call(search_cli.main, [f"--bundle={path}", f"--data_dir={data_dir}",
                                "--query=a red zebra next to a xylophone", "--top=3"]) == 0
  out = capsys.readouterr()
  warning = [l for l in out.err.splitlines() if "unknown words mapped to <unk>" in l]
  assert len(warning) == 1 and "zebra" in warning[0] and "xylophone" in warning[0]
  assert "red" not in warning[0]
  assert search.encode_query(setup[2], "a red zebra")[3] == ["zebra"]
  assert len([l for l in out.out.splitlines() if l.strip().startswith(("1 ", "2 ", "3 "))]) == 3


def test_empty_query_is_refused(setup, capsys):
  path, data_dir, predictor = setup
  assert cli.call(search_cli.main, [f"--bundle={path}", f"--data_dir={data_dir}",
                                "--query=  "]) == 1
  assert "error: empty query" in capsys.readouterr().err
  with pytest.raises(ValueError, match="empty query"):
    search.encode_query(predictor, "")


def test_feature_size_mismatch_is_refused_before_any_work(setup, tmp_path, monkeypatch):
  path, _, predictor = setup
  np.save(tmp_path / "test_ims.npy", np.zeros((2, 4, 7), np.float32))
  (tmp_path / "test_caps.txt").write_text("a cube.\n" * 10)
  monkeypatch.setattr(predictor, "encode_images", lambda *a: pytest.fail("encoded anyway"))
  with pytest.raises(ValueError, match=r"test_ims\.npy: region features have shape "
                                       r"\(2, 4, 7\).*img_dim=10"):
    gallery_lib.Gallery(predictor, tmp_path, "test")
  assert cli.call(search_cli.main, [f"--bundle={path}", f"--data_dir={tmp_path}", "--image=0"]) == 1
  assert not (tmp_path / gallery_lib.CACHE_DIR).exists()


def test_shortlist_rerank_recall_table(setup, tmp_path, capsys):
  path, data_dir, predictor = setup
  gallery = _gallery(setup, tmp_path)
  m = gallery.split.num_captions
  rows = shortlist.shortlist_rerank_recall(predictor, gallery.encoded_sides(), ks=(1, m))
  exhaustive, stage1, k1, everything = rows
  assert exhaustive["k"] is None and stage1["k"] == 0 and k1["k"] == 1
  assert k1["i2t_pairs"] == pytest.approx(1 / m)
  assert k1["t2i_pairs"] == pytest.approx(1 / NUM_IMAGES)
  # Shortlisting everything reproduces the exhaustive recalls exactly.
  for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
    assert everything[key] == pytest.approx(exhaustive[key])
  # With K = 1 the top-1 is the stage-1 top-1, so R@1 equals the stage-1 R@1.
  assert k1["i2t_r1"] == pytest.approx(stage1["i2t_r1"])
  assert k1["t2i_r1"] == pytest.approx(stage1["t2i_r1"])
  assert "exhaustive" in shortlist.format_recall_table(rows)
  assert cli.call(search_cli.main, [f"--bundle={path}", f"--data_dir={data_dir}",
                                "--evaluate_shortlist", "--ks=1",
                                f"--cache_dir={tmp_path / 'cache'}"]) == 0
  assert "shortlist" in capsys.readouterr().out
