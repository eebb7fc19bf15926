"""Attention pictures: the explanation's numbers and a PNG with real content."""
import jax
import numpy as np
import pytest

from camp_jax import bundle, cli, inference, models, visualize
from camp_jax.visualize import __main__ as visualize_cli
from camp_jax.data.vocab import Vocabulary

pytest.importorskip("matplotlib")

WORDS = "a red cube on the left and blue ball right .".split()
NUM_REGIONS = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("visualize")
  vocab = Vocabulary(WORDS)
  config = dict(name="camp", vocab_size=len(vocab), word_dim=6, embed_dim=8, img_dim=10,
                pool_heads=2)
  model = models.build(config)
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 3, 10), np.float32),
                               np.zeros((1, 4), np.int32), np.ones((1,), np.int32))["params"]
  # Larger weights than the initialisation, so that attention is not flat.
  params = jax.tree.map(lambda x: np.asarray(x) * 3.0, params)
  path = bundle.save(root / "bundle", params, config, vocab)
  rng = np.random.default_rng(0)
  np.save(root / "test_ims.npy", rng.normal(size=(2, NUM_REGIONS, 10)).astype(np.float32))
  captions = ["A red cube on the left and a blue ball on the right."] * 5 + ["A zebra."] * 5
  (root / "test_caps.txt").write_text("\n".join(captions) + "\n")
  return path, root


def test_explanation_maps_gates_and_words(setup):
  path, root = setup
  predictor = inference.load(path)
  features = np.load(root / "test_ims.npy")[0]
  out = visualize.explain(predictor, features, "A red zebra on the left.")
  assert out["words"] == ["<start>", "a", "red", "zebra?", "on", "the", "left", ".", "<end>"]
  n = len(out["words"])
  assert out["word_attends_regions"].shape == (n, NUM_REGIONS)
  assert out["region_attends_words"].shape == (NUM_REGIONS, n)
  np.testing.assert_allclose(out["word_attends_regions"].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out["region_attends_words"].sum(-1), 1.0, atol=1e-5)
  assert out["region_gate"].shape == (NUM_REGIONS,) and out["word_gate"].shape == (n,)
  assert 0.0 < float(out["score"]) < 1.0
  # The explained score is the model's score of the pair.
  ids, _ = visualize.caption_words("A red zebra on the left.", predictor.vocab)
  cap, mask = predictor.encode_captions(ids[None], np.array([len(ids)], np.int32))
  img = predictor.encode_images(features[None])
  np.testing.assert_allclose(predictor.score_matrix(img, cap, mask)[0, 0], out["score"],
                             atol=1e-5)


def test_png_has_size_and_content(setup, tmp_path, capsys):
  from matplotlib import image as mpimg  # pylint: disable=g-import-not-at-top
  path, root = setup
  out = tmp_path / "pair.png"
  assert cli.call(visualize_cli.main, [f"--bundle={path}", f"--data_dir={root}", "--image=0",
                                   "--caption=7", f"--out={out}"]) == 0
  assert "unknown words mapped to <unk>: zebra" in capsys.readouterr().err
  picture = mpimg.imread(out)
  height, width, _ = picture.shape
  assert height > 400 and width > 600
  rgb = picture[..., :3]
  assert rgb.std() > 0.05
  colours = np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
  assert len(colours) > 100
  # Not mostly empty: a good share of the pixels are not white.
  assert np.mean(rgb.min(axis=-1) < 0.9) > 0.15


def test_bad_indices_are_refused(setup, tmp_path, capsys):
  path, root = setup
  assert cli.call(visualize_cli.main, [f"--bundle={path}", f"--data_dir={root}", "--image=5",
                                   "--caption=0", f"--out={tmp_path / 'x.png'}"]) == 1
  assert "--image=5 is outside [0, 2)" in capsys.readouterr().err
  assert not (tmp_path / "x.png").exists()


def test_stage1_explanation_draws_without_gates():
  rng = np.random.default_rng(0)
  words = ["<start>", "a", "cube", "<end>"]
  w2r = rng.dirichlet(np.ones(3), size=4)
  r2w = rng.dirichlet(np.ones(4), size=3)
  fig = visualize.draw({"words": words, "word_attends_regions": w2r,
                        "region_attends_words": r2w, "score": np.float32(0.3)}, "a cube")
  assert len(fig.axes) == 4  # Two heatmaps and their colour bars.
