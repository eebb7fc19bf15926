r"""Exports a training run (or a bundle) as an inference bundle, optionally with StableHLO.

  python -m camp_jax.export --workdir=RUN --out=BUNDLE [--checkpoint=best|latest|STEP] [--stablehlo]
  python -m camp_jax.export --bundle=IN [--out=BUNDLE] --stablehlo

The bundle and its StableHLO artifacts are described in camp_jax/export/__init__.py.
"""
from absl import flags

from camp_jax import bundle, checkpoints, cli, export

cli.define("workdir", "bundle", "out", "checkpoint", "overwrite", "stablehlo")
FLAGS = flags.FLAGS


def main(argv) -> int:
  del argv
  if bool(FLAGS.workdir) == bool(FLAGS.bundle):
    raise ValueError("give one of --workdir=RUN (a training run) or --bundle=IN")
  for name in ("workdir", "bundle", "out"):
    bundle.require_local(f"--{name}", getattr(FLAGS, name))
  if FLAGS.workdir:
    if not FLAGS.out:
      raise ValueError("--out=BUNDLE is required with --workdir")
    out = export.export_run(FLAGS.workdir, FLAGS.out,
                            checkpoints.parse_checkpoint(FLAGS.checkpoint), FLAGS.stablehlo,
                            FLAGS.overwrite)
  else:
    out = export.export_bundle(FLAGS.bundle, FLAGS.out, FLAGS.stablehlo, FLAGS.overwrite)
  print(f"wrote {out}" + (f" with {out / export.STABLEHLO_DIR}" if FLAGS.stablehlo else ""))
  return 0


if __name__ == "__main__":
  cli.run(main)
