r"""Trains and evaluates CAMP.

  python -m camp_jax.main --config=configs/default.py --workdir=runs/default
  python -m camp_jax.main --config=configs/default.py --workdir=runs/default --mode=eval \
      [--checkpoint=best|latest|STEP | --bundle=BUNDLE] [--split=test]
  python -m camp_jax.main --config=configs/default.py --workdir=runs/default --mode=export \
      --out=BUNDLE

Any config field can be overridden: --config.batch_size=64 --config.model.embed_dim=128.
Several processes (TPU pod, SLURM, or --coordinator/--num_processes/--process_id) start
jax.distributed first; one process runs unchanged.
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and eval results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
flags.DEFINE_string("checkpoint", "best", "eval/export: best, latest or a step number.")
flags.DEFINE_string("bundle", None, "eval: evaluate this bundle instead of a checkpoint.")
flags.DEFINE_string("split", None, "eval: split to evaluate (default: config.eval_splits).")
flags.DEFINE_string("out", None, "export: bundle folder to write.")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_integer("heartbeat_timeout", None,
                     "Multi-process: seconds until the others abort when a process dies "
                     "(default $CAMP_HEARTBEAT_TIMEOUT_S or 60).")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
  """Orbax logs every step of every save at INFO; keep its warnings and errors only."""
  return "orbax" not in record.pathname or record.levelno >= logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from camp_jax import bundle  # pylint: disable=g-import-not-at-top
  try:
    for name, path in (("--workdir", FLAGS.workdir), ("--out", FLAGS.out),
                       ("--bundle", FLAGS.bundle), ("config.init_from", FLAGS.config.init_from)):
      bundle.require_local(name, path)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  logging.get_absl_handler().addFilter(_quiet_orbax)
  from camp_jax import sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                  FLAGS.heartbeat_timeout)
  from camp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.hide_gpus_from_tensorflow()
  from camp_jax import train  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  logging.info("config:\n%s", config)
  if FLAGS.mode == "train":
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == "eval":
    for split, metrics in train.evaluate_run(config, FLAGS.workdir, FLAGS.checkpoint,
                                             FLAGS.bundle, FLAGS.split).items():
      print(json.dumps({"split": split, **metrics}, sort_keys=True))
  else:
    if not FLAGS.out:
      raise app.UsageError("--mode=export needs --out=BUNDLE")
    from camp_jax import export  # pylint: disable=g-import-not-at-top
    sys.exit(export.main(["--workdir", FLAGS.workdir, "--out", FLAGS.out,
                          "--checkpoint", FLAGS.checkpoint]))


if __name__ == "__main__":
  app.run(main)
