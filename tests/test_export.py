"""Export: bundles from runs and bundles, jax.export artifacts run in a fresh process."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from camp_jax import bundle, export, inference, models
from camp_jax.data.vocab import Vocabulary

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
  assert export.main(["--bundle", str(root / "in"), "--out", str(root / "out"),
                      "--stablehlo"]) == 0
  return root / "out"


# Imports jax and numpy only; two calls with different sizes check the symbolic shapes.
_FRESH = textwrap.dedent("""
    import sys, jax, numpy as np
    bundle, inputs, out = sys.argv[1:4]
    params = dict(np.load(f"{bundle}/params.npz"))
    def load(name):
      with open(f"{bundle}/stablehlo/{name}.bin", "rb") as f:
        return jax.export.deserialize(f.read())
    enc_img, enc_cap, score = (load(n) for n in ("encode_images", "encode_captions",
                                                  "score_matrix"))
    z = np.load(inputs)
    results = {}
    for case in ("a", "b"):
      img = enc_img.call(params, z[case + "_images"])
      cap, mask = enc_cap.call(params, z[case + "_tokens"], z[case + "_lengths"])
      results[case] = np.asarray(score.call(params, img, cap, mask))
    img_vec, cap_vec = load("shortlist_embeddings").call(params, img, cap, mask)
    results["vec"] = np.asarray(img_vec @ cap_vec.T)
    assert not any(m.startswith("camp_jax") for m in sys.modules), "camp_jax was imported"
    np.savez(out, **results)
""")


def test_stablehlo_artifacts_in_fresh_process_match_bundle(exported, tmp_path):
  cases = {"a": _inputs(3, 5, 6, 1), "b": _inputs(2, 7, 4, 2)}
  np.savez(tmp_path / "inputs.npz", **{f"{c}_{k}": v for c, arrays in cases.items()
                                      for k, v in zip(("images", "tokens", "lengths"), arrays)})
  run = subprocess.run([sys.executable, "-c", _FRESH, str(exported), str(tmp_path / "inputs.npz"),
                        str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  fresh = np.load(tmp_path / "out.npz")
  predictor = inference.load(exported)
  for case, (images, tokens, lengths) in cases.items():
    img_emb = predictor.encode_images(images)
    cap_emb, cap_mask = predictor.encode_captions(tokens, lengths)
    expected = predictor.score_matrix(img_emb, cap_emb, cap_mask)
    assert fresh[case].shape == (len(images), len(tokens))
    np.testing.assert_allclose(fresh[case], expected, atol=1e-5)
  assert fresh["vec"].shape == (2, 7)
  signatures = json.loads((exported / "stablehlo" / "signatures.json").read_text())
  assert signatures["functions"]["score_matrix"]["outputs"][0]["shape"] == "(N, M)"
  assert (exported / "stablehlo" / "README.md").is_file()


def test_export_run_writes_a_loadable_bundle(monkeypatch, exported, tmp_path):
  from camp_jax import checkpoints  # pylint: disable=g-import-not-at-top
  config, params, vocab, _ = bundle.load(exported)
  vocab.save_json(tmp_path / "vocab.json")
  calls = []

  def fake_load_trained(workdir, which="best"):
    calls.append((str(workdir), which))
    return config, params, str(tmp_path / "vocab.json")

  monkeypatch.setattr(checkpoints, "load_trained", fake_load_trained)
  out = tmp_path / "bundle"
  assert export.main(["--workdir", "RUN", "--out", str(out), "--checkpoint", "12"]) == 0
  assert calls == [("RUN", 12)]
  predictor = inference.load(out)
  assert predictor.vocab == vocab and predictor.model_config == config
  assert not (out / "stablehlo").exists()
  # An existing bundle is not replaced without --overwrite.
  assert export.main(["--workdir", "RUN", "--out", str(out)]) == 1


def test_newer_format_version_is_refused_by_name(exported, tmp_path, capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  newer = tmp_path / "newer"
  shutil.copytree(exported, newer)
  meta = json.loads((newer / "model.json").read_text())
  meta["format_version"] = bundle.FORMAT_VERSION + 1
  (newer / "model.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r"model\.json: format_version 2 is not supported"):
    inference.load(newer)
  assert export.main(["--bundle", str(newer), "--stablehlo"]) == 1
  assert "format_version 2" in capsys.readouterr().err


def test_stage1_model_exports_with_padded_caption_constraint():
  config = dict(CONFIG, vocab_size=20, variant="cross_attention", pad_words_to=9)
  config.pop("pool_heads")
  _, described = export.export_functions(config, _params(config))
  assert described["encode_captions"]["constraints"] == ["T >= 9"]
  assert described["score_matrix"]["outputs"][0]["shape"] == "(N, M)"
