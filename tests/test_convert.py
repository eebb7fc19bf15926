"""The converter: any size of checkpoint round-trips; bad checkpoints are refused by name.

Checkpoints are written in the torch layout from freshly initialised flax parameters, by
torch's own rule (a layer's `weight*` is (out, in), embeddings and biases as they are), not by
the converter's table, so the round trip checks the converter's transposes too.

The `.pth.tar` tests (they need torch, which the `test` extra installs) write files in the
exact layout of the release's train.py from the PyTorch reference fixtures: the dict
{'epoch', 'model', 'best_rsum', 'opt', 'Eiters'}, `model` the list of three DataParallel state
dicts (keys `module.*`, storages tagged `cuda:0`), `opt` an EasyDict pickled under the name
`easydict.EasyDict` from a stand-in module (easydict itself need not be installed).
"""
import argparse
import collections
import contextlib
import importlib.util
import json
import os
import pickle
import sys
import types

import jax
import numpy as np
import pytest

from camp_jax import bundle, cli, convert, inference, models
from camp_jax.convert import __main__ as convert_cli
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
  assert cli.call(convert_cli.main, ["--from_torch", str(tmp_path / "ckpt.npz"), "--out",
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
  assert cli.call(convert_cli.main, ["--from_torch", str(path), "--out", str(out), *flags]) == 1
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
  assert cli.call(convert_cli.main, ["--from_torch", str(tmp_path / "ckpt.npz"), "--out", str(out)]) == 0
  before = (out / "params.npz").read_bytes()
  assert cli.call(convert_cli.main, ["--from_torch", str(tmp_path / "ckpt.npz"), "--out", str(out)]) == 1
  assert "exists" in capsys.readouterr().err and (out / "params.npz").read_bytes() == before


# The release's .pth.tar ---------------------------------------------------------------------


class EasyDict(dict):
  """easydict.EasyDict as the package defines it: a dict whose items are also attributes."""

  def __init__(self, d=None, **kwargs):
    super().__init__()
    for k, v in dict(d or {}, **kwargs).items():
      setattr(self, k, v)

  def __setattr__(self, name, value):
    if isinstance(value, (list, tuple)):
      value = type(value)(EasyDict(x) if isinstance(x, dict) else x for x in value)
    elif isinstance(value, dict) and not isinstance(value, EasyDict):
      value = EasyDict(value)
    super().__setattr__(name, value)
    super().__setitem__(name, value)

  __setitem__ = __setattr__


EasyDict.__module__ = "easydict"  # Pickled as GLOBAL easydict.EasyDict, as in the release.

# The `common` section of a release YAML, as train.py turns it into `opt`.
RELEASE_OPTIONS = {"model": "CAMP", "data_name": "f30k_precomp", "measure": "gate_fusion_new",
                   "embed_size": 32, "word_dim": 16, "img_dim": 64, "learning_rate": 2e-4,
                   "lr_update": 15, "no_imgnorm": True, "max_violation": None,
                   "resume": "", "ks": [1, 5, 10], "optim": {"name": "adam", "betas": [0.9, 0.999]}}


@pytest.fixture(name="torch")
def _torch():
  return pytest.importorskip("torch",
                             reason="the .pth.tar tests need torch: pip install -e '.[test]'")


def _easydict_module() -> types.ModuleType:
  module = types.ModuleType("easydict")
  module.EasyDict = EasyDict
  return module


@contextlib.contextmanager
def _release_pickling(torch, monkeypatch):
  """While saving: `easydict` importable (our stand-in), every storage tagged `cuda:0`."""
  with monkeypatch.context() as m:
    m.setitem(sys.modules, "easydict", _easydict_module())
    m.setattr(torch.serialization, "_package_registry",
              [(-1, lambda storage: "cuda:0", lambda storage, location: None),
               *torch.serialization._package_registry])  # pylint: disable=protected-access
    yield


def _save_release(torch, monkeypatch, path, ref, opt, legacy=False, **extra):
  """torch.save of {'epoch', 'model': [img_enc, txt_enc, sim], 'best_rsum', 'opt', 'Eiters'}."""
  model = []
  for part in convert.STATE_PARTS:
    state = collections.OrderedDict(
        ("module." + k.removeprefix(f"param/{part}."), torch.from_numpy(v.copy()))
        for k, v in ref.items() if k.startswith(f"param/{part}."))
    # pylint: disable-next=protected-access
    state._metadata = collections.OrderedDict({"": {"version": 1}})  # As state_dict() has it.
    model.append(state)
  checkpoint = {"epoch": 11, "model": model, "best_rsum": 512.5, "opt": opt, "Eiters": 4321,
                **extra}
  with _release_pickling(torch, monkeypatch):
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
  assert b"cuda:0" in path.read_bytes(), "the storages were not tagged as saved from CUDA"
  return path


def _fixture(torch_fixture_dir, name):
  with np.load(torch_fixture_dir / f"camp_{name}_small.npz") as z:
    return {k: z[k] for k in z.files}


def _scores(out, ref):
  predictor = inference.load(out)
  img_emb = predictor.encode_images(ref["input/images"])
  return predictor.score_matrix(img_emb, *predictor.encode_captions(ref["input/captions"],
                                                                    ref["input/lengths"]))


@pytest.mark.parametrize("variant,legacy,options", [
    ("gate_fusion", False, "easydict"), ("cross_attention", False, "easydict"),
    ("gate_fusion", True, "easydict"), ("cross_attention", True, "namespace"),
], ids=["gate_fusion-zip", "cross_attention-zip", "gate_fusion-legacy",
        "cross_attention-legacy-namespace"])
def test_release_pth_tar_scores_match_the_original_and_the_npz_route(
    variant, legacy, options, torch, torch_fixture_dir, tmp_path, monkeypatch, capsys):
  ref = _fixture(torch_fixture_dir, variant)
  opt = (EasyDict(RELEASE_OPTIONS) if options == "easydict"
         else argparse.Namespace(**RELEASE_OPTIONS))
  checkpoint = _save_release(torch, monkeypatch, tmp_path / "model_best.pth.tar", ref, opt, legacy)
  monkeypatch.setitem(sys.modules, "easydict", None)  # `import easydict` fails from here on.
  assert cli.call(convert_cli.main, ["--from_torch", str(checkpoint), "--out", str(tmp_path / "pth")]) == 0
  assert "wrote" in capsys.readouterr().out
  convert.convert(torch_fixture_dir / f"camp_{variant}_small.npz", tmp_path / "npz")

  config, params, _, meta = bundle.load(tmp_path / "pth")
  npz_config, npz_params, _, _ = bundle.load(tmp_path / "npz")
  assert config == npz_config and config["variant"] == variant
  jax.tree.map(np.testing.assert_array_equal, params, npz_params)
  assert meta["release_options"] == json.loads(json.dumps(RELEASE_OPTIONS))
  assert meta["release_checkpoint"] == {"epoch": 11, "best_rsum": 512.5, "Eiters": 4321}
  assert meta["source"] == "model_best.pth.tar"

  scores = _scores(tmp_path / "pth", ref)
  np.testing.assert_array_equal(scores, _scores(tmp_path / "npz", ref))
  np.testing.assert_allclose(scores, ref["output/scores"], atol=1e-5, rtol=0)


class _Payload:
  """Runs `call(*args)` when unpickled by an unrestricted loader."""

  def __init__(self, call, *args):
    self.call, self.args = call, args

  def __reduce__(self):
    return self.call, self.args


def _payloads(marker):
  return {"os.system": _Payload(os.system, f"touch {marker}"),
          "exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()")}


@pytest.mark.parametrize("name", ["os.system", "exec"])
def test_malicious_global_in_the_options_is_refused_without_running(
    name, torch, torch_fixture_dir, tmp_path, monkeypatch, capsys):
  control = tmp_path / "control"  # The payload is live: plain pickle runs it.
  pickle.loads(pickle.dumps(_payloads(control)[name]))
  assert control.exists()
  marker = tmp_path / "pwned"
  opt = EasyDict(RELEASE_OPTIONS, data_name=_payloads(marker)[name])
  checkpoint = _save_release(torch, monkeypatch, tmp_path / "model_best.pth.tar",
                             _fixture(torch_fixture_dir, "gate_fusion"), opt)
  monkeypatch.setitem(sys.modules, "easydict", _easydict_module())  # Worst case: installed.
  err = _convert_error(tmp_path, checkpoint, capsys)
  assert not marker.exists(), "the converter ran the pickled payload"
  global_name = "posix.system" if name == "os.system" and os.name == "posix" else name
  assert f"refusing global {global_name} (nothing was run)" in err, err


def test_unrecognised_release_layouts_are_refused_by_name(torch, torch_fixture_dir, tmp_path,
                                                         monkeypatch, capsys):
  ref = _fixture(torch_fixture_dir, "cross_attention")
  path = tmp_path / "model_best.pth.tar"
  _save_release(torch, monkeypatch, path, ref, EasyDict(RELEASE_OPTIONS), optimizer={})
  assert "unexpected key 'optimizer' in the checkpoint" in _convert_error(tmp_path, path, capsys)

  _save_release(torch, monkeypatch, path, ref, EasyDict(RELEASE_OPTIONS, margin=torch.ones(1)))
  err = _convert_error(tmp_path, path, capsys)
  assert "checkpoint['opt']['margin'] is a Tensor, not plain data" in err

  other = types.ModuleType("mypkg")
  other.Config = type("Config", (), {"__module__": "mypkg"})
  with monkeypatch.context() as m:
    m.setitem(sys.modules, "mypkg", other)
    _save_release(torch, monkeypatch, path, ref, other.Config())
  assert "refusing global mypkg.Config" in _convert_error(tmp_path, path, capsys)

  with _release_pickling(torch, monkeypatch):
    torch.save({"model": {"img_enc": {}}}, path)
  assert "the list of 3 state dicts" in _convert_error(tmp_path, path, capsys)
