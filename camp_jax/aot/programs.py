"""The project's own programs, described abstractly for a device list.

  train_program(config, devices) -> analysis.Program    train.make_train_step, real state
  eval_program(config, devices)  -> analysis.Program    scoring.score_tile, as scoring plans
                                                        it for the eval split

Nothing here copies the train step: the state is `train.create_train_state` under
`jax.eval_shape` (on one CPU device; only shapes are kept), the step is
`train.make_train_step` on the mesh `sharding.mesh_shape` picks for the device count.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from camp_jax import models, scoring, sharding, train
from camp_jax.aot import analysis, workload

SDS = jax.ShapeDtypeStruct


def _with_sharding(tree, sharding_):
  return jax.tree.map(lambda x: SDS(x.shape, x.dtype, sharding=sharding_), tree)


def _model(config, wl: workload.Workload):
  model_cfg = models.model_config(config, wl.vocab_size, wl.img_dim)
  return models.build(model_cfg), model_cfg


def _mesh(config, devices, batch: int):
  shape = sharding.mesh_shape(len(devices), batch, config.mesh)
  return sharding.make_mesh(shape, devices)


def _cpu_mesh():
  return sharding.make_mesh((1, 1), jax.devices("cpu")[:1])


def train_program(config, devices) -> analysis.Program:
  """train.make_train_step of `config` for `devices`, with abstract state and batch."""
  config = config.copy_and_resolve_references()
  config.init_from = ""                                  # shapes only: nothing to restore
  wl = workload.for_config(config)
  model, model_cfg = _model(config, wl)
  mesh = _mesh(config, devices, wl.batch_size)
  made = {}

  def init():
    state, tx, schedule = train.create_train_state(config, model, model_cfg,
                                                   wl.steps_per_epoch, _cpu_mesh())
    made.update(tx=tx, schedule=schedule)
    return state

  state = jax.eval_shape(init)
  state = jax.tree.map(lambda x, s: SDS(x.shape, x.dtype, sharding=s), state,
                       sharding.state_sharding(mesh, state))
  rows = sharding.batch_sharding(mesh)
  batch = {"images": SDS((wl.batch_size, wl.regions, wl.img_dim), jnp.float32, sharding=rows),
           "tokens": SDS((wl.batch_size, wl.caption_width), jnp.int32, sharding=rows),
           "lengths": SDS((wl.batch_size,), jnp.int32, sharding=rows)}
  step = train.make_train_step(model, made["tx"], made["schedule"], config, mesh, state)
  info = {"mesh": dict(mesh.shape), "batch_size": wl.batch_size, "dataset": wl.dataset,
          "regions": wl.regions, "caption_width": wl.caption_width,
          "train_caption_chunk": config.train_caption_chunk, "dtype": config.model.dtype,
          "variant": config.model.variant, "steps_per_epoch": wl.steps_per_epoch}
  return analysis.Program("train_step", step, (state, batch), {}, info,
                          calls=wl.steps_per_epoch, unit="epoch",
                          rebuild=lambda d: train_program(config, d))


def eval_plan(wl: workload.Workload, width: int, dim: int, n_dev: int, platform: str) -> dict:
  """`scoring.tile_plan` of the eval split, every caption at the widest bucket (an upper
  bound on the tiles): images per device and group, captions per chunk and block."""
  plan = scoring.tile_plan(wl.eval_images, np.full(wl.eval_captions, width), wl.regions, dim,
                           n_dev, scoring.default_tile_bytes(platform))
  return {"images_per_device": plan.images_per_device, "image_group": plan.image_group,
          "groups": plan.groups, "caption_chunk": plan.chunks[0].size,
          "caption_block": plan.chunks[0].block, "chunks": len(plan.chunks),
          "tiles": plan.tiles}


def eval_program(config, devices, platform: str | None = None) -> analysis.Program:
  """scoring.score_tile: one image group (split over every device) x one caption chunk's
  features (computed once per chunk, outside the tile), at the config's first eval split
  (all captions at the widest bucket). `platform` sizes the tiles (default: the devices'),
  so a CPU rebuild keeps the accelerator's plan."""
  config = config.copy_and_resolve_references()
  wl = workload.for_config(config)
  model, model_cfg = _model(config, wl)
  if not model.PAIRWISE:
    raise ValueError(f"model {model_cfg['name']!r} scores by one matrix product; the eval "
                     "tile analysis is for pairwise (CAMP) models")
  dim = model_cfg["embed_dim"]
  width = max(wl.caption_width, model_cfg.get("pad_words_to") or 0)
  mesh = sharding.make_mesh((len(devices), 1), devices)
  platform = platform or np.asarray(devices).flat[0].platform
  plan = eval_plan(wl, width, dim, mesh.size, platform)
  params = jax.eval_shape(functools.partial(models.init_params, model), jax.random.key(0))
  img = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="image_features"),
                       params, SDS((plan["image_group"], wl.regions, dim), jnp.float32))
  cap = jax.eval_shape(lambda p, x, m: model.apply({"params": p}, x, m,
                                                   method="caption_features"),
                       params, SDS((plan["caption_chunk"], width, dim), jnp.float32),
                       SDS((plan["caption_chunk"], width), jnp.bool_))
  rep = sharding.replicated(mesh)
  args = (model, _with_sharding(params, rep), _with_sharding(img, sharding.flat_sharding(mesh)),
          _with_sharding(cap, rep))
  info = {"mesh": dict(mesh.shape), "eval_split": wl.eval_split,
          "eval_images": wl.eval_images, "eval_captions": wl.eval_captions,
          "caption_width": width, "embed_dim": dim, "dtype": config.model.dtype, **plan,
          "pairs_per_tile": plan["image_group"] * plan["caption_chunk"],
          "tile_fraction_of_split": plan["image_group"] * plan["caption_chunk"]
                                    / math.prod((wl.eval_images, wl.eval_captions))}
  return analysis.Program("eval_tile", scoring.score_tile, args,
                          {"mesh": mesh, "block": plan["caption_block"],
                           "pooling": scoring.pooling_for(mesh, config.pooling_kernel)}, info,
                          calls=plan["tiles"], unit="eval",
                          rebuild=lambda d: eval_program(config, d, platform))


PROGRAMS = {"train": train_program, "eval": eval_program}
