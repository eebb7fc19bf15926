r"""The ablation command (camp_jax/ablation/__init__.py says what it trains).

  python -m camp_jax.ablation --workdir=DIR [--seeds=3] [--config=configs/default.py] \
      [--variants=vse,stage1,camp,...] [--override=--config.FIELD=VALUE ...] [--split=test] \
      [--gate_images=200] [--stream] [--dry_run]

On real features: --config=configs/flickr30k.py --override=--config.data.dir=data/f30k_precomp.
"""
from absl import flags

from camp_jax import ablation, cli

flags.DEFINE_string("workdir", None, "The ablation folder: one training run per variant, "
                    "seed and stage under it, and the reports.")
flags.DEFINE_string("config", "configs/default.py", "Config file whose argument picks the "
                    "stage (FILE:stage1|stage2|stage3); FILE:EXTRA gives FILE:stageN,EXTRA.")
flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 of every variant (--config.seed).")
flags.DEFINE_list("variants", [], f"Variants to run (default all): "
                  f"{','.join(v.name for v in ablation.VARIANTS)}.")
flags.DEFINE_multi_string("override", [], "A --config.FIELD=VALUE for every run (repeat the "
                          "flag), e.g. --override=--config.num_epochs=1.")
cli.define("split")
flags.DEFINE_integer("gate_images", 200, "Images of the split the gate diagnostics use.")
flags.DEFINE_bool("stream", False, "Echo every run's output (always written to its .log).")
flags.DEFINE_bool("dry_run", False, "Print the commands (done / todo) and run none.")
FLAGS = flags.FLAGS


def main(argv) -> int:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise ValueError("--workdir=DIR is required")
  if FLAGS.seeds < 1:
    raise ValueError(f"--seeds={FLAGS.seeds}: expected at least 1")
  bad = [o for o in FLAGS.override if not o.startswith("--config.")]
  if bad:
    raise ValueError(f"--override takes --config.FIELD=VALUE, got {bad}")
  ablation.run(FLAGS.workdir, config=FLAGS.config, seeds=tuple(range(FLAGS.seeds)),
               variants=FLAGS.variants, overrides=FLAGS.override, split=FLAGS.split or "test",
               gate_images=FLAGS.gate_images, stream=FLAGS.stream, dry_run=FLAGS.dry_run)
  return 0


if __name__ == "__main__":
  cli.run(main)
