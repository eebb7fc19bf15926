"""A run leaves the device layout it was trained on: evaluate, export, warm-start and resume
on other device counts, with the metrics and scores of the original layout.

Runs go through `python -m camp_jax.main` / `camp_jax.export` in subprocesses with 1, 4 or 8
simulated CPU devices, as a user would move a pod run to one host.
"""
import json
import re
import shutil
import signal
import sys

import jax
import numpy as np
import pytest

from camp_jax import checkpoints, evaluate, inference, models
from camp_jax.data import precomp, tokenizer
from configs import default
from tests import helpers

RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_meanr", "t2i_r1", "t2i_r5", "t2i_r10",
           "t2i_meanr", "rsum")


def _recorded(workdir) -> dict:
  return json.loads((workdir / "eval" / "test.json").read_text())


def _assert_same_recalls(got: dict, expected: dict):
  for key in RECALLS:
    assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def _final_loss(stderr: str) -> float:
  """The loss of the last step a run logged ("step N/N  loss X ...")."""
  found = re.findall(r"step (\d+)/\1  loss ([\d.]+)", stderr)
  assert found, "no final step logged:\n" + stderr[-2000:]
  return float(found[-1][1])


def _assert_recalls_within_rounding(got: dict, expected: dict):
  """A resumed run trains on its new layout: the same maths, summed in another order. On a
  tiny model float rounding can move an item across a rank boundary: each recall may move
  by one item (100 / items), a mean rank by 2 %."""
  image, caption = 100.0 / expected["n_images"], 100.0 / expected["n_captions"]
  for key in RECALLS:
    if key.endswith("meanr"):
      assert got[key] == pytest.approx(expected[key], rel=0.02), key
      continue
    one_item = {"i2t": image, "t2i": caption, "rsum": 3 * (image + caption)}[key.split("_")[0]]
    assert abs(got[key] - expected[key]) <= one_item + 1e-6, key


def _evaluates_and_exports_on(devices: int, run, data_dir, tmp_path):
  """--mode=eval (on a copy) and export of `run` in a process with `devices` devices give the
  recalls that the run recorded on its own layout."""
  expected = _recorded(run)
  copy = tmp_path / "copy"
  shutil.copytree(run, copy)
  helpers.run_tiny(copy, data_dir, "--mode=eval", devices=devices)
  _assert_same_recalls(_recorded(copy), expected)
  bundle_dir = tmp_path / "bundle"
  helpers.run([sys.executable, "-m", "camp_jax.export", f"--workdir={run}", f"--out={bundle_dir}"],
              tmp_path / "logs" / "export", devices)
  predictor = inference.load(bundle_dir)
  split = precomp.read_split(data_dir, "test")
  tokens, lengths = tokenizer.encode_all(split.captions, predictor.vocab)
  scores = predictor.score_matrix(*predictor.encode_split(split.images, tokens, lengths))
  _assert_same_recalls(evaluate.recall_metrics(scores), expected)


@pytest.fixture(scope="module")
def run_on_8(tmp_path_factory, tiny_data_dir):
  """A tiny run trained on 8 devices, a 2 x 4 (images x captions) mesh."""
  workdir = tmp_path_factory.mktemp("run8")
  helpers.run_tiny(workdir, tiny_data_dir, "--config.mesh=2x4", devices=8)
  return workdir


def test_a_run_of_8_devices_evaluates_exports_and_warm_starts_on_1(run_on_8, tiny_data_dir,
                                                                  tmp_path):
  _evaluates_and_exports_on(1, run_on_8, tiny_data_dir, tmp_path)
  # config.init_from, here in this 1-device process: every trained array is copied.
  model_cfg, trained, _ = checkpoints.load_trained(run_on_8)
  fresh = models.init_params(models.build(model_cfg), jax.random.key(1))
  warm = checkpoints.params_from_run(fresh, run_on_8, default.get_config().init_from_checkpoint)
  jax.tree.map(np.testing.assert_array_equal, warm, trained)


def test_a_run_of_1_device_evaluates_and_exports_on_8(tiny_run, tiny_data_dir, tmp_path):
  _evaluates_and_exports_on(8, tiny_run[0], tiny_data_dir, tmp_path)


def test_a_run_of_8_devices_resumes_on_4(run_on_8, tiny_data_dir, tmp_path):
  workdir = tmp_path / "moved"
  proc = helpers.LoggedProcess(helpers.tiny_main(workdir, tiny_data_dir, "--config.mesh=2x4"),
                               tmp_path / "logs" / "moved", devices=8)
  try:
    helpers.wait_for_checkpoint(proc, workdir, min_step=8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    proc.kill()
  assert not (workdir / "eval" / "test.json").exists(), "killed too late to test a resume"
  resumed = helpers.run_tiny(workdir, tiny_data_dir, "--config.mesh=2x2", devices=4)
  assert "resumed from" in resumed.stderr
  uninterrupted = (run_on_8.parent / "logs" / f"{run_on_8.name}.stderr").read_text()
  assert _final_loss(resumed.stderr) == pytest.approx(_final_loss(uninterrupted), rel=1e-4)
  _assert_recalls_within_rounding(_recorded(workdir), _recorded(run_on_8))
