"""Training end to end on the tiny config: resume after SIGKILL, SIGTERM saves, 8 devices = 1.

Runs go through `python -m camp_jax.main` in subprocesses, as a user would start them.
"""
import json
import math
import os
import signal
import sys

import jax
import numpy as np
import optax
import pytest

from camp_jax import data, evaluate, models, objective, sharding, train, workdir_lock
from camp_jax.data import pipeline
from configs import default
from tests.helpers import (TINY_EPOCHS, LoggedProcess, checkpoint_steps, run, run_tiny,
                           tiny_main, wait_for_checkpoint)


def test_default_run_trains_evaluates_and_writes_metrics(tiny_run):
  workdir, stdout = tiny_run
  metrics = json.loads((workdir / "eval" / "test.json").read_text())
  for key in ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr", "t2i_r1", "t2i_r5",
              "t2i_r10", "t2i_medr", "t2i_meanr", "rsum", "n_images", "n_captions"):
    assert key in metrics
  assert metrics["n_images"] == 40 and metrics["n_captions"] == 200
  assert "R@1" in stdout and "rsum" in stdout
  assert list((workdir / "best").iterdir()) and checkpoint_steps(workdir)[-1] == 8 * TINY_EPOCHS
  assert list(workdir.glob("events.out.tfevents.*"))  # TensorBoard summaries


def test_resume_after_sigkill_reaches_the_same_metrics(tiny_run, tmp_path, tiny_data_dir):
  workdir = tmp_path / "killed"
  proc = LoggedProcess(tiny_main(workdir, tiny_data_dir), tmp_path / "logs" / "killed")
  try:
    wait_for_checkpoint(proc, workdir, min_step=8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.failure("expected an end by SIGKILL")
  assert not (workdir / "eval" / "test.json").exists(), "killed too late to test a resume"
  resumed = run_tiny(workdir, tiny_data_dir)
  assert "resumed from" in resumed.stderr
  assert "took over the lock" in resumed.stderr and "its process is gone" in resumed.stderr
  expected = json.loads((tiny_run[0] / "eval" / "test.json").read_text())
  got = json.loads((workdir / "eval" / "test.json").read_text())
  for key in ("i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10", "i2t_meanr", "t2i_meanr", "rsum"):
    assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_sigterm_saves_a_checkpoint_before_exit(tmp_path, tiny_data_dir):
  workdir = tmp_path / "preempted"
  flags = ("--config.checkpoint_every_steps=1000",)
  proc = LoggedProcess(tiny_main(workdir, tiny_data_dir, *flags), tmp_path / "logs" / "preempted")
  try:
    wait_for_checkpoint(proc, workdir, min_step=8)  # the end of epoch 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, proc.failure("run failed after its SIGTERM")
  stderr = proc.stderr_text()
  assert "preempted at step" in stderr, proc.failure("no 'preempted at step' after a SIGTERM")
  step = int(stderr.split("preempted at step")[1].split(";")[0])
  assert checkpoint_steps(workdir)[-1] == step


def test_a_second_run_on_a_live_workdir_stops_at_start_naming_the_holder(tmp_path,
                                                                         tiny_data_dir):
  workdir = tmp_path / "busy"
  with workdir_lock.WorkdirLock(workdir):  # This test process is the live holder.
    second = run(tiny_main(workdir, tiny_data_dir), tmp_path / "logs" / "second", timeout=300,
                 check=False)
  assert second.returncode != 0, second.failure("a second run on a held workdir did not stop")
  refusal = [line for line in second.stderr.splitlines() if "is in use by" in line]
  assert len(refusal) == 1 and f"pid {os.getpid()} on" in refusal[0], \
      second.failure("expected one line naming the holder")
  assert "Traceback" not in second.stderr, second.failure("a traceback instead of one line")
  assert sorted(p.name for p in workdir.iterdir()) == []  # It wrote nothing.


MESH_SHAPES = r"""
import sys, jax, numpy as np
from camp_jax import data, models, objective, sharding, train
from configs import default
c = default.get_config("tiny"); c.data.dir = sys.argv[1]
c.model.variant, c.train_caption_chunk = "gate_fusion", 2
vocab, split = data.load_vocab(c.data), data.load_split(c.data, "train")
cfg = models.model_config(c, len(vocab), split.feature_dim); model = models.build(cfg)
batch = train_batch = None
from camp_jax.data import pipeline
with pipeline.train_batches(split, vocab, global_batch_size=c.batch_size, seed=0) as it:
  batch = next(it)
out = {}
for name, shape, devices in [("1", (1, 1), jax.devices()[:1]), ("8x1", (8, 1), None),
                             ("4x2", (4, 2), None), ("2x4", (2, 4), None), ("1x8", (1, 8), None)]:
  mesh = sharding.make_mesh(shape, devices)
  state, tx, schedule = train.create_train_state(c, model, cfg, 8, mesh)
  loss = jax.jit(jax.value_and_grad(lambda p, b: objective.loss(model, p, b, mesh, c,
      jax.random.key(0))[0]))
  value, grads = loss(state.params, sharding.global_batch(batch, mesh, c.batch_size))
  out[f"{name}/loss"] = np.float32(value)
  for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(grads)):
    out[f"{name}/{jax.tree_util.keystr(k)}"] = v
np.savez(sys.argv[2], **out)
"""


def test_mesh_shapes_give_the_same_loss_and_gradients(tmp_path, tiny_data_dir):
  """One device and the 8x1, 4x2, 2x4 and 1x8 (images x captions) meshes of 8 devices."""
  out = tmp_path / "grads.npz"
  run([sys.executable, "-c", MESH_SHAPES, str(tiny_data_dir), str(out)],
      tmp_path / "logs" / "mesh_shapes", devices=8, timeout=600)
  got = dict(np.load(out))
  names = sorted({k.split("/")[0] for k in got})
  assert names == ["1", "1x8", "2x4", "4x2", "8x1"]
  reference = {k.split("/", 1)[1]: v for k, v in got.items() if k.startswith("1/")}
  scale = max(float(np.abs(v).max()) for k, v in reference.items() if k != "loss")
  for name in names[1:]:
    for key, value in reference.items():
      np.testing.assert_allclose(got[f"{name}/{key}"], value, rtol=1e-5, atol=1e-5 * scale,
                                 err_msg=f"mesh {name}: {key}")


def test_frozen_parameters_are_left_out_of_the_gradient_norm():
  config = default.get_config()
  config.model.variant, config.shortlist_loss_weight = "gate_fusion", 0.0
  config.trainable = (r"fusion/fc_1/",)
  cfg = dict(name="camp", vocab_size=12, word_dim=4, embed_dim=8, img_dim=6, pool_heads=2)
  model, mesh = models.build(cfg), sharding.make_mesh()
  state, tx, schedule = train.create_train_state(config, model, cfg, 10, mesh)
  rng = np.random.default_rng(0)
  batch = {"images": rng.normal(size=(4, 3, 6)).astype(np.float32),
           "tokens": rng.integers(4, 12, size=(4, 5)).astype(np.int32),
           "lengths": np.array([5, 3, 4, 2], np.int32)}
  grads = jax.jit(jax.grad(lambda p: objective.loss(model, p, batch, mesh, config)[0]))(
      state.params)
  expected = np.linalg.norm(np.asarray(grads["fusion"]["fc_1"]["kernel"]))
  before = jax.device_get(state.params)
  state, aux = train.make_train_step(model, tx, schedule, config, mesh, state)(
      state, sharding.global_batch(batch, mesh, 4))
  assert float(aux["grad_norm"]) == pytest.approx(expected, rel=1e-5)
  assert float(optax.tree.norm(grads)) > 1.01 * expected  # The encoders do get gradients.
  after = jax.device_get(state.params)
  np.testing.assert_array_equal(after["img_enc"]["fc"]["kernel"],
                                before["img_enc"]["fc"]["kernel"])
  assert np.any(after["fusion"]["fc_1"]["kernel"] != before["fusion"]["fc_1"]["kernel"])


def _vse_tiny(workdir, data_dir, *flags, check=True):
  """A tiny VSE++ run, logged to `<workdir's folder>/logs/<workdir's name>.*`."""
  return run([sys.executable, "-m", "camp_jax.main", "--config=configs/vse.py:tiny",
              f"--workdir={workdir}", f"--config.data.dir={data_dir}", "--config.num_epochs=1",
              *flags], workdir.parent / "logs" / workdir.name, timeout=600, check=check)


def test_vse_baseline_trains_validating_on_the_first_dev_images(tmp_path, tiny_data_dir):
  proc = _vse_tiny(tmp_path / "vse", tiny_data_dir, "--config.data.dev_images=20")
  assert "validating on the first 20 of 40 dev images" in proc.stderr, \
      proc.failure("no 'validating on the first 20' line")
  metrics = json.loads((tmp_path / "vse" / "eval" / "test.json").read_text())
  assert metrics["n_images"] == 40 and 0 <= metrics["rsum"] <= 600
  proc = _vse_tiny(tmp_path / "bad", tiny_data_dir, "--config.data.dev_images=41", check=False)
  assert proc.returncode != 0, proc.failure("dev_images=41 was not refused")
  assert "config.data.dev_images=41: expected 0 (all) or 1..40" in proc.stderr, \
      proc.failure("the refusal does not name dev_images=41")


def _chance_rsum(images: int, per_image: int = 5) -> float:
  """Expected rsum of random scores: R@K both ways, in percent."""
  captions = images * per_image
  i2t = lambda k: 1 - math.comb(captions - per_image, k) / math.comb(captions, k)
  return 100 * sum(i2t(k) + min(k, images) / images for k in (1, 5, 10))


def test_bfloat16_step_loss_is_within_two_percent_of_float32_and_trains(tiny_data_dir):
  """One step's loss in bfloat16 against float32, then 96 bfloat16 steps (12 tiny epochs)
  must rank the test split well above chance (measured: rsum 147 in bf16, 171 in f32,
  chance 77)."""
  config = default.get_config("tiny")
  config.data.dir = str(tiny_data_dir)
  vocab, split = data.load_vocab(config.data), data.load_split(config.data, "train")
  mesh = sharding.make_mesh()
  with pipeline.train_batches(split, vocab, global_batch_size=config.batch_size, seed=0) as it:
    batches = [sharding.global_batch(next(it), mesh, config.batch_size) for _ in range(96)]
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config.model.dtype = dtype
    cfg = models.model_config(config, len(vocab), split.feature_dim)
    model = models.build(cfg)
    state, tx, schedule = train.create_train_state(config, model, cfg, 8, mesh)
    params_dtypes = {x.dtype for x in jax.tree.leaves(state.params)}
    assert params_dtypes == {np.dtype("float32")}, params_dtypes   # parameters stay float32
    step = train.make_train_step(model, tx, schedule, config, mesh, state)
    state, aux = step(state, batches[0])
    losses[dtype] = float(aux["loss"])
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02), losses
  assert losses["bfloat16"] != losses["float32"]                     # bf16 products did run
  for batch in batches[1:]:
    state, aux = step(state, batch)
  test = data.load_split(config.data, "test")
  metrics = evaluate.evaluate_params(cfg, state.params, test, vocab, mesh=mesh)
  chance = _chance_rsum(test.num_images)
  assert metrics["rsum"] > 1.3 * chance, (metrics, chance)


def test_word_vectors_initialise_the_masked_rows_and_wrong_sizes_are_refused(tmp_path):
  config = default.get_config("tiny")
  model_cfg = {"name": "camp", "variant": "cross_attention", "vocab_size": 12, "img_dim": 16,
               "embed_dim": 16, "word_dim": 16}
  model = models.build(model_cfg)
  fresh = models.init_params(model, jax.random.split(jax.random.key(config.seed))[1])
  vectors = np.random.default_rng(0).normal(size=(12, 16)).astype(np.float32)
  mask = np.arange(12) % 3 == 0  # rows 0, 3, 6, 9 have pretrained vectors
  np.save(tmp_path / "vectors.npy", vectors)
  np.save(tmp_path / "mask.npy", mask)
  config.word_vectors.path = str(tmp_path / "vectors.npy")
  config.word_vectors.mask = str(tmp_path / "mask.npy")
  mesh = sharding.make_mesh((1, 1))
  state, _, _ = train.create_train_state(config, model, model_cfg, 8, mesh)
  embedding = np.asarray(state.params["txt_enc"]["embed"]["embedding"])
  before = np.asarray(fresh["txt_enc"]["embed"]["embedding"])
  np.testing.assert_array_equal(embedding[mask], vectors[mask])
  np.testing.assert_array_equal(embedding[~mask], before[~mask])
  np.save(tmp_path / "vectors.npy", vectors[:10])
  with pytest.raises(ValueError, match=r"vectors\.npy.*10.*12"):
    train.create_train_state(config, model, model_cfg, 8, mesh)
