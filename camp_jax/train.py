"""Training: the train state, the optimizer, one sharded jit train step, and the loop.

The loss is computed on the score matrix of the whole global batch (hardest negatives over
it). The batch is split by rows over the mesh's "images" axis; in the step, device (i, c) of
the ("images", "captions") mesh scores image block i against caption block c
(`scoring.batch_scores`). The loss reads 3B of those scores: by default the matrix has no
backward pass and only those pairs are scored again to differentiate
(`scoring.batch_pair_scores`, `config.backward_pairs`): same gradients, half the FLOPs.
Tensorflow is imported only by the input pipeline and the metric writers.
"""
import functools
import pathlib
import re
import signal
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

from camp_jax import (checkpoints, chunking, distributed, evaluate, losses, models, scoring,
                      sharding)


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """lr (x 128 / batch, as the release) decayed x0.1 every `lr_update` epochs."""
  lr = config.learning_rate * (128 / config.batch_size if config.scale_lr_by_batch else 1.0)
  return optax.exponential_decay(lr, transition_steps=max(1, config.lr_update * steps_per_epoch),
                                 decay_rate=0.1, staircase=True)


def trainable_mask(params, patterns) -> Any:
  """True for parameters whose "/"-joined path matches one of the regex `patterns`.

  Empty patterns: everything is trained.
  """
  flat = flax.traverse_util.flatten_dict(params)
  if not patterns:
    return jax.tree.map(lambda _: True, params)
  unmatched = [p for p in patterns if not any(re.search(p, "/".join(k)) for k in flat)]
  if unmatched:
    raise ValueError(f"config.trainable patterns {unmatched} match no parameter; parameter "
                     f"paths look like {'/'.join(next(iter(flat)))}")
  return flax.traverse_util.unflatten_dict(
      {k: any(re.search(p, "/".join(k)) for p in patterns) for k in flat})


def create_optimizer(config, params, steps_per_epoch: int):
  """Clipping, then Adam or SGD (Nesterov momentum, weight decay); frozen params get zero."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    opt = optax.adam(schedule)
  elif config.optimizer == "sgd":
    opt = optax.chain(optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
  else:
    raise ValueError(f"config.optimizer is {config.optimizer!r}, expected 'adam' or 'sgd'")
  opt = optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)
  mask = trainable_mask(params, config.trainable)
  labels = jax.tree.map(lambda m: "train" if m else "frozen", mask)
  return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels), schedule


def loss_fn(params, batch, rng, *, model, config, mesh):
  """Loss of one global batch and its statistics."""
  variables = {"params": params}
  img_emb = model.apply(variables, batch["images"], method="encode_images")
  cap_emb, cap_mask = model.apply(variables, batch["tokens"], batch["lengths"],
                                  method="encode_captions")
  # The pairs: regions stay split over "images", words are regrouped over "captions".
  img_emb = jax.lax.with_sharding_constraint(img_emb, sharding.batch_sharding(mesh))
  cap_blocks = jax.lax.with_sharding_constraint((cap_emb, cap_mask),
                                                sharding.caption_sharding(mesh))
  gated, gates = getattr(model, "variant", None) == "gate_fusion", None
  fast = model.PAIRWISE and config.fast_scoring  # Same scores and gradients, fewer FLOPs.
  hardest_only = fast and config.backward_pairs == "hardest"
  if fast:
    # With hardest_only, every pair is scored without a backward pass (no activations kept);
    # the 3B pairs the loss reads are scored again below, to differentiate.
    frozen = jax.lax.stop_gradient if hardest_only else lambda x: x
    pooling = scoring.pooling_for(mesh, config.pooling_kernel) if hardest_only else "xla"
    scores = scoring.batch_scores(model, frozen(params), frozen(img_emb), *frozen(cap_blocks),
                                  mesh, config.train_caption_chunk, gated, pooling)
    scores, gates = scores if gated else (scores, None)
  else:  # The transcription (dropout, VSE): every pair expanded, placed by GSPMD.
    scores = model.apply(variables, img_emb, *cap_blocks, deterministic=False,
                         rngs={"dropout": rng}, method="score_matrix")
  diagonal = jnp.arange(scores.shape[0])
  row_hardest, column_hardest = losses.hardest_negatives(scores)
  if hardest_only:
    picked = scoring.batch_pair_scores(
        model, params, img_emb, cap_emb, cap_mask,
        jnp.concatenate([diagonal, diagonal, column_hardest]),
        jnp.concatenate([diagonal, row_hardest, diagonal]), mesh)
    loss = losses.PAIR_LOSSES[config.loss](*jnp.split(picked, 3))
  else:
    loss = losses.LOSSES[config.loss](scores)
  aux = {"loss": loss, "positive_score": jnp.mean(jnp.diagonal(scores)),
         "hardest_negative_score": jnp.mean(scores[diagonal, row_hardest])}
  if config.shortlist_loss_weight:
    img_vec = model.apply(variables, img_emb, method="image_vectors")
    cap_vec = model.apply(variables, cap_emb, cap_mask, method="caption_vectors")
    aux["shortlist_loss"] = losses.max_violation_hinge(img_vec @ cap_vec.T)
    loss = loss + config.shortlist_loss_weight * aux["shortlist_loss"]
  if gated:  # Gate statistics of the positive pairs: (B, R) and (B, L).
    if gates is not None:  # The fast path's by-product: the diagonal of every pair's gates.
      gates = jax.lax.stop_gradient({k: jnp.diagonal(g).T for k, g in gates.items()})
    else:
      gates = jax.lax.stop_gradient(model.apply(variables, img_emb, cap_emb, cap_mask,
                                                method="explain_pair"))
    aux["region_gate"] = jnp.mean(gates["region_gate"])
    aux["word_gate"] = jnp.sum(gates["word_gate"] * cap_mask) / jnp.sum(cap_mask)
  return loss, aux


def train_step(state: TrainState, batch, *, model, tx, schedule, config, mesh):
  rng, step_rng = jax.random.split(state.rng)
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, config=config, mesh=mesh),
                               has_aux=True)
  (_, aux), grads = grad_fn(state.params, batch, step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # Over trained parameters only: nothing then reads the frozen ones' gradients, and XLA
  # drops their computation (stage 2 does not backpropagate into the encoders).
  trained = jax.tree.leaves(trainable_mask(state.params, config.trainable))
  aux["grad_norm"] = optax.tree.norm([g for g, t in zip(jax.tree.leaves(grads), trained) if t])
  aux["learning_rate"] = schedule(state.step)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, rng=rng)
  return new_state, aux


def make_train_step(model, tx, schedule, config, mesh):
  """The jit-compiled step: state replicated and donated, batch rows split over "images"."""
  if config.train_caption_chunk < 0:
    raise ValueError(f"config.train_caption_chunk={config.train_caption_chunk}: resolve -1 "
                     "(auto) with train.resolve_caption_chunk before building the step")
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                           mesh=mesh)
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh), donate_argnums=(0,))


def resolve_caption_chunk(config, model, tx, schedule, mesh, state, batch_shape: dict):
  """config, with train_caption_chunk = -1 (auto) replaced by the largest that fits.

  batch_shape: {"images": (B, R, F), "tokens": (B, T), "lengths": (B,)}, the widest batch.
  """
  if config.train_caption_chunk != chunking.AUTO:
    return config
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "images" else jnp.int32,
                                   sharding=sharding.batch_sharding(mesh))
           for k, shape in batch_shape.items()}

  def memory_of(chunk):
    trial = config.copy_and_resolve_references()
    trial.train_caption_chunk = chunk
    m = make_train_step(model, tx, schedule, trial, mesh).lower(state, batch).compile() \
        .memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)

  resolved = config.copy_and_resolve_references()
  resolved.train_caption_chunk = chunking.largest_fitting(
      memory_of, chunking.device_memory_bytes(mesh.devices.flat[0]),
      config.batch_size // mesh.shape[sharding.AXES[1]])
  return resolved


def make_mesh(config) -> jax.sharding.Mesh:
  """The ("images", "captions") mesh over every device, shaped by config.mesh."""
  shape = sharding.mesh_shape(jax.device_count(), config.batch_size, config.mesh)
  return sharding.make_mesh(shape)


def init_params(model, model_cfg: dict, rng, regions: int = 2):
  images = jnp.zeros((1, regions, model_cfg["img_dim"]), jnp.float32)
  tokens, lengths = jnp.ones((1, 3), jnp.int32), jnp.full((1,), 3, jnp.int32)
  return model.init(rng, images, tokens, lengths)["params"]


def check_config(config) -> None:
  """Refuses combinations the train step cannot honour, before anything is built."""
  for field, allowed in [("backward_pairs", ("hardest", "all")),
                         ("pooling_kernel", scoring.POOLING)]:
    if config[field] not in allowed:
      raise ValueError(f"config.{field}={config[field]!r}: expected one of {allowed}")
  if config.model.get("dropout_rate", 0.0) and config.fast_scoring:
    raise ValueError(f"config.model.dropout_rate={config.model.dropout_rate} needs "
                     "--config.fast_scoring=False: the hoisted exact path has no dropout "
                     "(the release trains without it)")


def create_train_state(config, model, model_cfg, steps_per_epoch: int, mesh):
  rng, init_rng = jax.random.split(jax.random.key(config.seed))
  params = init_params(model, model_cfg, init_rng)
  if config.model.get("word_vectors"):
    from camp_jax.data import word_vectors  # pylint: disable=g-import-not-at-top
    vectors, mask = word_vectors.load_word_vectors(
        config.model.word_vectors, model_cfg["vocab_size"], config.model.word_vectors_mask)
    params = models.with_word_vectors(params, vectors, mask)
  if config.init_from:
    params = checkpoints.params_from_run(params, config.init_from, config.init_from_checkpoint)
  tx, schedule = create_optimizer(config, params, steps_per_epoch)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(rng))
  return jax.device_put(state, sharding.replicated(mesh)), tx, schedule


class _Progress:
  """Every `every_s` s: step, loss, steps/s (after the compiling first step), time left."""

  def __init__(self, num_steps: int, every_s: float = 15.0):
    self.num_steps, self.every_s = num_steps, every_s
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
    logging.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %dm%02ds", step, self.num_steps,
                 float(aux["loss"]), rate, eta // 60, eta % 60)


class _Preemption:
  """Remembers a SIGTERM so the loop can save a checkpoint before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("signal %d: saving a checkpoint before exiting", signum)
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _dev_split(config):
  from camp_jax import data  # pylint: disable=g-import-not-at-top
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
  """Trains with periodic dev evaluation and checkpoints; evaluates the best on test."""
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  from camp_jax import data  # pylint: disable=g-import-not-at-top
  from camp_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  check_config(config)
  workdir = pathlib.Path(workdir).absolute()
  vocab = data.load_vocab(config.data)
  train_split, dev_split = data.load_split(config.data, config.data.train_split), _dev_split(config)
  model_cfg = models.model_config(config, len(vocab), train_split.feature_dim)
  model = models.build(model_cfg)
  steps_per_epoch = train_split.num_images // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size {config.batch_size} exceeds the "
                     f"{train_split.num_images} training images")
  num_steps = config.num_epochs * steps_per_epoch
  mesh = make_mesh(config)
  state, tx, schedule = create_train_state(config, model, model_cfg, steps_per_epoch, mesh)

  latest = checkpoints.manager(workdir / "checkpoints", config.keep_checkpoints)
  best = checkpoints.manager(workdir / "best", 1)
  extra = {"model_config": model_cfg, "vocab_path": str(vocab.path), "best_rsum": -1.0,
           "data": None}
  restored = checkpoints.restore(latest, state, fall_back=config.checkpoint_fallback)
  if restored:
    state, extra, step = restored
    logging.info("resumed from %s/%d", latest.directory, step)
  # Each process reads only the rows of every global batch that its devices hold.
  rows = sharding.host_rows(sharding.batch_sharding(mesh), config.batch_size)
  batches = pipeline.train_batches(train_split, vocab, global_batch_size=config.batch_size,
                                   seed=config.seed, state=extra["data"], host_rows=rows)
  config = resolve_caption_chunk(config, model, tx, schedule, mesh, state, {
      "images": (config.batch_size, train_split.num_regions, train_split.feature_dim),
      "tokens": (config.batch_size, batches.max_width), "lengths": (config.batch_size,)})
  p_train_step = make_train_step(model, tx, schedule, config, mesh)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(flatten_config(config))
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log_every_steps)
  preemption = _Preemption()
  step, pending = int(state.step), []
  progress = _Progress(num_steps)
  logging.info("training %s for %d steps (%d per epoch) on %d devices, mesh %s",
               model_cfg["name"], num_steps, steps_per_epoch, jax.device_count(),
               dict(mesh.shape))
  try:
    while step < num_steps:
      state, aux = p_train_step(state, sharding.global_batch(next(batches), mesh,
                                                             config.batch_size))
      step += 1
      pending.append(aux)
      report(step)
      progress(step, aux)
      if step % config.log_every_steps == 0 or step == num_steps:
        summary = jax.tree.map(lambda *x: float(np.mean(x)), *jax.device_get(pending))
        writer.write_scalars(step, summary)
        pending = []
      epoch_end = step % steps_per_epoch == 0
      epoch = step // steps_per_epoch
      if epoch_end and (epoch % config.eval_every_epochs == 0 or step == num_steps):
        metrics = evaluate.evaluate_params(model_cfg, state.params, dev_split, vocab,
                                           mesh=mesh, pooling=config.pooling_kernel)
        writer.write_scalars(step, evaluate.scalar_metrics(metrics, "dev"))
        if distributed.is_primary():
          logging.info("%s", evaluate.format_table(metrics, f"dev, epoch {epoch}"))
        if metrics["rsum"] > extra["best_rsum"]:
          extra = {**extra, "best_rsum": metrics["rsum"], "best_step": step}
          checkpoints.save(best, step, state, {**extra, "data": batches.get_state(),
                                               "metrics": metrics})
          # Orbax names its cross-process barriers by step only: two managers finishing
          # async saves of the same step at once collide ("Barrier ... already ongoing").
          best.wait_until_finished()
      # A SIGTERM may reach some processes only: every `preemption_sync_steps` steps all
      # agree (one collective, which also waits for the step), so all stop at the same step.
      preempted = (step % config.preemption_sync_steps == 0 or step == num_steps) and \
          distributed.any_process(preemption.requested)
      if (epoch_end or step % config.checkpoint_every_steps == 0 or step == num_steps
          or preempted):
        checkpoints.save(latest, step, state, {**extra, "data": batches.get_state()})
      if preempted:
        logging.warning("preempted at step %d; checkpoint saved", step)
        break
  finally:
    batches.close()
    latest.wait_until_finished()
    best.wait_until_finished()
    preemption.restore()
  if step < num_steps:
    return {"preempted_at_step": step}

  results = {}
  # Restored into the train state's (replicated) shardings: the same on one or many processes.
  params = checkpoints.restore(best, state)[0].params if best.latest_step() else state.params
  for split_name in config.eval_splits:
    metrics = evaluate.evaluate_params(model_cfg, params,
                                       data.load_split(config.data, split_name), vocab,
                                       folds=config.eval_folds, mesh=mesh,
                                       pooling=config.pooling_kernel)
    metrics.update(model=model_cfg["name"], variant=model_cfg.get("variant"))
    writer.write_scalars(step, evaluate.scalar_metrics(metrics, split_name))
    if distributed.is_primary():  # Every process has the same metrics; one writes them.
      evaluate.write_metrics(workdir, split_name, metrics)
      print(evaluate.format_table(metrics, f"{split_name} (best dev checkpoint)"), flush=True)
      _print_beside_init(config, split_name, metrics)
    results[split_name] = metrics
  writer.flush()
  return results


def _print_beside_init(config, split_name: str, metrics: dict) -> None:
  """With a warm start, the run it started from beside this one (e.g. stage 1 | CAMP)."""
  if not config.init_from:
    return
  before = evaluate.read_metrics(config.init_from, split_name)
  if before:
    name = lambda m: m.get("variant") or m.get("model") or "model"
    print(evaluate.format_comparison(
        {f"{name(before)} ({config.init_from})": before, f"{name(metrics)} (this run)": metrics},
        f"{split_name}: this run beside the one it started from"), flush=True)


def flatten_config(config) -> dict:
  flat = flax.traverse_util.flatten_dict(config.to_dict())
  return {"/".join(k): (v if isinstance(v, (int, float, str, bool)) else str(v))
          for k, v in flat.items()}
