r"""The Flickr30K recipe on COCO precomp; evaluation on 5K test (testall) and its 5 folds of 1K.

  python -m camp_jax.main --config=configs/coco.py:stage1 --workdir=runs/coco_s1 \
      --config.data.dir=data/coco_precomp --config.data.vocab=vocab/coco_precomp_vocab.json
"""
from configs import flickr30k


def get_config(arg: str = "stage1"):
  c = flickr30k.get_config(arg)
  c.data.dir = "data/coco_precomp"
  c.data.vocab = "vocab/coco_precomp_vocab.json"
  if c.init_from:
    c.init_from = c.init_from.replace("f30k", "coco")
  c.eval_splits = ("testall",)
  c.eval_folds = 0  # 5K; rerun with --config.eval_folds=5 for COCO 1K.
  return c
