r"""Converts the authors' PyTorch CAMP checkpoints into camp_jax bundles.

  python -m camp_jax.convert --from_torch=model_best.pth.tar --out=BUNDLE \
      [--vocab=vocab/f30k_precomp_vocab.pkl] [--overwrite]

What a checkpoint must hold, and how it is read safely: camp_jax/convert/__init__.py.
"""
from absl import flags

from camp_jax import bundle, cli, convert

cli.define("out", "overwrite")
flags.DEFINE_string("from_torch", None, "The release's .pth.tar, or an .npz of the same arrays.")
flags.DEFINE_string("vocab", None, "Vocabulary (.pkl or .json) to include in the bundle.")
FLAGS = flags.FLAGS


def main(argv) -> int:
  del argv
  if not FLAGS.from_torch or not FLAGS.out:
    raise ValueError("--from_torch=CHECKPOINT and --out=BUNDLE are required")
  out = convert.convert(FLAGS.from_torch, FLAGS.out, FLAGS.vocab, FLAGS.overwrite)
  config, _, _, _ = bundle.load(out)
  print(f"wrote {out}: {config}")
  return 0


if __name__ == "__main__":
  cli.run(main)
