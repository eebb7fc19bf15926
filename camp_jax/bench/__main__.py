r"""Benchmarks: python -m camp_jax.bench COMMAND [flags].

  python -m camp_jax.bench scoring --embed_dim=1024 --images=10 --captions=300 [--repeats=3] [--json]
  python -m camp_jax.bench scoring --preset=flickr30k_test --reference_captions=100
  python -m camp_jax.bench train_step --config=configs/flickr30k.py:stage3,synthetic \
      --config.batch_size=32 [--config.fast_scoring=False] --steps=2 [--json]
  python -m camp_jax.bench export --embed_dim=256 --images=20 --captions=400 [--bundle=B] [--json]
  python -m camp_jax.bench pipeline --regions=36 --feature_dim=2048 --images=2000 --batch_size=128 \
      [--steps=200] [--feeds=tf,grain] [--workers=N] [--json]
  python -m camp_jax.bench device [--json]       # the first minutes on any machine
  python -m camp_jax.bench device --small [--pooling=interpret] [--images=N --captions=M \
      --embed_dim=D --batch_size=B --dtype=bfloat16 --config=...] [--json]

Figures are measured, never projected, unless a line says PROJECTION.
"""
import json

from absl import flags

from camp_jax import cli, config_check, scoring
from camp_jax.bench import (device, export, pipeline, scoring as scoring_bench,
                            train_step)

cli.define("config", "json", "bundle")
flags.DEFINE_enum("preset", None, sorted(scoring_bench.PRESETS), "scoring: sizes of a preset.")
flags.DEFINE_integer("images", 20, "scoring/export/pipeline/device: images.")
flags.DEFINE_integer("captions", 500, "scoring/export/device: captions.")
flags.DEFINE_integer("embed_dim", 1024, "scoring/export/device: d (export: without --bundle).")
flags.DEFINE_integer("img_dim", 2048, "scoring/export: region feature size.")
flags.DEFINE_integer("regions", 36, "scoring/export/pipeline: regions per image.")
flags.DEFINE_enum("variant", "gate_fusion", ["gate_fusion", "cross_attention"], "scoring: model.")
flags.DEFINE_integer("pad_words_to", None, "scoring: stage-1 slots (default 50).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "scoring/device: compute dtype.")
flags.DEFINE_integer("max_tile_mb", None, "scoring: tile working set (default: the driver's).")
flags.DEFINE_integer("reference_captions", None,
                     "scoring: time the reference on this many captions only.")
flags.DEFINE_bool("fast_only", False, "scoring: skip the reference path.")
flags.DEFINE_integer("slice_images", None,
                     "scoring: score this many images (all captions), project the full time.")
flags.DEFINE_integer("repeats", 3, "scoring/export/pipeline/device: timed runs of each side, "
                     "interleaved, best kept.")
flags.DEFINE_integer("steps", 5, "train_step/pipeline/device: timed steps after the first.")
flags.DEFINE_integer("feature_dim", 2048, "pipeline: feature size.")
flags.DEFINE_integer("batch_size", 128, "pipeline/device: global batch.")
flags.DEFINE_list("feeds", ["tf"], "pipeline: feeds to time: tf (train_batches), grain.")
flags.DEFINE_integer("workers", None, "pipeline: grain's threads (default min(4, CPUs)).")
flags.DEFINE_bool("small", False, f"device: CPU sizes ({device.SMALL['config']}, "
                  f"{device.SMALL['images']} x {device.SMALL['captions']} pairs).")
flags.DEFINE_enum("pooling", None, scoring.POOLING,
                  "device: the pooling kernel to check and use (default: the config's).")
FLAGS = flags.FLAGS


def _scoring():
  sizes = dict(images=FLAGS.images, captions=FLAGS.captions, embed_dim=FLAGS.embed_dim)
  sizes.update(scoring_bench.PRESETS.get(FLAGS.preset, {}))
  result = scoring_bench.run(**sizes, img_dim=FLAGS.img_dim, regions=FLAGS.regions,
                             variant=FLAGS.variant, pad_words_to=FLAGS.pad_words_to,
                             dtype=FLAGS.dtype, max_tile_mb=FLAGS.max_tile_mb,
                             reference_captions=FLAGS.reference_captions,
                             fast_only=FLAGS.fast_only, slice_images=FLAGS.slice_images,
                             repeats=FLAGS.repeats)
  return result, scoring_bench.describe(result)


def _train_step():
  if FLAGS.config is None:
    raise ValueError("train_step needs --config=configs/NAME.py[:ARG]")
  result = train_step.run(FLAGS.config, FLAGS.steps)
  return result, train_step.describe(result)


def _export():
  result = export.run(images=FLAGS.images, captions=FLAGS.captions, embed_dim=FLAGS.embed_dim,
                      img_dim=FLAGS.img_dim, regions=FLAGS.regions, bundle_dir=FLAGS.bundle,
                      repeats=FLAGS.repeats)
  return result, export.describe(result)


def _pipeline():
  result = pipeline.run(regions=FLAGS.regions, feature_dim=FLAGS.feature_dim,
                        images=FLAGS.images, batch_size=FLAGS.batch_size,
                        steps=FLAGS.steps, workers=FLAGS.workers, feeds=FLAGS.feeds,
                        repeats=FLAGS.repeats)
  return result, pipeline.describe(result)


def _device():
  """Flags left out take the command's own defaults (`device.SIZES`, or `device.SMALL`)."""
  sizes = device.SMALL if FLAGS.small else device.SIZES
  given = lambda name, default=None: FLAGS[name].value if FLAGS[name].present else default
  result = device.run(FLAGS.config or config_check.check_file(sizes["config"]),
                      images=given("images", sizes["images"]),
                      captions=given("captions", sizes["captions"]),
                      embed_dim=given("embed_dim"), batch_size=given("batch_size"),
                      dtype=given("dtype"), pooling=FLAGS.pooling, steps=FLAGS.steps,
                      repeats=given("repeats", 1))
  return result, device.describe(result)


COMMANDS = {"scoring": _scoring, "train_step": _train_step, "export": _export,
            "pipeline": _pipeline, "device": _device}


def main(argv) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ValueError(f"expected one command, one of {sorted(COMMANDS)}; got {argv[1:]}")
  result, text = COMMANDS[argv[1]]()
  print(text)
  if FLAGS.json:
    print(json.dumps(result))
  return 0


if __name__ == "__main__":
  cli.run(main)
