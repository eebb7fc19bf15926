r"""Default run: CAMP on the built-in synthetic dataset, about 5 minutes on 2 CPU cores.

`make run` trains the released recipe's two stages into one workdir:

  python -m camp_jax.main --config=configs/default.py --workdir=runs/default/stage1
  python -m camp_jax.main --config=configs/default.py:stage2 --workdir=runs/default \
      --config.init_from=runs/default/stage1
  python -m camp_jax.main --config=configs/default.py:tiny --workdir=/tmp/tiny   # seconds

Stage 1 is the cross-attention model (messages both ways, cosine of the pooled messages);
stage 2 is the full CAMP: gated fusion, attention pooling and the score head, trained on top
of stage 1 with everything else frozen. The full model trained from scratch stays at chance
on this data (its score head must learn a similarity from a concatenation), which is why the
release pretrains stage 1.

Every other config starts from this one and changes what differs.
"""
import ml_collections

# What stage 2 trains: the fusion FCs, the score head and the pooling layers. Everything
# else (encoders, embeddings, attention projections) stays as stage 1 left it.
STAGE2_TRAINABLE = (r"fusion/fc_1/", r"fusion/fc_2/", r"fusion/fc_out/", r"fusion/final_reduce_")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.kind = "synthetic"            # synthetic | precomp | tfds
  c.data.dir = "data/synthetic"        # precomp folder, or TFDS "name/config@data_dir"
  c.data.vocab = ""                    # default: <dir>/vocab.json
  c.data.train_split = "train"
  c.data.dev_split = "dev"
  c.data.dev_images = 250              # >0: validate on the first N dev images only; 0: all
  # 8 regions: every object, both views and the background, little clutter. The test split
  # keeps 1,000 images (5,000 captions), the size of the Flickr30K test.
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_train=10_000, num_dev=500, num_test=1_000, num_regions=8, feature_dim=64, seed=0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "camp"                # camp | vse
  c.model.variant = "cross_attention"  # gate_fusion (full CAMP) | cross_attention (stage 1)
  c.model.embed_dim = 32
  c.model.word_dim = 32
  c.model.pad_words_to = 0             # 50 reproduces the original stage-1 scores; 0: none
  c.model.pool_heads = 4
  c.model.dropout_rate = 0.0           # > 0 needs fast_scoring=False (the release uses 0)
  c.model.word_vectors = ""            # .npy (vocab size x word_dim) initialising the word
                                       # embedding, rows in vocabulary-id order (the release's
  c.model.word_vectors_mask = ""       # format); the mask .npy (vocab size,) marks the rows
                                       # to take from it, the rest keep their random init
  c.model.dtype = "float32"            # bfloat16: matrix products in bf16 (params, optimizer
                                       # state, softmax and reductions stay float32)

  c.loss = "hardest_negative_bce"      # or max_violation_hinge (VSE++)
  c.shortlist_loss_weight = 1.0        # VSE++ term aligning the search shortlist embeddings
  c.fast_scoring = True                # hoisted exact scoring in the train step
  c.backward_pairs = "hardest"         # fast path: backpropagate through the 3 x batch pairs
                                       # the loss reads (diagonal, hardest negatives); "all":
                                       # through every pair of the batch (same gradients)
  c.pooling_kernel = "auto"            # fusion + pooling where no gradient is taken (the
                                       # step's all-pairs pass, evaluation): "auto" = Pallas
                                       # kernel on TPU, XLA elsewhere; xla | pallas | interpret
  c.train_caption_chunk = 0            # >0: each device scores its captions in blocks of this
                                       # many, recomputed in the backward pass (less memory);
                                       # -1: the largest that fits the device's memory
  c.mesh = ""                          # devices as "IxC" (images x captions) sharing the
                                       # batch's pairs; "": as many image blocks as divide it
  c.optimizer = "adam"                 # adam | sgd
  c.learning_rate = 0.002
  c.scale_lr_by_batch = True           # lr x 128 / batch_size, as the release
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 0.0
  c.grad_clip = 2.0
  c.lr_update = 4                      # epochs between x0.1 decays
  c.batch_size = 32
  c.num_epochs = 5
  c.trainable = ()                     # regexes over parameter paths; () trains everything
  c.init_from = ""                     # another run's workdir to start from (by name/shape)
  c.init_from_checkpoint = "best"

  c.eval_every_epochs = 5              # here: once, at the end (the last epoch always is)
  c.eval_splits = ("test",)
  c.eval_folds = 0                     # 5: COCO 1K (mean over 5 folds of 1,000 images)
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  c.checkpoint_fallback = False        # restore an older checkpoint if the latest is damaged
  c.preemption_sync_steps = 20         # several processes agree on a SIGTERM every N steps

  if arg == "stage2":  # The full CAMP on top of the default (stage-1) run.
    c.model.variant = "gate_fusion"
    c.init_from = "runs/default/stage1"
    c.trainable = STAGE2_TRAINABLE
    c.shortlist_loss_weight = 0.0
    c.num_epochs = 2
  elif arg == "tiny":  # For tests and smoke runs: seconds, not minutes.
    c.data.dir = "data/synthetic_tiny"
    c.data.dev_images = 0
    c.data.synthetic.update(num_train=256, num_dev=40, num_test=40, num_regions=6,
                            feature_dim=16)
    c.model.update(embed_dim=16, word_dim=16)
    c.batch_size = 32
    c.num_epochs = 2
    c.eval_every_epochs = 1
    c.log_every_steps = 4
    c.checkpoint_every_steps = 4
  elif arg:
    raise ValueError(f"configs/default.py: unknown argument {arg!r}; expected 'stage2', 'tiny' or none")
  return c
