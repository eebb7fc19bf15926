r"""The Flickr30K recipe on COCO precomp; evaluation on 5K test (testall) and its 5 folds of 1K.

It follows configs/flickr30k.py stage for stage and changes only the data and the
evaluation; for SCAN's COCO schedule add --config.num_epochs=20 --config.lr_update=10.

  python -m camp_jax.main --config=configs/coco.py:stage1 --workdir=runs/coco_s1 \
      --config.data.dir=data/coco_precomp --config.data.vocab=vocab/coco_precomp_vocab.pkl
"""
from configs import flickr30k

# Where each stage starts from.
INIT_FROM = {"stage1": "", "stage2": "runs/coco_s1", "stage3": "runs/coco_s2"}


def get_config(arg: str = "stage1"):
  c = flickr30k.get_config(arg)
  stage, _, size = (arg or "stage1").partition(",")
  if size != "synthetic":
    c.data.dir = "data/coco_precomp"
    c.data.vocab = "vocab/coco_precomp_vocab.pkl"
  c.init_from = INIT_FROM[stage]
  c.eval_splits = ("testall",)
  c.eval_folds = 5  # 5K (the whole matrix) and COCO 1K (the mean of its 5 folds)
  return c
