r"""Times a stage-2-like CAMP training step: encoders forward (frozen), the fast score matrix
of the batch, the hardest-negative BCE loss, gradients of the stage-2 trainable layers and
an SGD (Nesterov momentum) update.

  python benchmarks/train_step.py [--batch 128] [--embed-dim 1024] [--small] [--bfloat16]
"""
import argparse
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from camp_jax import bench, losses, models, scoring

STAGE2_TRAINABLE = re.compile(r"fusion/(fc_1|fc_2|fc_out|final_reduce_)")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--embed-dim", type=int, default=1024)
  p.add_argument("--img-dim", type=int, default=2048)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--bfloat16", action="store_true")
  p.add_argument("--small", action="store_true", help="CPU smoke test: batch 8, d=64")
  args = p.parse_args()
  if args.small:
    args.batch, args.embed_dim, args.img_dim, args.steps = 8, 64, 128, 2
  model = models.build(dict(vocab_size=1000, word_dim=300, embed_dim=args.embed_dim,
                            img_dim=args.img_dim, variant="gate_fusion"))
  rng, b = np.random.default_rng(0), args.batch
  images = np.maximum(rng.normal(size=(b, 36, args.img_dim)), 0).astype(np.float32)
  lengths = bench.flickr_like_lengths(rng, b)
  tokens = rng.integers(4, 1000, size=(b, int(lengths.max()))).astype(np.int32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1], tokens[:1], lengths[:1])["params"]
  mask = jax.tree_util.tree_map_with_path(lambda path, _: bool(STAGE2_TRAINABLE.match(
      jax.tree_util.keystr(path, simple=True, separator="/"))), params)
  tx = optax.masked(optax.chain(optax.add_decayed_weights(1e-4),
                                optax.sgd(0.01, momentum=0.9, nesterov=True)), mask)
  dtype = jnp.bfloat16 if args.bfloat16 else jnp.float32

  def loss_fn(trained, frozen, images, tokens, lengths):
    params = jax.tree.map(lambda m, t, f: t if m else f, mask, trained, frozen)
    apply = lambda *a, method: model.apply({"params": params}, *a, method=method)
    img_emb = apply(images, method="encode_images")
    cap_emb, cap_mask = apply(tokens, lengths, method="encode_captions")
    scores = scoring.fast_score_matrix(model, params, img_emb, cap_emb, cap_mask,
                                       compute_dtype=dtype)
    return losses.hardest_negative_bce(scores)

  @jax.jit
  def step(params, opt_state, images, tokens, lengths):
    loss, grads = jax.value_and_grad(loss_fn)(params, params, images, tokens, lengths)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  t0 = time.perf_counter()
  params, opt_state, loss = step(params, opt_state, images, tokens, lengths)
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(args.steps):
    params, opt_state, loss = step(params, opt_state, images, tokens, lengths)
  loss.block_until_ready()
  step_s = (time.perf_counter() - t0) / args.steps
  print(json.dumps(dict(benchmark="train_step", device_kind=jax.devices()[0].device_kind,
                        batch=b, embed_dim=args.embed_dim, dtype=jnp.dtype(dtype).name,
                        compile_and_first_step_s=compile_s, step_s=step_s,
                        pairs_per_s=b * b / step_s, loss=float(loss),
                        peak_rss_mb=bench.peak_rss_mb())))


if __name__ == "__main__":
  main()
