r"""Compile a config's train step and eval tile for TPU slices and GPUs, on a CPU machine.

  python -m camp_jax.aot --config=configs/flickr30k.py:stage2 --topology=v5e:16x16 [--json]
  python -m camp_jax.aot --config=configs/flickr30k.py:stage2 --topology=v5e:4x4 \
      --config.model.dtype=bfloat16
  python -m camp_jax.aot --config=configs/coco.py:stage3 --topology=h100:8,h100:1
  python -m camp_jax.aot --config=configs/coco.py:stage3 --topology=v5e:16x16 --program=eval
  python -m camp_jax.aot --config=configs/flickr30k.py:stage3 --topology=h100:1 --fit_chunk

TPU topologies need libtpu (pip install -e '.[tpu]'), GPU ones the CUDA plugin
(pip install -e '.[cuda12]'); neither needs the hardware. Per device it reports memory
(arguments, outputs, temporaries, aliased) against the chip's HBM, FLOPs and HBM bytes per
call, compile seconds, a roofline time and hours per epoch (train) or per evaluation
(eval). A program fits when it takes at most 90% of the chip's HBM, the headroom a run keeps
(`camp_jax.memory`); exits 1 when one does not, naming it and by how much.
"""
import json
import sys

from absl import flags

from camp_jax import cli
from camp_jax.aot import report, topology

cli.define("config", "json")
flags.DEFINE_multi_string("topology", None, "CHIP:SHAPE, repeatable or comma-separated: "
                          "v5e:4x4, v5p:8x8x8, v4:4x4x4, v6e:2x2, h100:8, h200:1, a100-80g:8.")
flags.DEFINE_list("program", ["train"], "train (the train step), eval (the scoring tile at "
                  "the eval split's size), or both: train,eval.")
flags.DEFINE_bool("fit_chunk", False, "Also find the largest config.train_caption_chunk whose "
                  "train step fits the chip, as a run picks it (0 = no chunking; one compile "
                  "per candidate).")
FLAGS = flags.FLAGS


def main(argv) -> int:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  if FLAGS.config is None:
    raise ValueError("--config=configs/NAME.py[:ARG] is required")
  topos = topology.parse_list(FLAGS.topology or [])
  unknown = sorted(set(FLAGS.program) - {"train", "eval"})
  if unknown:
    raise ValueError(f"--program: unknown {unknown}; expected train and/or eval")
  report.prepare(topos)
  reports = [report.run(FLAGS.config, t, FLAGS.program, FLAGS.fit_chunk) for t in topos]
  for r in reports:
    print(report.describe(r))
  if FLAGS.json:
    print(json.dumps(reports[0] if len(reports) == 1 else {"reports": reports}))
  too_big = report.not_fitting(reports)
  for line in too_big:
    print(f"error: {line}", file=sys.stderr)
  return 1 if too_big else 0


if __name__ == "__main__":
  cli.run(main)
