r"""The released Flickr30K recipe, in three stages (precomp features, 36 x 2048, d = 1024).

  python -m camp_jax.main --config=configs/flickr30k.py:stage1 --workdir=runs/f30k_s1 \
      --config.data.dir=data/f30k_precomp \
      --config.word_vectors.path=embed/f30kword2vec300dim_3.npy \
      [--config.word_vectors.mask=embed/MASK.npy --config.word_vectors.freeze=True]
  python -m camp_jax.main --config=configs/flickr30k.py:stage2 --workdir=runs/f30k_s2 \
      --config.init_from=runs/f30k_s1 ...
  python -m camp_jax.main --config=configs/flickr30k.py:stage3 --workdir=runs/f30k_s3 \
      --config.init_from=runs/f30k_s2 ...

Stage 1 trains the cross-attention model (Adam); stage 2 the full CAMP from stage 1 with
everything frozen except the fusion FCs, the score head and the pooling layers (SGD);
stage 3 fine-tunes everything (SGD).
"""
from configs import default


def get_config(arg: str = "stage1"):
  stage, _, size = (arg or "stage1").partition(",")
  c = default.get_config()
  c.data.kind = "precomp"
  c.data.dir = "data/f30k_precomp"
  # CAMP's own vocabulary (its checkpoints and word vectors index it; SCAN's .json orders
  # the same words differently).
  c.data.vocab = "vocab/f30k_precomp_vocab.pkl"
  c.data.dev_images = 1000               # the release validates on the first 5,000 captions
  c.model.update(embed_dim=1024, word_dim=300)
  c.shortlist_loss_weight = 0.0
  # Batch x batch pairs at d=1024 need ~30 GB of activations on one device; -1 picks, at
  # start, the largest block of captions whose step fits the device's memory (no chunking
  # first; blocks are recomputed in the backward pass). `python -m camp_jax.aot --fit_chunk`
  # tells the same for a TPU slice or GPUs. Set a number (e.g. 16) to fix it.
  c.train_caption_chunk = -1
  c.num_epochs = 300                     # best-on-dev selection over the whole budget
  c.eval_every_epochs = 1
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_splits = ("test",)
  if stage == "stage1":
    c.model.update(variant="cross_attention", pad_words_to=50)
    c.optimizer, c.learning_rate, c.batch_size, c.lr_update = "adam", 0.002, 256, 50
  elif stage in ("stage2", "stage3"):
    c.model.variant = "gate_fusion"
    c.optimizer, c.learning_rate, c.batch_size = "sgd", 0.01, 128
    c.momentum, c.nesterov, c.weight_decay = 0.9, True, 1e-4
    c.lr_update = 45 if stage == "stage2" else 50
    c.trainable = default.STAGE2_TRAINABLE if stage == "stage2" else ()
    c.init_from = "runs/f30k_s1" if stage == "stage2" else "runs/f30k_s2"
  else:
    raise ValueError(f"configs/flickr30k.py: unknown stage {stage!r}; expected stage1|2|3")
  if size == "synthetic":  # Same recipe on synthetic data of the real size, for timing.
    c.data.kind, c.data.dir, c.data.vocab = "synthetic", "data/synthetic_f30k", ""
    c.data.dev_images = 0
    c.data.synthetic.update(num_train=2_000, num_dev=100, num_test=100, num_regions=36,
                            feature_dim=2048)
  return c
