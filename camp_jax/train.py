"""Training: the train state, one sharded jit train step, a run's setup, and the loop.

The step differentiates `objective.loss` on the whole global batch, its rows split over the
mesh's "images" axis (see `camp_jax.objective` and `camp_jax.sharding`), and applies
`optimizer.create_optimizer`'s update. Tensorflow is imported only by the input pipeline
and the metric writers.
"""
import dataclasses
import functools
import pathlib
import time
from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from camp_jax import (checkpoints, data, distributed, evaluate, kernel_check, memory, models,
                      objective, optimizer, preemption, sharding, workdir_lock)
from camp_jax.data import pipeline


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def train_step(state: TrainState, batch, *, model, tx, schedule, config, mesh):
  rng, step_rng = jax.random.split(state.rng)
  loss = lambda params: objective.loss(model, params, batch, mesh, config, step_rng)
  (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # Over trained parameters only: nothing then reads the frozen ones' gradients, and XLA
  # drops their computation (stage 2 does not backpropagate into the encoders).
  trained = jax.tree.leaves(optimizer.trainable_mask(state.params, config.trainable))
  aux["grad_norm"] = optax.tree.norm([g for g, t in zip(jax.tree.leaves(grads), trained) if t])
  aux["learning_rate"] = schedule(state.step)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, rng=rng)
  return new_state, aux


def make_train_step(model, tx, schedule, config, mesh, state):
  """The jit-compiled step: state (concrete or abstract, for its structure) placed by
  `sharding.state_sharding` and donated, batch rows split over "images"."""
  if config.train_caption_chunk < 0:
    raise ValueError(f"config.train_caption_chunk={config.train_caption_chunk}: resolve -1 "
                     "(auto) with train.resolve_caption_chunk before building the step")
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                           mesh=mesh)
  placed = sharding.state_sharding(mesh, state)
  return jax.jit(step, in_shardings=(placed, sharding.batch_sharding(mesh)),
                 out_shardings=(placed, sharding.replicated(mesh)), donate_argnums=(0,))


def resolve_caption_chunk(config, model, tx, schedule, mesh, state, batch_shape: dict):
  """config, with train_caption_chunk = -1 (auto) replaced by the largest that fits
  (`memory.largest_fitting_chunk` on the devices' allocator limit).

  batch_shape: {"images": (B, R, F), "tokens": (B, T), "lengths": (B,)}, the widest batch.
  """
  if config.train_caption_chunk != memory.AUTO:
    return config
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "images" else jnp.int32,
                                   sharding=sharding.batch_sharding(mesh))
           for k, shape in batch_shape.items()}

  def measure(chunk):
    step = make_train_step(model, tx, schedule, memory.with_chunk(config, chunk), mesh, state)
    return memory.compiled_total(lambda: step.lower(state, batch).compile())

  found = memory.largest_fitting_chunk(
      measure, memory.device_memory_bytes(mesh.devices.flat[0]),
      config.batch_size // mesh.shape[sharding.CAPTIONS])
  return memory.with_chunk(config, memory.resolved_chunk(found))


def make_mesh(config) -> jax.sharding.Mesh:
  """The ("images", "captions") mesh over every device, shaped by config.mesh."""
  shape = sharding.mesh_shape(jax.device_count(), config.batch_size, config.mesh)
  return sharding.make_mesh(shape)


def create_train_state(config, model, model_cfg, steps_per_epoch: int, mesh):
  """(state placed on `mesh` by `sharding.state_sharding`, tx, schedule): fresh params,
  with config.word_vectors and the warm start of config.init_from applied."""
  rng, init_rng = jax.random.split(jax.random.key(config.seed))
  params = models.init_params(model, init_rng)
  vectors = optimizer.word_vectors(config, model_cfg["vocab_size"])
  if vectors is not None:
    params = models.with_word_vectors(params, *vectors)
  if config.init_from:
    params = checkpoints.params_from_run(params, config.init_from, config.init_from_checkpoint)
  tx, schedule = optimizer.create_optimizer(config, params, steps_per_epoch)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(rng))
  return jax.device_put(state, sharding.state_sharding(mesh, state)), tx, schedule


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run trains: its data, model, mesh, first state and optimizer (`setup`)."""
  config: ml_collections.ConfigDict
  vocab: Any
  split: Any                     # the training split
  model_cfg: dict
  model: Any
  mesh: jax.sharding.Mesh
  state: TrainState
  tx: Any
  schedule: Any
  steps_per_epoch: int

  def step(self, caption_width: int):
    """(config with the chunk resolved, the jitted step) for batches up to `caption_width`."""
    c, regions = self.config, (self.split.num_regions, self.split.feature_dim)
    config = resolve_caption_chunk(c, self.model, self.tx, self.schedule, self.mesh,
                                   self.state, {"images": (c.batch_size, *regions),
                                                "tokens": (c.batch_size, caption_width),
                                                "lengths": (c.batch_size,)})
    return config, make_train_step(self.model, self.tx, self.schedule, config, self.mesh,
                                   self.state)


def setup(config) -> Setup:
  """Loads the vocabulary and the training split, builds the model, mesh and state."""
  vocab = data.load_vocab(config.data)
  split = data.load_split(config.data, config.data.train_split)
  model_cfg = models.model_config(config, len(vocab), split.feature_dim)
  model = models.build(model_cfg)
  steps_per_epoch = split.num_images // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size {config.batch_size} exceeds the "
                     f"{split.num_images} training images")
  mesh = make_mesh(config)
  state, tx, schedule = create_train_state(config, model, model_cfg, steps_per_epoch, mesh)
  return Setup(config, vocab, split, model_cfg, model, mesh, state, tx, schedule,
               steps_per_epoch)


class _Progress:
  """The one progress reporter: every `every_s` s (and at the end) it logs step, loss,
  steps/s since the first (compiling) step and time left, and writes steps_per_sec."""

  def __init__(self, num_steps: int, writer, every_s: float = 15.0):
    self.num_steps, self.writer, self.every_s = num_steps, writer, every_s
    self.start_step = self.start = self.last = None

  def __call__(self, step: int, aux) -> None:
    now = time.monotonic()
    if self.start is None:
      self.start_step, self.start = step, now
      self.last = now - self.every_s / 2  # The first line comes soon after the compile.
      return
    if now - self.last < self.every_s and step != self.num_steps:
      return
    self.last = now
    rate = (step - self.start_step) / max(now - self.start, 1e-9)
    eta = (self.num_steps - step) / max(rate, 1e-9)
    self.writer.write_scalars(step, {"steps_per_sec": rate})
    logging.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %dm%02ds", step, self.num_steps,
                 float(aux["loss"]), rate, eta // 60, eta % 60)


def _dev_split(config):
  dev = data.load_split(config.data, config.data.dev_split)
  if config.data.dev_images:
    if not 0 < config.data.dev_images <= dev.num_images:
      raise ValueError(f"config.data.dev_images={config.data.dev_images}: expected 0 (all) or "
                       f"1..{dev.num_images}, the images of split {dev.name!r}")
    logging.info("validating on the first %d of %d dev images", config.data.dev_images,
                 dev.num_images)
    dev = dev.slice_images(0, config.data.dev_images)
  return dev


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains with periodic dev evaluation and checkpoints; evaluates the best on test.

  The run holds `workdir` (`workdir_lock`) from before its first write to its last: a second
  run on a live workdir stops at start, naming the holder. A preemption notice (SIGTERM, or
  a TPU maintenance event through JAX's sync point) saves a checkpoint at the same step on
  every process and returns {"preempted_at_step": step}; rerunning resumes exactly.
  """
  workdir = pathlib.Path(workdir).absolute()
  with workdir_lock.hold(workdir) as lock:
    return _train_and_evaluate(config, workdir, lock)


def _train_and_evaluate(config, workdir: pathlib.Path, lock) -> dict:
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  run = setup(config)
  pooling, pooling_check = kernel_check.resolve_pooling(config, run.model, run.state.params,
                                                        run.mesh)
  if pooling != config.pooling_kernel:  # The kernel failed its check: the step uses XLA's.
    config = config.copy_and_resolve_references()
    config.pooling_kernel = pooling
    run = dataclasses.replace(run, config=config)
  vocab, model_cfg, mesh, state = run.vocab, run.model_cfg, run.mesh, run.state
  dev_split, steps_per_epoch = _dev_split(config), run.steps_per_epoch
  num_steps = config.num_epochs * steps_per_epoch

  latest = checkpoints.manager(workdir / "checkpoints", config.keep_checkpoints)
  best = checkpoints.manager(workdir / "best", 1)
  extra = {"model_config": model_cfg, "vocab_path": str(pathlib.Path(vocab.path).absolute()),
           "best_rsum": -1.0,
           "data": None}
  restored = checkpoints.restore(latest, state, fall_back=config.checkpoint_fallback)
  if restored:
    state, extra, step = restored
    logging.info("resumed from %s/%d", latest.directory, step)
  extra["pooling_check"] = pooling_check  # What the pooling kernel's check found, if it ran.
  # Each process reads only the rows of every global batch that its devices hold.
  rows = sharding.host_rows(sharding.batch_sharding(mesh), config.batch_size)
  batches = pipeline.train_batches(run.split, vocab, global_batch_size=config.batch_size,
                                   seed=config.seed, state=extra["data"], host_rows=rows)
  config, p_train_step = run.step(batches.max_width)
  evaluate_on = lambda params, split, **kw: evaluate.evaluate_params(
      model_cfg, params, split, vocab, mesh=mesh, pooling=config.pooling_kernel, **kw)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(flatten_config(config))
  step, pending = int(state.step), []
  progress = _Progress(num_steps, writer)
  sync = preemption.SyncPoint(start_step=step)
  logging.info("training %s for %d steps (%d per epoch) on %d devices, mesh %s",
               model_cfg["name"], num_steps, steps_per_epoch, jax.device_count(),
               dict(mesh.shape))
  try:
    while step < num_steps:
      state, aux = p_train_step(state, sharding.global_batch(next(batches), mesh,
                                                             config.batch_size))
      step += 1
      pending.append(aux)
      progress(step, aux)
      if step % config.log_every_steps == 0 or step == num_steps:
        summary = jax.tree.map(lambda *x: float(np.mean(x)), *jax.device_get(pending))
        writer.write_scalars(step, summary)
        pending = []
      epoch_end = step % steps_per_epoch == 0
      epoch = step // steps_per_epoch
      if epoch_end and (epoch % config.eval_every_epochs == 0 or step == num_steps):
        metrics = evaluate_on(state.params, dev_split)
        writer.write_scalars(step, evaluate.scalar_metrics(metrics, "dev"))
        if distributed.is_primary():
          logging.info("%s", evaluate.format_table(metrics, f"dev, epoch {epoch}"))
        if metrics["rsum"] > extra["best_rsum"]:
          extra = {**extra, "best_rsum": metrics["rsum"], "best_step": step}
          lock.check()
          checkpoints.save(best, step, state, {**extra, "data": batches.get_state(),
                                               "metrics": metrics})
          # Orbax names its cross-process barriers by step only: two managers finishing
          # async saves of the same step at once collide ("Barrier ... already ongoing").
          best.wait_until_finished()
      preempted = sync.reached(step)  # The same answer on every process.
      if (epoch_end or step % config.checkpoint_every_steps == 0 or step == num_steps
          or preempted):
        lock.check()
        checkpoints.save(latest, step, state, {**extra, "data": batches.get_state()})
      if preempted:
        logging.warning("preempted at step %d; checkpoint saved", step)
        break
  finally:
    batches.close()
    latest.wait_until_finished()
    best.wait_until_finished()
    sync.close()
  if step < num_steps:
    return {"preempted_at_step": step}

  results = {}
  # Restored into the train state's shardings: the same on one or many processes.
  params = checkpoints.restore(best, state)[0].params if best.latest_step() else state.params
  for split_name in config.eval_splits:
    metrics = evaluate_on(params, data.load_split(config.data, split_name),
                          folds=config.eval_folds)
    metrics.update(model=model_cfg["name"], variant=model_cfg.get("variant"),
                   init_from=str(pathlib.Path(config.init_from).absolute()) if config.init_from
                   else None)
    writer.write_scalars(step, evaluate.scalar_metrics(metrics, split_name))
    if distributed.is_primary():  # Every process has the same metrics; one writes them.
      lock.check()
      evaluate.write_metrics(workdir, split_name, metrics)
      print(evaluate.format_table(metrics, f"{split_name} (best dev checkpoint)"), flush=True)
      beside = config.init_from and evaluate.beside_run(config.init_from, split_name, metrics)
      if beside:  # The runs it started from above this one (CAMP's stages 1, 2, 3).
        print(beside, flush=True)
    results[split_name] = metrics
  writer.flush()
  return results


def flatten_config(config) -> dict:
  flat = flax.traverse_util.flatten_dict(config.to_dict())
  return {"/".join(k): (v if isinstance(v, (int, float, str, bool)) else str(v))
          for k, v in flat.items()}
