"""Exhaustive scoring on synthetic inputs: the fast path and the reference, in the same run.

Both are timed after compilation, on random parameters (`model.init`) and synthetic inputs:
36 regions, caption lengths drawn like Flickr30K's (mean ~14.5 tokens with <start>/<end>,
range 5..49). The reference expands every pair with captions padded to 50 slots, as the
original does.
"""
import math
import time

import jax
import numpy as np

from camp_jax import bench, inference, models, scoring

PRESETS = {
    "flickr30k_test": dict(images=1000, captions=5000, embed_dim=1024),
    "coco5k": dict(images=5000, captions=25000, embed_dim=256),
}
MAX_WORDS = 50  # The original pads every caption to 50 word slots.


def flickr_like_lengths(rng, n: int) -> np.ndarray:
  """Caption lengths with <start>/<end>: right-skewed, mean ~14.5, within [5, 49]."""
  return np.clip(np.round(rng.lognormal(np.log(13.6), 0.33, n)), 5, 49).astype(np.int32)


def synthetic_embeddings(predictor, rng, n_img, n_cap, regions):
  """Region and word embeddings from the model's own encoders on random inputs.

  Returns img_emb (n_img, R, d), cap_emb (n_cap, 50, d), cap_mask (n_cap, 50) as numpy:
  captions padded to the original's 50 slots, as the reference path scores them.
  """
  features = np.maximum(rng.normal(size=(n_img, regions, predictor.model.img_dim)), 0.0)
  img_emb = predictor.encode_images(features.astype(np.float32))       # ReLU-like features
  lengths = flickr_like_lengths(rng, n_cap)
  tokens = rng.integers(4, predictor.model.vocab_size, size=(n_cap, MAX_WORDS)).astype(np.int32)
  tokens[np.arange(MAX_WORDS)[None] >= lengths[:, None]] = 0
  cap_emb, cap_mask = predictor.encode_captions(tokens, lengths)
  pad = MAX_WORDS - cap_mask.shape[1]
  return (img_emb, np.pad(cap_emb, ((0, 0), (0, pad), (0, 0))),
          np.pad(cap_mask, ((0, 0), (0, pad))))


def _divisor_at_most(n: int, most: int) -> int:
  return max(k for k in range(1, min(n, most) + 1) if n % k == 0)


def run(*, images: int = 20, captions: int = 500, embed_dim: int = 1024, img_dim: int = 2048,
        regions: int = 36, variant: str = "gate_fusion", pad_words_to: int | None = None,
        dtype: str = "float32", max_tile_mb: int | None = None,
        reference_captions: int | None = None, fast_only: bool = False,
        slice_images: int | None = None, repeats: int = 1, seed: int = 0) -> dict:
  """Times both paths; returns pairs/s of each, their ratio and the largest difference.

  Each side runs `repeats` times after compiling, the two interleaved; the best time of
  each is kept.
  """
  pad = pad_words_to or (MAX_WORDS if variant == "cross_attention" else None)
  model_cfg = dict(vocab_size=1000, word_dim=300, embed_dim=embed_dim, img_dim=img_dim,
                   variant=variant, pad_words_to=pad, dtype=dtype)
  model = models.build(model_cfg)
  rng = np.random.default_rng(seed)
  n_img = min(slice_images or images, images)
  params = jax.jit(model.init)(jax.random.key(seed),
                               np.zeros((1, regions, img_dim), np.float32),
                               np.ones((1, 2), np.int32), np.array([2], np.int32))["params"]
  img_emb, cap_emb, cap_mask = synthetic_embeddings(inference.Predictor(model_cfg, params), rng,
                                                    n_img, captions, regions)
  out = dict(device_kind=jax.devices()[0].device_kind, num_devices=jax.device_count(),
             images=images, captions=captions, embed_dim=embed_dim, regions=regions,
             variant=variant, pad_words_to=pad, dtype=dtype,
             mean_caption_length=float(cap_mask.sum(1).mean()))

  tile_bytes = max_tile_mb << 20 if max_tile_mb else None
  fast = lambda: scoring.score_matrix(model, params, img_emb, cap_emb, cap_mask,
                                      max_tile_bytes=tile_bytes, progress=None)
  n_ref = 0 if fast_only else min(reference_captions or captions, captions)
  if n_ref:
    img_tile, cap_tile = _divisor_at_most(n_img, 10), _divisor_at_most(n_ref, 50)
    ref = lambda i, c: scoring.reference_score_matrix(model, params, img_emb[:i], cap_emb[:c],
                                                      cap_mask[:c], img_tile, cap_tile)
    ref(img_tile, cap_tile)                                         # compiles
  t0 = time.perf_counter()
  fast()                                                            # compiles every bucket
  out["fast_compile_and_first_run_s"] = time.perf_counter() - t0
  # Interleaved, best of `repeats` for each side: on a shared machine, noise only slows.
  fast_s = ref_s = math.inf
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    scores = fast()
    fast_s = min(fast_s, time.perf_counter() - t0)
    if n_ref:
      t0 = time.perf_counter()
      ref_scores = ref(n_img, n_ref)
      ref_s = min(ref_s, time.perf_counter() - t0)
  out.update(repeats=max(1, repeats), fast_seconds=fast_s, fast_pairs=scores.size,
             fast_pairs_per_s=scores.size / fast_s)
  if n_img < images:
    out["PROJECTED_full_seconds"] = images * captions / out["fast_pairs_per_s"]
    out["PROJECTED_note"] = (f"measured {n_img} of {images} images x all captions; the "
                             "full run's time is projected linearly from this slice")
  if n_ref:
    diff = np.abs(ref_scores - scores[:, :n_ref])
    out.update(reference_seconds=ref_s, reference_pairs=ref_scores.size,
               reference_pairs_per_s=ref_scores.size / ref_s,
               speedup=out["fast_pairs_per_s"] / (ref_scores.size / ref_s),
               max_abs_diff=float(diff.max()),
               top1_caption_agreement=float(np.mean(ref_scores.argmax(1)
                                                    == scores[:, :n_ref].argmax(1))))
  out["peak_rss_mb"] = bench.peak_rss_mb()
  return out


def describe(r: dict) -> str:
  lines = [f"device: {r['device_kind']} x{r['num_devices']}  d={r['embed_dim']} {r['variant']} "
           f"{r['dtype']}  {r['images']} x {r['captions']} pairs, mean length "
           f"{r['mean_caption_length']:.1f}",
           f"fast:      {r['fast_pairs_per_s']:10.1f} pairs/s  ({r['fast_pairs']} pairs in "
           f"{r['fast_seconds']:.2f} s, best of {r['repeats']}; compile + first run "
           f"{r['fast_compile_and_first_run_s']:.1f} s)"]
  if "PROJECTED_full_seconds" in r:
    lines.append(f"PROJECTION (not measured): full {r['images']} x {r['captions']} in "
                 f"{r['PROJECTED_full_seconds']:.0f} s ({r['PROJECTED_note']})")
  if "reference_pairs_per_s" in r:
    lines.append(f"reference: {r['reference_pairs_per_s']:10.1f} pairs/s  "
                 f"({r['reference_pairs']} pairs in {r['reference_seconds']:.2f} s, best of "
                 f"{r['repeats']})")
    lines.append(f"speedup: {r['speedup']:.2f}x   max abs diff: {r['max_abs_diff']:.2e}   "
                 f"top-1 agreement: {r['top1_caption_agreement']:.3f}")
  lines.append(f"peak RSS: {r['peak_rss_mb']:.0f} MB")
  return "\n".join(lines)
