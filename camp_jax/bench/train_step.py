"""The real jitted train step of a run config (`train.make_train_step`), on its own data."""
import time

import jax

from camp_jax import bench, models, sharding, train


def run(config, steps: int = 5) -> dict:
  """Compiles and runs one step, then times `steps` more (config.init_from is ignored)."""
  from camp_jax import data  # pylint: disable=g-import-not-at-top
  from camp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config.unlock().init_from = ""
  vocab = data.load_vocab(config.data)
  split = data.load_split(config.data, config.data.train_split)
  model_cfg = models.model_config(config, len(vocab), split.feature_dim)
  model = models.build(model_cfg)
  mesh = train.make_mesh(config)
  steps_per_epoch = max(1, split.num_images // config.batch_size)
  state, tx, schedule = train.create_train_state(config, model, model_cfg, steps_per_epoch, mesh)
  with pipeline.train_batches(split, vocab, global_batch_size=config.batch_size,
                              seed=0) as batches:
    batch = sharding.global_batch(next(batches), mesh, config.batch_size)
  config = train.resolve_caption_chunk(config, model, tx, schedule, mesh, state,
                                       jax.tree.map(lambda x: x.shape, batch))
  step = train.make_train_step(model, tx, schedule, config, mesh)
  start = time.perf_counter()
  state, aux = step(state, batch)
  jax.block_until_ready(aux)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, aux = step(state, batch)
  jax.block_until_ready(aux)
  seconds = (time.perf_counter() - start) / steps
  return {"device_kind": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "mesh": dict(mesh.shape), "batch_size": config.batch_size,
          "embed_dim": model_cfg["embed_dim"], "variant": model_cfg.get("variant"),
          "dtype": model_cfg.get("dtype", "float32"), "fast_scoring": config.fast_scoring,
          "train_caption_chunk": config.train_caption_chunk, "regions": split.num_regions,
          "caption_width": int(batch["tokens"].shape[1]), "compile_and_first_step_s": compile_s,
          "step_s": seconds, "steps_per_s": 1.0 / seconds,
          "examples_per_s": config.batch_size / seconds, "loss": float(aux["loss"]),
          "peak_rss_mb": bench.peak_rss_mb()}


def describe(r: dict) -> str:
  return "\n".join([
      f"device: {r['device_kind']} x{r['num_devices']} mesh {r['mesh']}  batch "
      f"{r['batch_size']}  d={r['embed_dim']} {r['variant']} {r['dtype']}  {r['regions']} "
      f"regions  caption width {r['caption_width']}",
      f"train step: {r['step_s'] * 1e3:.1f} ms  ({r['steps_per_s']:.2f} steps/s, "
      f"{r['examples_per_s']:.0f} examples/s; compile + first step "
      f"{r['compile_and_first_step_s']:.1f} s)",
      f"peak RSS: {r['peak_rss_mb']:.0f} MB"])
