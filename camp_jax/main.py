r"""Trains and evaluates CAMP.

  python -m camp_jax.main --config=configs/default.py --workdir=runs/default
  python -m camp_jax.main --config=configs/default.py --workdir=runs/default --mode=eval \
      [--checkpoint=best|latest|STEP] [--split=test] [--save_scores]
  python -m camp_jax.main --config=configs/flickr30k.py:stage3 --mode=eval --bundle=BUNDLE
  python -m camp_jax.main --config=configs/default.py --workdir=runs/default --mode=export \
      --out=BUNDLE [--stablehlo]

Any config field can be overridden: --config.batch_size=64 --config.model.embed_dim=128.
Several processes (TPU pod, SLURM, or --coordinator/--num_processes/--process_id) start
jax.distributed first; one process runs unchanged.
"""
import importlib.util
import json

from absl import flags, logging

from camp_jax import bundle, checkpoints, cli, config_check, distributed, evaluate, export, train
from camp_jax.data import pipeline

cli.define("config", "workdir", "checkpoint", "bundle", "split", "out", "overwrite",
           "stablehlo", "json")
flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
flags.DEFINE_bool("save_scores", False, "eval: also save each score matrix as "
                  "eval/<split>_scores.npy (for camp_jax.evaluate --ensemble).")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_integer("heartbeat_timeout", None,
                     "Multi-process: seconds until the others abort when a process dies "
                     "(default $CAMP_HEARTBEAT_TIMEOUT_S or 60).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None:
    raise ValueError("--config=configs/NAME.py[:ARG] is required")
  config_check.check(config)
  for name, path in (("--workdir", FLAGS.workdir), ("--out", FLAGS.out),
                     ("--bundle", FLAGS.bundle), ("config.init_from", config.init_from)):
    bundle.require_local(name, path)
  if FLAGS.mode != "eval" and not FLAGS.workdir:
    raise ValueError(f"--mode={FLAGS.mode} needs --workdir=RUN")
  if FLAGS.mode == "export" and not FLAGS.out:
    raise ValueError("--mode=export needs --out=BUNDLE")
  if FLAGS.mode == "train" and importlib.util.find_spec("tensorflow") is None:
    raise RuntimeError("training reads batches with tf.data and writes TensorBoard logs, and "
                       "tensorflow is not installed: pip install -e '.[data]'")
  checkpoint = checkpoints.parse_checkpoint(FLAGS.checkpoint)

  distributed.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                     FLAGS.heartbeat_timeout)
  distributed.log_platform()
  pipeline.prepare_tensorflow()
  logging.debug("config:\n%s", config)

  if FLAGS.mode == "train":
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == "eval":
    results = evaluate.evaluate_run(config, workdir=FLAGS.workdir, checkpoint=checkpoint,
                                    bundle_path=FLAGS.bundle, split=FLAGS.split,
                                    scores=FLAGS.save_scores)
    if distributed.is_primary():
      for split, metrics in results.items():
        print(evaluate.format_table(metrics, split), flush=True)
        if FLAGS.json:
          print(json.dumps({"split": split, **metrics}, sort_keys=True))
  else:
    out = export.export_run(FLAGS.workdir, FLAGS.out, checkpoint, stablehlo=FLAGS.stablehlo,
                            overwrite=FLAGS.overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
  cli.run(main)
