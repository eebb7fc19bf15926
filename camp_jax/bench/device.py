r"""The first minutes on a machine: what it is, whether the kernel is right, how fast CAMP runs.

  python -m camp_jax.bench device [--json]                  # Flickr30K sizes
  python -m camp_jax.bench device --small [--pooling=interpret] [--json]   # CPU, seconds

One run reports, each figure measured here:
  * the platform, device kind and count, jax / jaxlib and accelerator plugin versions;
  * the Pallas pooling kernel's check against XLA (`kernel_check`), where the config's
    `pooling_kernel` picks it (TPU for "auto"; --pooling=interpret anywhere); what fails
    falls back to XLA for the rest of the run, as training does;
  * exhaustive scoring of a Flickr30K-1K-test-sized split (1,000 x 5,000 pairs) of
    synthetic embeddings of the config's model (`bench.scoring.synthetic_embeddings`):
    compile + first run, then the best of `repeats`; and the fast path's largest difference
    from the reference transcription (`scoring.reference_score_matrix`) on one tile of it;
  * the config's train step (default configs/flickr30k.py:stage2,synthetic: batch 128, real
    sizes) by `bench.train_step.run`: steps/s; on TPU and GPU also the step's roofline
    (`camp_jax.aot.analysis`: FLOPs and HBM bytes of the same program, compiled for these
    devices, against `aot.chips`' peak figures) and the fraction of it the step achieved.
"""
import dataclasses
import importlib.metadata
import math
import time

from absl import logging
import jax
import numpy as np

from camp_jax import bench, distributed, inference, kernel_check, models, scoring, sharding
from camp_jax.aot import analysis, chips, programs, topology, workload
from camp_jax.bench import scoring as scoring_bench, train_step

CONFIG = "configs/flickr30k.py:stage2,synthetic"
SIZES = dict(config=CONFIG, images=1_000, captions=5_000)          # Flickr30K 1K test
SMALL = dict(config="configs/default.py:stage2,tiny", images=8, captions=40)
PLUGINS = distributed.ACCELERATOR_PLUGINS + ("jax-cuda12-pjrt", "jax-cuda13-pjrt")
REFERENCE_TILE = (8, 64)  # images x captions the reference transcription scores


def versions() -> dict:
  """{"jax", "jaxlib", "plugins": {name: version}} of the installed packages."""
  found = {}
  for name in ("jax", "jaxlib") + PLUGINS:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {"jax": jax.__version__, "jaxlib": found.get("jaxlib"),
          "plugins": {k: v for k, v in found.items() if k in PLUGINS}}


def chip_of(device_kind: str) -> chips.Chip | None:
  """The `aot.chips` entry whose device_kind jax reports, or None."""
  return next((c for c in chips.CHIPS.values() if c.device_kind == device_kind), None)


def _at_width(program: analysis.Program, width: int) -> analysis.Program:
  """`program` (a train step) with caption batches `width` tokens wide, as the timed step."""
  state, batch = program.args
  tokens = batch["tokens"]
  batch = {**batch, "tokens": jax.ShapeDtypeStruct((tokens.shape[0], width), tokens.dtype,
                                                   sharding=tokens.sharding)}
  return dataclasses.replace(program, args=(state, batch),
                             rebuild=lambda d: _at_width(program.rebuild(d), width))


def roofline(config, step: dict) -> dict:
  """The timed step's roofline on these devices and the fraction of it achieved."""
  platform, kind = jax.default_backend(), jax.devices()[0].device_kind
  chip = chip_of(kind)
  if platform not in ("tpu", "gpu") or chip is None:
    why = (f"not available on {platform}: camp_jax.aot has figures for TPU and GPU chips only"
           if platform not in ("tpu", "gpu") else
           f"not available: no figures for device kind {kind!r} in camp_jax.aot.chips")
    return {"available": False, "why": why}
  if step["train_caption_chunk"]:
    return {"available": False, "why": f"train_caption_chunk={step['train_caption_chunk']}: "
            "XLA counts one loop body of caption blocks, not the step"}
  config = config.copy_and_resolve_references()
  config.train_caption_chunk = 0                          # as the timed step resolved it
  n = jax.device_count()
  program = _at_width(programs.train_program(config, jax.devices()), step["caption_width"])
  report = analysis.analyze(program, topology.Topology(f"{chip.name}:{n}", chip, (n,)),
                            config.model.dtype)
  if report["roofline_s"] is None:
    return {"available": False, "why": f"no cost analysis ({report['cost_source']})"}
  return {"available": True, "chip": chip.name, "roofline_s": report["roofline_s"],
          "bound": report["bound"], "flops_per_chip": report["flops_per_chip"],
          "hbm_bytes_per_chip": report["hbm_bytes_per_chip"],
          "cost_source": report["cost_source"],
          "fraction_achieved": report["roofline_s"] / step["step_s"]}


def _score(model, model_cfg, params, *, images, captions, regions, pooling, repeats, seed):
  """Exhaustive scoring of images x captions synthetic embeddings, and the reference tile."""
  rng = np.random.default_rng(seed)
  img, cap, mask = scoring_bench.synthetic_embeddings(inference.Predictor(model_cfg, params),
                                                      rng, images, captions, regions)
  run = lambda: scoring.score_matrix(model, params, img, cap, mask, pooling=pooling)
  start = time.perf_counter()
  scores = run()
  first_s, best_s = time.perf_counter() - start, math.inf
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    scores = run()
    best_s = min(best_s, time.perf_counter() - start)
  i, c = min(REFERENCE_TILE[0], images), min(REFERENCE_TILE[1], captions)
  ref = scoring.reference_score_matrix(model, params, img[:i], cap[:c], mask[:c], i, c)
  return ({"images": images, "captions": captions, "pairs": scores.size,
           "compile_and_first_run_s": first_s, "seconds": best_s,
           "pairs_per_s": scores.size / best_s, "repeats": max(1, repeats),
           "mean_caption_length": float(mask.sum(1).mean())},
          {"images": i, "captions": c, "max_abs_diff": float(np.abs(ref - scores[:i, :c]).max()),
           "score_std": float(ref.std())})


def run(config, *, images: int, captions: int, embed_dim: int | None = None,
        batch_size: int | None = None, dtype: str | None = None, pooling: str | None = None,
        steps: int = 5, repeats: int = 1, seed: int = 0) -> dict:
  """Everything the module docstring lists, for `config` (a run config, not changed).

  Args:
    config: the train step's run config; its model (`models.model_config`) and region
      count also serve the kernel check and the scoring.
    images, captions: the exhaustively scored split's sizes.
    embed_dim, batch_size, dtype, pooling: override config.model.embed_dim,
      config.batch_size, config.model.dtype, config.pooling_kernel.
    steps: timed train steps after the first; repeats: timed scoring runs, best kept.
  """
  if images < 1 or captions < 1:
    raise ValueError(f"--images={images} --captions={captions}: both must be positive")
  config = config.copy_and_resolve_references()
  for field, value in (("model.embed_dim", embed_dim), ("batch_size", batch_size),
                       ("model.dtype", dtype), ("pooling_kernel", pooling)):
    if value is not None:
      parent, _, name = field.rpartition(".")
      setattr(config.model if parent else config, name, value)
  devices = jax.devices()
  if devices[0].platform == "cpu" and images * captions > 100_000:
    logging.warning("scoring %d x %d pairs on CPU takes hours at Flickr30K sizes; "
                    "--small measures CPU sizes in a minute", images, captions)
  out = {"platform": jax.default_backend(), "device_kind": devices[0].device_kind,
         "num_devices": len(devices), "num_processes": jax.process_count(), **versions()}

  wl = workload.for_config(config)
  model_cfg = models.model_config(config, wl.vocab_size, wl.img_dim)
  model, mesh = models.build(model_cfg), sharding.make_mesh()
  params = models.init_params(model, jax.random.key(seed))
  check = lambda *a, **k: kernel_check.check_pooling(*a, regions=wl.regions, seed=seed, **k)
  used, result = kernel_check.resolve_pooling(config, model, params, mesh, check=check)
  out["pooling"] = {"requested": config.pooling_kernel,
                    "kernel": scoring.pooling_for(mesh, config.pooling_kernel),
                    "used": scoring.pooling_for(mesh, used), "check": result}
  config.pooling_kernel = used
  out["scoring"], out["fast_vs_reference"] = _score(
      model, model_cfg, params, images=images, captions=captions, regions=wl.regions,
      pooling=used, repeats=repeats, seed=seed)
  out["scoring"].update(embed_dim=model_cfg["embed_dim"], regions=wl.regions,
                        dtype=model_cfg.get("dtype", "float32"))
  del params

  step = train_step.run(config.copy_and_resolve_references(), steps)
  out["train_step"] = {k: step[k] for k in (
      "batch_size", "embed_dim", "variant", "dtype", "regions", "caption_width",
      "train_caption_chunk", "mesh", "compile_s", "step_s", "steps_per_s", "examples_per_s",
      "xla_gflop", "loss")}
  out["roofline"] = roofline(config, step)
  out["peak_rss_mb"] = bench.peak_rss_mb()
  return out


def _check_line(p: dict) -> str:
  c = p["check"]
  if c is None:
    return (f"pooling kernel: not checked: pooling_kernel={p['requested']!r} is "
            f"{p['kernel']!r} here (the kernel runs for 'auto' on TPU, or when asked)")
  if c["ok"]:
    return (f"pooling kernel: {c['kernel']!r} agrees with XLA: max |diff| "
            f"{c['max_abs_diff']:.2e} (tolerance {c['tolerance']:.0e})")
  found = (f"max |diff| {c['max_abs_diff']:.2e} > tolerance {c['tolerance']:.0e}"
           if c["max_abs_diff"] is not None else c.get("error"))
  return f"pooling kernel: {c['kernel']!r} FAILED its check ({found}): XLA's pooling used"


def describe(r: dict) -> str:
  plugins = ", ".join(f"{k} {v}" for k, v in r["plugins"].items()) or "none"
  s, ref, t, roof = r["scoring"], r["fast_vs_reference"], r["train_step"], r["roofline"]
  lines = [
      f"device: {r['platform']}, {r['device_kind']} x{r['num_devices']} "
      f"({r['num_processes']} process{'es' if r['num_processes'] > 1 else ''})",
      f"versions: jax {r['jax']}, jaxlib {r['jaxlib']}; accelerator plugins: {plugins}",
      _check_line(r["pooling"]),
      f"fast vs reference: max |diff| {ref['max_abs_diff']:.2e} on {ref['images']} x "
      f"{ref['captions']} pairs (scores' std {ref['score_std']:.2e})",
      f"scoring: {s['images']} x {s['captions']} pairs in {s['seconds']:.3g} s "
      f"({s['pairs_per_s']:,.0f} pairs/s, best of {s['repeats']}; compile + first run "
      f"{s['compile_and_first_run_s']:.1f} s), d={s['embed_dim']} {s['dtype']}, "
      f"{s['regions']} regions, pooling {r['pooling']['used']}",
      f"train step: batch {t['batch_size']} d={t['embed_dim']} {t['variant']} {t['dtype']}, "
      f"caption width {t['caption_width']}: {t['step_s'] * 1e3:.1f} ms ({t['steps_per_s']:.2f} "
      f"steps/s, {t['examples_per_s']:.0f} examples/s; compile {t['compile_s']:.1f} s)"]
  if roof["available"]:
    lines.append(f"roofline ({roof['chip']}): {roof['roofline_s'] * 1e3:.2f} ms "
                 f"({roof['bound']}-bound, {roof['cost_source']}): "
                 f"{100 * roof['fraction_achieved']:.1f}% of it achieved")
  else:
    lines.append(f"roofline: {roof['why']}")
  lines.append(f"peak RSS: {r['peak_rss_mb']:.0f} MB")
  return "\n".join(lines)
