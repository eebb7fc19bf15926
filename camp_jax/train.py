"""Training: the train state, the optimizer, one sharded jit train step, and the loop.

The train step computes the loss on the score matrix of the whole global batch: every
image against every caption, hardest negatives taken over the global batch. Images are
sharded over the mesh's `data` axis and captions gathered, so each device scores its
rows of the matrix (its share of the pairs). Tensorflow is imported only by the input
pipeline and the metric writers, inside `train_and_evaluate`.
"""
import functools
import pathlib
import re
import signal
from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from camp_jax import checkpoints, evaluate, losses, models, scoring, sharding


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def model_config(config: ml_collections.ConfigDict, vocab_size: int, img_dim: int) -> dict:
  """The JSON-able model config (what bundles store) from the run config and the data."""
  cfg = {k: v for k, v in config.model.to_dict().items()}
  cfg.update(vocab_size=vocab_size, img_dim=img_dim)
  if cfg.get("pad_words_to", None) == 0:
    cfg["pad_words_to"] = None  # 0 on the command line means "no padding".
  if cfg.get("name") == "vse":
    for key in ("variant", "pad_words_to", "pool_heads", "dropout_rate"):
      cfg.pop(key, None)
  return cfg


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
  # Rows of the score matrix (images) stay sharded; every device sees all captions.
  img_emb = jax.lax.with_sharding_constraint(img_emb, sharding.data_sharding(mesh))
  cap_emb, cap_mask = jax.lax.with_sharding_constraint((cap_emb, cap_mask),
                                                        sharding.replicated(mesh))
  if not isinstance(model, models.CAMP) or model.dropout_rate or not config.fast_scoring:
    scores = model.apply(variables, img_emb, cap_emb, cap_mask, deterministic=False,
                         rngs={"dropout": rng}, method="score_matrix")
  else:  # The hoisted exact path: same scores and gradients, far fewer FLOPs.
    scores = scoring.caption_chunked(
        functools.partial(scoring.fast_score_matrix, model, params), img_emb, cap_emb,
        cap_mask, config.train_caption_chunk)
  loss = losses.LOSSES[config.loss](scores)
  off_diagonal = jnp.where(jnp.eye(scores.shape[0], dtype=bool), -jnp.inf, scores)
  aux = {"loss": loss, "positive_score": jnp.mean(jnp.diagonal(scores)),
         "hardest_negative_score": jnp.mean(jnp.max(off_diagonal, axis=1))}
  if config.shortlist_loss_weight:
    img_vec, cap_vec = models.vse.pooled_image(img_emb), models.vse.pooled_caption(cap_emb,
                                                                                   cap_mask)
    aux["shortlist_loss"] = losses.max_violation_hinge(img_vec @ cap_vec.T)
    loss = loss + config.shortlist_loss_weight * aux["shortlist_loss"]
  if getattr(model, "variant", None) == "gate_fusion":
    # Gate statistics of the positive pairs (one pair per image, cheap next to the loss).
    out = jax.lax.stop_gradient(model.apply(variables, img_emb, cap_emb, cap_mask,
                                            method="explain_pair"))
    aux["region_gate"] = jnp.mean(out["region_gate"])
    aux["word_gate"] = jnp.sum(out["word_gate"] * cap_mask) / jnp.sum(cap_mask)
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
  """The jit-compiled step: state replicated and donated, batch sharded over `data`."""
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                           mesh=mesh)
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh), donate_argnums=(0,))


def init_params(model, model_cfg: dict, rng, regions: int = 2):
  images = jnp.zeros((1, regions, model_cfg["img_dim"]), jnp.float32)
  tokens, lengths = jnp.ones((1, 3), jnp.int32), jnp.full((1,), 3, jnp.int32)
  return model.init(rng, images, tokens, lengths)["params"]


def params_from_run(params, workdir, which: str = "best"):
  """Copies every parameter of another run whose path and shape match; the rest stay fresh."""
  _, loaded, _ = checkpoints.load_trained(workdir, which)
  flat, source = flax.traverse_util.flatten_dict(params), flax.traverse_util.flatten_dict(loaded)
  copied, fresh = [], []
  for path, value in flat.items():
    if path in source and np.shape(source[path]) == np.shape(value):
      flat[path] = jnp.asarray(source[path], value.dtype)
      copied.append("/".join(path))
    else:
      fresh.append("/".join(path))
  logging.info("init_from %s: %d parameters copied, fresh: %s", workdir, len(copied), fresh)
  if not copied:
    raise ValueError(f"config.init_from={workdir}: no parameter matches this model by name "
                     "and shape")
  return flax.traverse_util.unflatten_dict(flat)


def create_train_state(config, model, model_cfg, steps_per_epoch: int, mesh):
  rng, init_rng = jax.random.split(jax.random.key(config.seed))
  params = init_params(model, model_cfg, init_rng)
  if config.init_from:
    params = params_from_run(params, config.init_from, config.init_from_checkpoint)
  tx, schedule = create_optimizer(config, params, steps_per_epoch)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(rng))
  return jax.device_put(state, sharding.replicated(mesh)), tx, schedule


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


def evaluate_params(model_cfg, params, split, vocab, *, folds=None) -> dict:
  """Recalls of `params` on a precomp split, scored in tiles."""
  from camp_jax import inference  # pylint: disable=g-import-not-at-top
  from camp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  # Every process scores the whole split on its own devices from its copy of the
  # replicated params: no cross-process arrays, and the same metrics on every process.
  predictor = inference.Predictor(model_cfg, sharding.host_local(params))
  arrays = pipeline.eval_arrays(split, vocab)
  return evaluate.evaluate_arrays(
      (predictor.encode_images, predictor.encode_captions, predictor.score_matrix),
      arrays["images"], arrays["tokens"], arrays["lengths"],
      captions_per_image=split.captions_per_image, folds=folds)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains with periodic dev evaluation and checkpoints; evaluates the best on test."""
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  from camp_jax.data import inputs, pipeline  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir).absolute()
  mesh = sharding.make_mesh()
  data = inputs.load(config.data)
  train_split, dev_split = data.split(config.data.train_split), data.split(config.data.dev_split)
  if config.data.dev_images:
    if not 0 < config.data.dev_images <= dev_split.num_images:
      raise ValueError(f"config.data.dev_images={config.data.dev_images}: expected 0 (all) or "
                       f"1..{dev_split.num_images}, the images of split {dev_split.name!r}")
    logging.info("validating on the first %d of %d dev images", config.data.dev_images,
                 dev_split.num_images)
    dev_split = dev_split.slice_images(0, config.data.dev_images)
  model_cfg = model_config(config, len(data.vocab), train_split.feature_dim)
  model = models.build(model_cfg)
  steps_per_epoch = train_split.num_images // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size {config.batch_size} exceeds the "
                     f"{train_split.num_images} training images")
  num_steps = config.num_epochs * steps_per_epoch
  state, tx, schedule = create_train_state(config, model, model_cfg, steps_per_epoch, mesh)
  p_train_step = make_train_step(model, tx, schedule, config, mesh)

  latest = checkpoints.manager(workdir / "checkpoints", config.keep_checkpoints)
  best = checkpoints.manager(workdir / "best", 1)
  extra = {"model_config": model_cfg, "vocab_path": str(data.vocab_path),
           "best_rsum": -1.0, "data": None}
  restored = checkpoints.restore(latest, state, fall_back=config.checkpoint_fallback)
  if restored:
    state, extra, step = restored
    logging.info("resumed from %s/%d", latest.directory, step)
  # Each process reads only its rows of every global batch.
  batches = pipeline.train_batches(train_split, data.vocab, global_batch_size=config.batch_size,
                                   seed=config.seed, state=extra["data"],
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams({k: v for k, v in flatten_config(config).items()})
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log_every_steps)
  preemption = _Preemption()
  step, pending = int(state.step), []
  logging.info("training %s for %d steps (%d per epoch) on %d devices", model_cfg["name"],
               num_steps, steps_per_epoch, jax.device_count())
  try:
    while step < num_steps:
      state, aux = p_train_step(state, sharding.global_batch(next(batches), mesh))
      step += 1
      pending.append(aux)
      report(step)
      if step % config.log_every_steps == 0 or step == num_steps:
        summary = jax.tree.map(lambda *x: float(np.mean(x)), *jax.device_get(pending))
        writer.write_scalars(step, summary)
        pending = []
      epoch_end = step % steps_per_epoch == 0
      epoch = step // steps_per_epoch
      if epoch_end and (epoch % config.eval_every_epochs == 0 or step == num_steps):
        metrics = evaluate_params(model_cfg, state.params, dev_split, data.vocab)
        writer.write_scalars(step, {f"dev/{k}": v for k, v in metrics.items()})
        if sharding.is_primary():
          logging.info("%s", evaluate.format_table(metrics, f"dev, epoch {epoch}"))
        if metrics["rsum"] > extra["best_rsum"]:
          extra = {**extra, "best_rsum": metrics["rsum"], "best_step": step}
          checkpoints.save(best, step, state, {**extra, "data": batches.get_state(),
                                               "metrics": metrics})
          # Orbax names its cross-process barriers by step only: two managers finishing
          # async saves of the same step at once collide ("Barrier ... already ongoing").
          best.wait_until_finished()
      # A SIGTERM may reach some processes only: all stop at the same step (one collective).
      preempted = sharding.any_process(preemption.requested)
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
    split = data.split(split_name)
    metrics = evaluate_params(model_cfg, params, split, data.vocab,
                              folds=config.eval_folds or None)
    writer.write_scalars(step, {f"{split_name}/{k}": v for k, v in metrics.items()})
    if sharding.is_primary():  # Every process has the same metrics; one writes them.
      evaluate.write_metrics(workdir, split_name, metrics)
      print(evaluate.format_table(metrics, f"{split_name} (best dev checkpoint)"), flush=True)
    results[split_name] = metrics
  writer.flush()
  return results


def flatten_config(config) -> dict:
  flat = flax.traverse_util.flatten_dict(config.to_dict())
  return {"/".join(k): (v if isinstance(v, (int, float, str, bool)) else str(v))
          for k, v in flat.items()}


def evaluate_run(config, workdir, checkpoint="best", bundle_path=None, split=None) -> dict:
  """Evaluates a run's checkpoint (or a bundle) on `split` or config.eval_splits."""
  from camp_jax import bundle  # pylint: disable=g-import-not-at-top
  from camp_jax.data import inputs  # pylint: disable=g-import-not-at-top
  data = inputs.load(config.data)
  if bundle_path:
    model_cfg, params, _, _ = bundle.load(bundle_path)
  else:
    model_cfg, params, _ = checkpoints.load_trained(workdir, checkpoint)
  results = {}
  for name in ([split] if split else config.eval_splits):
    metrics = evaluate_params(model_cfg, params, data.split(name), data.vocab,
                              folds=config.eval_folds or None)
    if sharding.is_primary():
      evaluate.write_metrics(workdir, name, metrics)
      print(evaluate.format_table(metrics, name), flush=True)
    results[name] = metrics
  return results
