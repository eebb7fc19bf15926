r"""Gate diagnostics of a full-CAMP run, from the command line.

  python -m camp_jax.gate_diagnostics --workdir=RUN [--config=configs/default.py] \
      [--split=test] [--images=200] [--checkpoint=best] [--out=FILE.png] [--json]

Prints the mean region and word gates of relevant and irrelevant items and of matched
pairs and their hardest negatives (camp_jax/gate_diagnostics/__init__.py says how each is
taken), writes RUN/eval/<split>_gates.json and a figure (default RUN/eval/<split>_gates.png).
Without --config the data is the folder of the vocabulary the run recorded (the built-in
synthetic set); with it, config.data (e.g. --config=configs/flickr30k.py:stage3 with
--config.data.dir=...).
"""
import json
import pathlib

from absl import flags

from camp_jax import cli, gate_diagnostics

cli.define("config", "workdir", "checkpoint", "split", "out", "json")
flags.DEFINE_integer("images", 200, "Use the first N images of the split and their "
                     "captions (0: all).")
FLAGS = flags.FLAGS


def main(argv) -> int:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise ValueError("--workdir=RUN (a full-CAMP training run) is required")
  split = FLAGS.split or "test"
  data_config = FLAGS.config.data if FLAGS.config is not None else None
  summary, values = gate_diagnostics.diagnose_run(
      FLAGS.workdir, data_config, split, FLAGS.checkpoint, FLAGS.images)
  out = FLAGS.out or pathlib.Path(FLAGS.workdir) / "eval" / f"{split}_gates.png"
  gate_diagnostics.plot(values, out, f"CAMP gates: {FLAGS.workdir} ({split})")
  print(gate_diagnostics.format_table(summary))
  print(f"wrote {pathlib.Path(FLAGS.workdir) / 'eval' / f'{split}_gates.json'} and {out}")
  if FLAGS.json:
    print(json.dumps(summary, sort_keys=True))
  return 0


if __name__ == "__main__":
  cli.run(main)
