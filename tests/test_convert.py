"""The converter: any size of checkpoint round-trips; bad checkpoints are refused by name.

Checkpoints are written in the torch layout from freshly initialised flax parameters, by
torch's own rule (a layer's `weight*` is (out, in), embeddings and biases as they are), not by
the converter's table, so the round trip checks the converter's transposes too.
"""
import importlib.util

import jax
import numpy as np
import pytest

from camp_jax import bundle, convert, inference, models
from camp_jax.data.vocab import Vocabulary

SIZES = dict(vocab_size=15, word_dim=6, embed_dim=8, img_dim=10)


def _params(config):
  model = models.build(config)
  return jax.jit(model.init)(jax.random.key(3), np.zeros((1, 3, config["img_dim"]), np.float32),
                             np.zeros((1, 4), np.int32), np.ones((1,), np.int32))["params"]


def _torch_state(config) -> tuple[dict, dict]:
  """(flax params, the same arrays under torch names and layouts)."""
  params = _params(config)
  flat = bundle.flatten_params(params)
  state = {}
  for name, (target, _) in convert.TORCH_NAMES.items():
    value = flat.get("/".join(target))
    if value is not None:
      transpose = name.rsplit(".", 1)[1].startswith("weight") and "embed" not in name
      state[name] = value.T if transpose else value
  assert len(state) == len(flat)
  d = config["embed_dim"]
  assert state["img_enc.fc.weight"].shape == (d, config["img_dim"])
  assert state["txt_enc.rnn.weight_ih_l0_reverse"].shape == (3 * d, config["word_dim"])
  assert state["txt_enc.rnn.weight_hh_l0"].shape == (3 * d, d)
  return params, state


def _inputs(config):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 5, config["img_dim"])).astype(np.float32)
  lengths = np.array([4, 2, 6, 1], np.int32)
  tokens = rng.integers(1, config["vocab_size"], size=(4, 6)).astype(np.int32)
  return images, tokens, lengths


@pytest.mark.parametrize("config,prefix", [
    (dict(SIZES, name="camp", variant="gate_fusion", pool_heads=3), "param/"),
    (dict(SIZES, name="camp", variant="cross_attention", pad_words_to=50), ""),
], ids=["gate_fusion", "cross_attention"])
def test_other_sizes_round_trip_through_a_torch_layout_npz(config, prefix, tmp_path):
  params, state = _torch_state(config)
  np.savez(tmp_path / "ckpt.npz", **{prefix + k: v for k, v in state.items()},
           **{"input/images": np.zeros(3)})  # Non-parameter arrays are ignored.
  vocab = Vocabulary([f"w{i}" for i in range(SIZES["vocab_size"] - 4)])
  vocab.save_json(tmp_path / "vocab.json")
  assert convert.main(["--from-torch", str(tmp_path / "ckpt.npz"), "--out",
                       str(tmp_path / "bundle"), "--vocab", str(tmp_path / "vocab.json")]) == 0
  predictor = inference.load(tmp_path / "bundle")
  assert predictor.model_config == config and predictor.vocab == vocab
  jax.tree.map(np.testing.assert_array_equal, predictor.params, jax.device_get(params))

  images, tokens, lengths = _inputs(config)
  expected = models.build(config).apply({"params": params}, images, tokens, lengths)
  img_emb = predictor.encode_images(images)
  scores = predictor.score_matrix(img_emb, *predictor.encode_captions(tokens, lengths))
  np.testing.assert_allclose(scores, expected, atol=1e-6)


def _convert_error(tmp_path, state_or_file, capsys, *flags, names=None) -> str:
  """Converts and expects a refusal that names `names` (the checkpoint) and writes nothing."""
  path = state_or_file
  if isinstance(state_or_file, dict):
    path = tmp_path / "ckpt.npz"
    np.savez(path, **state_or_file)
  out = tmp_path / "bundle"
  assert convert.main(["--from-torch", str(path), "--out", str(out), *flags]) == 1
  assert not out.exists(), "a failed conversion left files at --out"
  assert not list(tmp_path.glob(".bundle*")), "a failed conversion left a temporary folder"
  err = capsys.readouterr().err
  assert err.startswith(f"error: {names or path}: "), err
  return err


GATE = dict(SIZES, name="camp", variant="gate_fusion", pool_heads=2)


def test_unknown_and_missing_parameters_are_named(tmp_path, capsys):
  _, state = _torch_state(GATE)
  err = _convert_error(tmp_path, {**state, "sim.extra_layer.weight": np.zeros(2)}, capsys)
  assert "unknown parameters ['sim.extra_layer.weight']" in err
  del state["sim.fc_2.0.weight"]
  assert "missing parameters ['sim.fc_2.0.weight']" in _convert_error(tmp_path, state, capsys)
  _, state = _torch_state(GATE)
  del state["img_enc.fc.weight"]
  assert "missing parameter 'img_enc.fc.weight'" in _convert_error(tmp_path, state, capsys)


def test_shape_mismatch_names_the_parameter_and_the_expected_shape(tmp_path, capsys):
  _, state = _torch_state(GATE)
  state["sim.fc_1.0.weight"] = state["sim.fc_1.0.weight"][:, :-1]
  err = _convert_error(tmp_path, state, capsys)
  assert "'sim.fc_1.0.weight' has shape" in err and "expected" in err and "d=8" in err


def test_files_that_are_not_checkpoints_are_refused(tmp_path, capsys):
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"definitely not a zip archive")
  assert "not a readable .npz checkpoint" in _convert_error(tmp_path, junk, capsys)
  err = _convert_error(tmp_path, {"weights": np.zeros(3)}, capsys)
  assert "no parameter arrays" in err
  assert "no such checkpoint file" in _convert_error(tmp_path, tmp_path / "absent.npz", capsys)


def test_pth_tar_without_torch_says_how_to_get_it(tmp_path, capsys):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed")
  checkpoint = tmp_path / "model_best.pth.tar"
  checkpoint.write_bytes(b"\0" * 16)
  assert "needs torch" in _convert_error(tmp_path, checkpoint, capsys)


def test_vocabulary_of_the_wrong_size_and_existing_out_are_refused(tmp_path, capsys):
  _, state = _torch_state(GATE)
  Vocabulary(["a", "b"]).save_json(tmp_path / "small.json")
  err = _convert_error(tmp_path, state, capsys, "--vocab", str(tmp_path / "small.json"),
                       names=tmp_path / "small.json")
  assert "vocabulary has 6 words but the checkpoint's embedding has 15 rows" in err
  out = tmp_path / "bundle"
  assert convert.main(["--from-torch", str(tmp_path / "ckpt.npz"), "--out", str(out)]) == 0
  before = (out / "params.npz").read_bytes()
  assert convert.main(["--from-torch", str(tmp_path / "ckpt.npz"), "--out", str(out)]) == 1
  assert "exists" in capsys.readouterr().err and (out / "params.npz").read_bytes() == before
