"""Export: bundles from runs and bundles, jax.export artifacts run in a fresh process."""
import json
import os
import sys

import jax
import numpy as np
import pytest

from camp_jax import bundle, checkpoints, cli, evaluate, export, inference, models
from camp_jax.export import __main__ as export_cli
from camp_jax.data import precomp, tokenizer
from camp_jax.data.vocab import Vocabulary
from tests import helpers

WORDS = "a man riding horse dog red blue cube on the left".split()
CONFIG = dict(name="camp", word_dim=6, embed_dim=8, img_dim=10, pool_heads=2)


def _params(config):
  model = models.build(config)
  return jax.jit(model.init)(jax.random.key(0), np.zeros((1, 3, config["img_dim"]), np.float32),
                             np.zeros((1, 4), np.int32), np.ones((1,), np.int32))["params"]


def _inputs(n, m, t, seed):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n, 4, CONFIG["img_dim"])).astype(np.float32)
  lengths = rng.integers(2, t + 1, size=m).astype(np.int32)
  tokens = rng.integers(4, len(WORDS) + 4, size=(m, t)).astype(np.int32)
  tokens[np.arange(t)[None] >= lengths[:, None]] = 0
  return images, tokens, lengths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  vocab = Vocabulary(WORDS)
  config = dict(CONFIG, vocab_size=len(vocab))
  bundle.save(root / "in", _params(config), config, vocab)
  assert cli.call(export_cli.main, [f"--bundle={root / 'in'}", f"--out={root / 'out'}",
                                "--stablehlo"]) == 0
  return root / "out"


def _run_fresh(bundle_dir, cases: dict, tmp_path) -> dict:
  """Runs `tests/run_stablehlo.py` (jax and numpy only) on {case: (images, tokens, lengths)}."""
  np.savez(tmp_path / "inputs.npz", **{f"{c}_{k}": v for c, arrays in cases.items()
                                      for k, v in zip(("images", "tokens", "lengths"), arrays)})
  helpers.run([sys.executable, str(helpers.REPO / "tests" / "run_stablehlo.py"), str(bundle_dir),
               str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
              tmp_path / "logs" / "run_stablehlo", timeout=300, cwd=tmp_path,
              env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return dict(np.load(tmp_path / "out.npz"))


def test_stablehlo_artifacts_in_fresh_process_match_bundle(exported, tmp_path):
  cases = {"a": _inputs(3, 5, 6, 1), "b": _inputs(2, 7, 4, 2)}
  fresh = _run_fresh(exported, cases, tmp_path)
  predictor = inference.load(exported)
  for case, (images, tokens, lengths) in cases.items():
    img_emb = predictor.encode_images(images)
    cap_emb, cap_mask = predictor.encode_captions(tokens, lengths)
    expected = predictor.score_matrix(img_emb, cap_emb, cap_mask)
    assert fresh[case].shape == (len(images), len(tokens))
    np.testing.assert_allclose(fresh[case], expected, atol=1e-5)
  assert fresh["b_vec"].shape == (2, 7)
  signatures = json.loads((exported / "stablehlo" / "signatures.json").read_text())
  assert signatures["functions"]["score_matrix"]["outputs"][0]["shape"] == "(N, M)"
  assert (exported / "stablehlo" / "README.md").is_file()


def test_trained_tiny_run_exports_and_reloads_with_the_same_scores(tiny_run, tiny_data_dir,
                                                                  tmp_path):
  workdir, _ = tiny_run
  out = tmp_path / "bundle"
  helpers.run([sys.executable, "-m", "camp_jax.export", f"--workdir={workdir}", f"--out={out}",
               "--stablehlo"], tmp_path / "logs" / "export", timeout=300)

  predictor = inference.load(out)
  split = precomp.read_split(tiny_data_dir, "test")
  tokens, lengths = tokenizer.encode_all(split.captions, predictor.vocab)
  img_emb = predictor.encode_images(split.images)
  cap_emb, cap_mask = predictor.encode_captions(tokens, lengths)
  scores = predictor.score_matrix(img_emb, cap_emb, cap_mask)
  assert scores.shape == (40, 200) and np.ptp(scores) > 1e-3

  # The bundle holds the run's best checkpoint: its scores, and the run's test recalls.
  trained = inference.Predictor(*checkpoints.load_trained(workdir, "best")[:2])
  np.testing.assert_array_equal(
      trained.score_matrix(trained.encode_images(split.images),
                           *trained.encode_captions(tokens, lengths)), scores)
  recorded = json.loads((workdir / "eval" / "test.json").read_text())
  recomputed = evaluate.recall_metrics(scores)
  for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum"):
    assert recomputed[key] == pytest.approx(recorded[key], abs=1e-6), key

  # The jax.export artifacts, in a process that imports only jax and numpy: the whole test
  # split, and a slice of other sizes.
  fresh = _run_fresh(out, {"all": (split.images, tokens, lengths),
                           "part": (split.images[:7], tokens[3:16], lengths[3:16])}, tmp_path)
  np.testing.assert_allclose(fresh["all"], scores, atol=1e-5)
  np.testing.assert_allclose(fresh["part"], scores[:7, 3:16], atol=1e-5)
  assert fresh["all_vec"].shape == (40, 200)


def test_export_run_writes_a_loadable_bundle(monkeypatch, exported, tmp_path):
  config, params, vocab, _ = bundle.load(exported)
  vocab.save_json(tmp_path / "vocab.json")
  calls = []

  def fake_load_trained(workdir, which="best"):
    calls.append((str(workdir), which))
    return config, params, str(tmp_path / "vocab.json")

  monkeypatch.setattr(checkpoints, "load_trained", fake_load_trained)
  out = tmp_path / "bundle"
  assert cli.call(export_cli.main, ["--workdir=RUN", f"--out={out}", "--checkpoint=12"]) == 0
  assert calls == [("RUN", 12)]
  predictor = inference.load(out)
  assert predictor.vocab == vocab and predictor.model_config == config
  assert not (out / "stablehlo").exists()
  # An existing bundle is not replaced without --overwrite.
  assert cli.call(export_cli.main, ["--workdir=RUN", f"--out={out}"]) == 1


def test_newer_format_version_is_refused_by_name(exported, tmp_path, capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  newer = tmp_path / "newer"
  shutil.copytree(exported, newer)
  meta = json.loads((newer / "model.json").read_text())
  meta["format_version"] = bundle.FORMAT_VERSION + 1
  (newer / "model.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r"model\.json: format_version 2 is not supported"):
    inference.load(newer)
  assert cli.call(export_cli.main, [f"--bundle={newer}", "--stablehlo"]) == 1
  assert "format_version 2" in capsys.readouterr().err


def test_stage1_model_exports_with_padded_caption_constraint():
  config = dict(CONFIG, vocab_size=20, variant="cross_attention", pad_words_to=9)
  config.pop("pool_heads")
  _, described = export.export_functions(config, _params(config))
  assert described["encode_captions"]["constraints"] == ["T >= 9"]
  assert described["score_matrix"]["outputs"][0]["shape"] == "(N, M)"


def test_urls_are_refused_instead_of_written_to_a_local_folder(exported, tmp_path, capsys,
                                                               monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.call(export_cli.main, [f"--bundle={exported}", "--out=gs://bucket/bundle"]) == 1
  assert "--out=gs://bucket/bundle: URLs are not supported" in capsys.readouterr().err
  with pytest.raises(ValueError, match="bundle folder=gs://bucket/bundle: URLs are not"):
    bundle.save("gs://bucket/bundle", {}, {})
  proc = helpers.run([sys.executable, "-m", "camp_jax.main", "--config=configs/default.py:tiny",
                      "--workdir=gs://bucket/run"], tmp_path / "logs" / "main", timeout=120,
                     check=False)
  assert proc.returncode != 0 and "--workdir=gs://bucket/run: URLs are not supported" in \
      proc.stderr, proc.failure("main with a gs:// workdir: expected a refusal naming the URL")
  assert not list(tmp_path.glob("gs:*")) and not list(helpers.REPO.glob("gs:*"))


def test_score_matrix_artifact_is_the_fast_path(exported):
  """Equal to the inference API, and about as many FLOPs as the hoisted exact path.

  XLA's cost analysis counts a loop body once, so the sizes make every loop of the artifact
  run once: one group of images, one block of captions of the full bucket width (50 word
  slots), nothing left over.
  """
  model_config, params, _, _ = bundle.load(exported)
  block = 6
  exp, _ = export.export_functions(model_config, params, caption_block=block)
  rng = np.random.default_rng(3)
  images = rng.normal(size=(export.IMAGE_GROUP, 4, CONFIG["img_dim"])).astype(np.float32)
  tokens = rng.integers(4, len(WORDS) + 4, size=(block, 50)).astype(np.int32)
  predictor = inference.load(exported)
  img_emb = predictor.encode_images(images)
  cap_emb, cap_mask = predictor.encode_captions(tokens, np.full(block, 50, np.int32))
  flat = bundle.flatten_params(params)
  call = jax.jit(exp["score_matrix"].call)
  np.testing.assert_allclose(call(flat, img_emb, cap_emb, cap_mask),
                             predictor.score_matrix(img_emb, cap_emb, cap_mask), atol=1e-5)
  model = models.build(model_config)
  fast = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method="fast_score_matrix"))
  flops = lambda fn, *args: fn.lower(*args).compile().cost_analysis()["flops"]
  artifact = flops(call, flat, img_emb, cap_emb, cap_mask)
  expected = flops(fast, params, img_emb, cap_emb, cap_mask)
  assert abs(artifact / expected - 1) < 0.2, (artifact, expected)
