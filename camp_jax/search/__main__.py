r"""Text-to-image and image-to-text search over a precomp split, from the command line.

  python -m camp_jax.search --bundle=B --data_dir=DIR [--split=test] --query="a man riding a horse"
  python -m camp_jax.search --bundle=B --data_dir=DIR --image=17   # captions for an image
  python -m camp_jax.search --bundle=B --data_dir=DIR --evaluate_shortlist [--ks=10,20,50,100]

Stage 1 ranks the split by shortlist vectors, stage 2 rescores the top --shortlist with the
exact CAMP score (camp_jax/search/__init__.py).
"""
import sys
from typing import Callable

from absl import flags
import numpy as np

from camp_jax import cli, gallery as gallery_lib, inference, search
from camp_jax.evaluate import shortlist as shortlist_lib


def _print_hits(hits: search.Hits, describe: Callable[[int], str]) -> None:
  print(f"{'rank':>4}  {'index':>6}  {'CAMP':>7}  {'stage 1':>7}  ")
  for rank, (i, s, c) in enumerate(zip(hits.indices, hits.scores, hits.shortlist_scores), 1):
    camp = "      -" if np.isnan(s) else f"{s:7.4f}"
    print(f"{rank:>4}  {int(i):>6}  {camp}  {c:7.4f}  {describe(int(i))}")


cli.define("bundle", "data_dir", "split", "image")
flags.DEFINE_string("query", None, "Sentence to search images for.")
flags.DEFINE_bool("evaluate_shortlist", False,
                  "Print the recall of shortlist + rerank against exhaustive scoring per K.")
flags.DEFINE_integer("top", 10, "Results to print.", lower_bound=1)
flags.DEFINE_integer("shortlist", 100, "Candidates rescored with the exact CAMP score.",
                     lower_bound=1)
flags.DEFINE_list("ks", ["5", "10", "20", "50", "100"],
                  "Shortlist sizes for --evaluate_shortlist.")
flags.DEFINE_string("cache_dir", None, f"Cache folder (default: DATA_DIR/{gallery_lib.CACHE_DIR}).")
FLAGS = flags.FLAGS


def main(argv) -> int:
  del argv
  modes = [FLAGS.query is not None, FLAGS.image is not None, FLAGS.evaluate_shortlist]
  if sum(modes) != 1:
    raise ValueError("give exactly one of --query=SENTENCE, --image=INDEX, --evaluate_shortlist")
  if not FLAGS.bundle or not FLAGS.data_dir:
    raise ValueError("--bundle and --data_dir are required")
  ks = [int(k) for k in FLAGS.ks]
  split = FLAGS.split or "test"
  predictor = inference.load(FLAGS.bundle)
  gallery = gallery_lib.Gallery(predictor, FLAGS.data_dir, split, FLAGS.cache_dir)
  where = f"{FLAGS.data_dir}/{split}"
  if FLAGS.query is not None:
    hits = search.text_to_image(predictor, gallery, FLAGS.query, FLAGS.top, FLAGS.shortlist)
    if hits.unknown_words:
      print(f"warning: unknown words mapped to <unk>: {', '.join(hits.unknown_words)}",
            file=sys.stderr)
    print(f"text -> image in {where} ({gallery.num_images} images, shortlist "
          f"{min(FLAGS.shortlist, gallery.num_images)}): {FLAGS.query!r}")
    _print_hits(hits, lambda i: f"image {i}")
  elif FLAGS.image is not None:
    hits = search.image_to_text(predictor, gallery, FLAGS.image, FLAGS.top, FLAGS.shortlist)
    cpi = gallery.split.captions_per_image
    print(f"image -> text in {where} for image {FLAGS.image} ({gallery.split.num_captions} "
          f"captions, shortlist {min(FLAGS.shortlist, gallery.split.num_captions)}; "
          "* = its own caption)")
    _print_hits(hits, lambda j: ("* " if j // cpi == FLAGS.image else "  ")
                + gallery.split.captions[j])
  else:
    rows = shortlist_lib.shortlist_rerank_recall(
        predictor, gallery.encoded_sides(), gallery.split.captions_per_image, ks,
        log=lambda s: print(s, file=sys.stderr))
    print(f"shortlist + rerank vs exhaustive CAMP on {where} ({gallery.num_images} images, "
          f"{gallery.split.num_captions} captions)")
    print(shortlist_lib.format_recall_table(rows))
  return 0


if __name__ == "__main__":
  cli.run(main)
