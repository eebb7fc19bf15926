r"""Benchmarks on synthetic inputs, one subcommand each.

  python -m camp_jax.bench scoring --embed-dim 1024 --images 20 --captions 500 [--json]
  python -m camp_jax.bench scoring --preset flickr30k_test            # 1000 x 5000, d=1024
  python -m camp_jax.bench scoring --preset coco5k --slice-images 32  # 5000 x 25000, d=256
  python -m camp_jax.bench train_step --config configs/default.py     # the real train step

`scoring` times the reference path (every pair expanded, captions padded to 50 slots as the
original) and the fast path (`scoring.score_matrix`) in the same run, both after
compilation, on random parameters (`model.init`) and synthetic inputs: 36 regions, caption
lengths drawn like Flickr30K's (mean ~14.5 tokens with <start>/<end>, range 5..49).
Add a subcommand by writing `def cmd_NAME(args) -> dict` with `add_NAME_args(parser)` and
listing it in COMMANDS.
"""
import argparse
import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from camp_jax import models, scoring

PRESETS = {
    "flickr30k_test": dict(images=1000, captions=5000, embed_dim=1024),
    "coco5k": dict(images=5000, captions=25000, embed_dim=256),
}
MAX_WORDS = 50  # The original pads every caption to 50 word slots.


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def flickr_like_lengths(rng, n: int) -> np.ndarray:
  """Caption lengths with <start>/<end>: right-skewed, mean ~14.5, within [5, 49]."""
  return np.clip(np.round(rng.lognormal(np.log(13.6), 0.33, n)), 5, 49).astype(np.int32)


def synthetic_embeddings(model, params, rng, n_img, n_cap, regions, chunk=1000):
  """Region and word embeddings from the model's own encoders on random inputs.

  Returns img_emb (n_img, R, d), cap_emb (n_cap, 50, d), cap_mask (n_cap, 50) as numpy.
  """
  enc_img = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_images"))
  enc_cap = jax.jit(lambda p, t, n: model.apply({"params": p}, t, n, method="encode_captions"))
  img, caps, masks = [], [], []
  for i in range(0, n_img, chunk):
    feats = rng.normal(size=(min(chunk, n_img - i), regions, model.img_dim)).astype(np.float32)
    img.append(np.asarray(enc_img(params, np.maximum(feats, 0.0))))  # ReLU-like features.
  for i in range(0, n_cap, chunk):
    n = min(chunk, n_cap - i)
    lengths = flickr_like_lengths(rng, n)
    tokens = rng.integers(4, model.vocab_size, size=(n, MAX_WORDS)).astype(np.int32)
    tokens[np.arange(MAX_WORDS)[None] >= lengths[:, None]] = 0
    emb, mask = enc_cap(params, tokens, lengths)
    caps.append(np.asarray(emb))
    masks.append(np.asarray(mask))
  return np.concatenate(img), np.concatenate(caps), np.concatenate(masks)


def _divisor_at_most(n: int, most: int) -> int:
  return max(k for k in range(1, min(n, most) + 1) if n % k == 0)


def add_scoring_args(p: argparse.ArgumentParser):
  p.add_argument("--preset", choices=sorted(PRESETS))
  p.add_argument("--images", type=int, default=20)
  p.add_argument("--captions", type=int, default=500)
  p.add_argument("--embed-dim", type=int, default=1024)
  p.add_argument("--img-dim", type=int, default=2048)
  p.add_argument("--regions", type=int, default=36)
  p.add_argument("--variant", choices=models.VARIANTS, default="gate_fusion")
  p.add_argument("--pad-words-to", type=int, default=None,
                 help="stage-1 slot count (default 50 for cross_attention)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--max-tile-mb", type=int, default=None, help="default: the driver's")
  p.add_argument("--reference-captions", type=int, default=None,
                 help="time the reference on this many captions only (default: all, or "
                      "none with --fast-only)")
  p.add_argument("--fast-only", action="store_true", help="skip the reference path")
  p.add_argument("--slice-images", type=int, default=None,
                 help="score only this many images (all captions) and project the full time")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", action="store_true")


def cmd_scoring(args) -> dict:
  if args.preset:
    for k, v in PRESETS[args.preset].items():
      setattr(args, k, v)
  pad = args.pad_words_to or (MAX_WORDS if args.variant == "cross_attention" else None)
  model = models.build(dict(vocab_size=1000, word_dim=300, embed_dim=args.embed_dim,
                            img_dim=args.img_dim, variant=args.variant, pad_words_to=pad))
  rng = np.random.default_rng(args.seed)
  n_img = min(args.slice_images or args.images, args.images)
  params = jax.jit(model.init)(jax.random.key(args.seed), np.zeros((1, args.regions,
                                                                   args.img_dim), np.float32),
                               np.ones((1, 2), np.int32), np.array([2], np.int32))["params"]
  img_emb, cap_emb, cap_mask = synthetic_embeddings(model, params, rng, n_img, args.captions,
                                                    args.regions)
  dtype = jnp.dtype(args.dtype)
  out = dict(device_kind=jax.devices()[0].device_kind, num_devices=jax.device_count(),
             images=args.images, captions=args.captions, embed_dim=args.embed_dim,
             regions=args.regions, variant=args.variant, pad_words_to=pad, dtype=args.dtype,
             mean_caption_length=float(cap_mask.sum(1).mean()))

  tile_bytes = args.max_tile_mb << 20 if args.max_tile_mb else None
  fast = lambda: scoring.score_matrix(model, params, img_emb, cap_emb, cap_mask,
                                      compute_dtype=dtype, max_tile_bytes=tile_bytes)
  t0 = time.perf_counter()
  fast()                                                            # compiles every bucket
  out["fast_compile_and_first_run_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  scores = fast()
  fast_s = time.perf_counter() - t0
  out.update(fast_seconds=fast_s, fast_pairs=scores.size, fast_pairs_per_s=scores.size / fast_s)
  if n_img < args.images:
    total = args.images * args.captions
    out["PROJECTED_full_seconds"] = total / out["fast_pairs_per_s"]
    out["PROJECTED_note"] = (f"measured {n_img} of {args.images} images x all captions; the "
                             "full run's time is projected linearly from this slice")
  n_ref = 0 if args.fast_only else min(args.reference_captions or args.captions, args.captions)
  if n_ref:
    img_tile, cap_tile = _divisor_at_most(n_img, 10), _divisor_at_most(n_ref, 50)
    ref = lambda i, c: scoring.reference_score_matrix(model, params, img_emb[:i], cap_emb[:c],
                                                      cap_mask[:c], img_tile, cap_tile)
    ref(img_tile, cap_tile)                                         # compiles
    t0 = time.perf_counter()
    ref_scores = ref(n_img, n_ref)
    ref_s = time.perf_counter() - t0
    diff = np.abs(ref_scores - scores[:, :n_ref])
    out.update(reference_seconds=ref_s, reference_pairs=ref_scores.size,
               reference_pairs_per_s=ref_scores.size / ref_s,
               speedup=out["fast_pairs_per_s"] / (ref_scores.size / ref_s),
               max_abs_diff=float(diff.max()),
               top1_caption_agreement=float(np.mean(ref_scores.argmax(1)
                                                    == scores[:, :n_ref].argmax(1))))
  out["peak_rss_mb"] = peak_rss_mb()
  return out


def _print_scoring(r: dict):
  print(f"device: {r['device_kind']} x{r['num_devices']}  d={r['embed_dim']} {r['variant']} "
        f"{r['dtype']}  {r['images']} x {r['captions']} pairs, mean length "
        f"{r['mean_caption_length']:.1f}")
  print(f"fast:      {r['fast_pairs_per_s']:10.1f} pairs/s  ({r['fast_pairs']} pairs in "
        f"{r['fast_seconds']:.2f} s; compile + first run {r['fast_compile_and_first_run_s']:.1f} s)")
  if "PROJECTED_full_seconds" in r:
    print(f"PROJECTION (not measured): full {r['images']} x {r['captions']} in "
          f"{r['PROJECTED_full_seconds']:.0f} s ({r['PROJECTED_note']})")
  if "reference_pairs_per_s" in r:
    print(f"reference: {r['reference_pairs_per_s']:10.1f} pairs/s  ({r['reference_pairs']} pairs "
          f"in {r['reference_seconds']:.2f} s)")
    print(f"speedup: {r['speedup']:.2f}x   max abs diff: {r['max_abs_diff']:.2e}   "
          f"top-1 agreement: {r['top1_caption_agreement']:.3f}")
  print(f"peak RSS: {r['peak_rss_mb']:.0f} MB")


def add_train_step_args(p: argparse.ArgumentParser):
  p.add_argument("--config", default="configs/default.py",
                 help="config file[:arg], e.g. configs/flickr30k.py:stage2,synthetic")
  p.add_argument("--steps", type=int, default=5, help="timed steps after the compiled one")
  p.add_argument("--json", action="store_true")


def cmd_train_step(args) -> dict:
  """Times the real jitted train step of a config (init_from ignored) on its own data."""
  import importlib  # pylint: disable=g-import-not-at-top
  from camp_jax import sharding, train  # pylint: disable=g-import-not-at-top
  from camp_jax.data import inputs, pipeline  # pylint: disable=g-import-not-at-top
  path, _, arg = args.config.partition(":")  # Run from the repo root: configs/ is a package.
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  config = module.get_config(arg) if arg else module.get_config()
  config.init_from = ""
  data = inputs.load(config.data)
  split = data.split(config.data.train_split)
  model_cfg = train.model_config(config, len(data.vocab), split.feature_dim)
  model = models.build(model_cfg)
  mesh = sharding.make_mesh()
  steps_per_epoch = max(1, split.num_images // config.batch_size)
  state, tx, schedule = train.create_train_state(config, model, model_cfg, steps_per_epoch, mesh)
  step = train.make_train_step(model, tx, schedule, config, mesh)
  batches = pipeline.train_batches(split, data.vocab, global_batch_size=config.batch_size,
                                   seed=0)
  batch = sharding.global_batch(next(batches), mesh)
  start = time.perf_counter()
  state, aux = step(state, batch)
  jax.block_until_ready(aux)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    state, aux = step(state, batch)
  jax.block_until_ready(aux)
  seconds = (time.perf_counter() - start) / args.steps
  return {"config": args.config, "device_kind": jax.devices()[0].device_kind,
          "num_devices": jax.device_count(), "batch_size": config.batch_size,
          "embed_dim": model_cfg["embed_dim"], "regions": split.num_regions,
          "caption_width": int(batch["tokens"].shape[1]), "compile_and_first_step_s": compile_s,
          "step_s": seconds, "steps_per_s": 1.0 / seconds,
          "examples_per_s": config.batch_size / seconds, "peak_rss_mb": peak_rss_mb()}


def _print_train_step(r: dict):
  print(f"device: {r['device_kind']} x{r['num_devices']}  {r['config']}  batch {r['batch_size']}"
        f"  d={r['embed_dim']}  {r['regions']} regions  caption width {r['caption_width']}")
  print(f"train step: {r['step_s'] * 1e3:.1f} ms  ({r['steps_per_s']:.2f} steps/s, "
        f"{r['examples_per_s']:.0f} examples/s; compile + first step "
        f"{r['compile_and_first_step_s']:.1f} s)")
  print(f"peak RSS: {r['peak_rss_mb']:.0f} MB")


COMMANDS = {"scoring": (add_scoring_args, cmd_scoring, _print_scoring),
            "train_step": (add_train_step_args, cmd_train_step, _print_train_step)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m camp_jax.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, (add_args, _, _) in COMMANDS.items():
    add_args(sub.add_parser(name))
  args = parser.parse_args(argv)
  _, run, show = COMMANDS[args.command]
  result = run(args)
  if args.json:
    print(json.dumps(result))
  else:
    show(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
