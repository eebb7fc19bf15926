"""The real jitted train step of a run config (`train.make_train_step`), on its own data.

Besides the time, it prints the FLOPs XLA counts for the compiled step and the rate they
ran at, so two runs (say the fast path and `--config.fast_scoring=False`) can be compared
by work done as well as by time. With `train_caption_chunk > 0` the captions are scored in
a loop, whose body XLA counts once: the count is then not the step's, and no rate is given.
"""
import time

import jax

from camp_jax import bench, sharding, train
from camp_jax.aot import analysis
from camp_jax.data import pipeline


def run(config, steps: int = 5) -> dict:
  """Compiles and runs one step, then times `steps` more (config.init_from is ignored)."""
  config.unlock().init_from = ""
  setup = train.setup(config)
  state, mesh, split, model_cfg = setup.state, setup.mesh, setup.split, setup.model_cfg
  with pipeline.train_batches(split, setup.vocab, global_batch_size=config.batch_size,
                              seed=0) as batches:
    batch = sharding.global_batch(next(batches), mesh, config.batch_size)
  config, step = setup.step(batch["tokens"].shape[1])
  start = time.perf_counter()
  step = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = analysis.cost(step) or {}
  start = time.perf_counter()
  state, aux = step(state, batch)
  jax.block_until_ready(aux)
  first_step_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, aux = step(state, batch)
  jax.block_until_ready(aux)
  seconds = (time.perf_counter() - start) / steps
  whole_step = config.train_caption_chunk == 0 and "flops" in cost
  return {"device_kind": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "mesh": dict(mesh.shape), "batch_size": config.batch_size,
          "embed_dim": model_cfg["embed_dim"], "variant": model_cfg.get("variant"),
          "dtype": model_cfg.get("dtype", "float32"), "fast_scoring": config.fast_scoring,
          "train_caption_chunk": config.train_caption_chunk, "regions": split.num_regions,
          "caption_width": int(batch["tokens"].shape[1]), "compile_s": compile_s,
          "first_step_s": first_step_s, "step_s": seconds,
          "xla_gflop": cost["flops"] / 1e9 if "flops" in cost else None,
          "xla_gflop_is_per_step": whole_step,
          "gflop_per_s": cost["flops"] / 1e9 / seconds if whole_step else None,
          "steps_per_s": 1.0 / seconds,
          "examples_per_s": config.batch_size / seconds, "loss": float(aux["loss"]),
          "peak_rss_mb": bench.peak_rss_mb()}


def describe(r: dict) -> str:
  if r["xla_gflop"] is None:
    work = "XLA gives no FLOP count on this backend"
  elif r["xla_gflop_is_per_step"]:
    work = f"{r['xla_gflop']:.1f} GFLOP per step (XLA), run at {r['gflop_per_s']:.1f} GFLOP/s"
  else:
    work = (f"{r['xla_gflop']:.1f} GFLOP counted by XLA, one loop body of caption blocks "
            "once: not the step's")
  return "\n".join([
      f"device: {r['device_kind']} x{r['num_devices']} mesh {r['mesh']}  batch "
      f"{r['batch_size']}  d={r['embed_dim']} {r['variant']} {r['dtype']}  {r['regions']} "
      f"regions  caption width {r['caption_width']}",
      f"train step: {r['step_s'] * 1e3:.1f} ms  ({r['steps_per_s']:.2f} steps/s, "
      f"{r['examples_per_s']:.0f} examples/s; compile {r['compile_s']:.1f} s, first step "
      f"{r['first_step_s']:.1f} s)",
      work,
      f"peak RSS: {r['peak_rss_mb']:.0f} MB"])
