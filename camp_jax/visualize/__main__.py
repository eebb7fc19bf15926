r"""Attention pictures of one image and one caption, from the command line.

  python -m camp_jax.visualize --bundle=B --data_dir=DIR [--split=test] --image=I --caption=J --out=FILE.png
  python -m camp_jax.visualize --bundle=B --data_dir=DIR --image=I --text="a red cube on the left" --out=FILE.png

What the figure shows: camp_jax/visualize/__init__.py.
"""
import pathlib
import sys

from absl import flags

from camp_jax import cli, inference, visualize
from camp_jax.data import precomp, tokenizer

cli.define("bundle", "data_dir", "split", "image", "out")
flags.DEFINE_integer("caption", None, "Caption (line of {split}_caps.txt) to pair with --image.")
flags.DEFINE_string("text", None, "A caption of your own instead of --caption.")
FLAGS = flags.FLAGS


def main(argv) -> int:
  del argv
  if not (FLAGS.bundle and FLAGS.data_dir and FLAGS.out) or FLAGS.image is None:
    raise ValueError("--bundle, --data_dir, --image and --out are required")
  if (FLAGS.caption is None) == (FLAGS.text is None):
    raise ValueError("give one of --caption=INDEX or --text=SENTENCE")
  split_name = FLAGS.split or "test"
  predictor = inference.load(FLAGS.bundle)
  precomp.check_feature_file(pathlib.Path(FLAGS.data_dir) / f"{split_name}_ims.npy",
                             predictor.model_config["img_dim"])
  split = precomp.read_split(FLAGS.data_dir, split_name, check_finite=False)
  where = f"{FLAGS.data_dir}/{split_name}"
  if not 0 <= FLAGS.image < split.num_images:
    raise IndexError(f"--image={FLAGS.image} is outside [0, {split.num_images}) for {where}")
  if FLAGS.text is not None:
    caption, title = FLAGS.text, f"image {FLAGS.image}, your caption"
  else:
    if not 0 <= FLAGS.caption < split.num_captions:
      raise IndexError(f"--caption={FLAGS.caption} is outside [0, {split.num_captions}) for "
                       f"{where}")
    caption = split.captions[FLAGS.caption]
    owner = FLAGS.caption // split.captions_per_image
    title = (f"image {FLAGS.image}, caption {FLAGS.caption} "
             + ("(its own caption)" if owner == FLAGS.image else f"(a caption of image {owner})"))
  explanation = visualize.render(predictor, split.images[FLAGS.image], caption, FLAGS.out, title)
  unknown = tokenizer.unknown_words(caption, predictor.vocab)
  if unknown:
    print(f"warning: unknown words mapped to <unk>: {', '.join(unknown)}", file=sys.stderr)
  print(f"wrote {FLAGS.out} (score {float(explanation['score']):.4f})")
  return 0


if __name__ == "__main__":
  cli.run(main)
