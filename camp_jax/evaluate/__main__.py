r"""Metrics of saved score matrices, and of their ensemble (the mean matrix).

  python -m camp_jax.main --config=... --workdir=RUN_A --mode=eval --split=testall --save_scores
  python -m camp_jax.evaluate --ensemble RUN_A/eval/testall_scores.npy RUN_B/eval/testall_scores.npy \
      [--folds=5] [--data_dir=data/coco_precomp --split=testall] [--json]

With --data_dir and --split, each matrix's shape is checked against that split.
"""
import json

from absl import flags

from camp_jax import cli
from camp_jax.data import precomp
from camp_jax.evaluate import evaluator, metrics

cli.define("data_dir", "split", "json")
flags.DEFINE_bool("ensemble", False, "Average the score matrices given as arguments.")
flags.DEFINE_integer("folds", 0, "Also report the mean over this many folds of images "
                     "(5 for COCO 1K from the 5K matrix).")
flags.DEFINE_integer("captions_per_image", 5, "Captions of each image, consecutive.")
FLAGS = flags.FLAGS


def main(argv) -> int:
  files = argv[1:]
  if not FLAGS.ensemble or not files:
    raise ValueError("usage: python -m camp_jax.evaluate --ensemble A.npy [B.npy ...]")
  scores, result = evaluator.ensemble(files, FLAGS.captions_per_image, FLAGS.folds)
  if FLAGS.data_dir:
    split = precomp.read_split(FLAGS.data_dir, FLAGS.split or "test", check_finite=False)
    if scores.shape != (split.num_images, split.num_captions):
      raise ValueError(f"the score matrices are {scores.shape}, but {FLAGS.data_dir}/"
                       f"{split.name} has {split.num_images} images x {split.num_captions} "
                       "captions")
  print(metrics.format_table(result, f"mean of {len(files)} score matrices"))
  if FLAGS.json:
    print(json.dumps({"files": files, **result}, sort_keys=True))
  return 0


if __name__ == "__main__":
  cli.run(main)
