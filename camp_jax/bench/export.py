"""The exported `score_matrix` artifact against the inference API, on the same inputs.

A bundle (given, e.g. a converted checkpoint, or one of random parameters written to a
temporary folder) gets its StableHLO artifacts (`camp_jax.export.write_stablehlo`); then
`jax.export.deserialize(score_matrix.bin).call` and `inference.load(bundle).score_matrix`
score the same embeddings: captions of Flickr30K-like lengths, trimmed to the longest, as
`encode_captions` gives them. Both are timed after compilation, alternately, best of
`repeats`.
"""
import pathlib
import tempfile
import time

import jax
import numpy as np

from camp_jax import bench, bundle, export, inference, models
from camp_jax.bench import scoring as scoring_bench


def _best_seconds(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def run(*, images: int = 20, captions: int = 400, embed_dim: int = 256, img_dim: int = 2048,
        regions: int = 36, bundle_dir: str | None = None, repeats: int = 3,
        seed: int = 0) -> dict:
  """Pairs/s of the artifact and of the inference API, their ratio and largest difference."""
  with tempfile.TemporaryDirectory() as tmp:
    if bundle_dir is None:
      model_cfg = dict(name="camp", vocab_size=1000, word_dim=300, embed_dim=embed_dim,
                       img_dim=img_dim)
      params = jax.jit(models.build(model_cfg).init)(
          jax.random.key(seed), np.zeros((1, regions, img_dim), np.float32),
          np.ones((1, 2), np.int32), np.array([2], np.int32))["params"]
      bundle_dir = bundle.save(pathlib.Path(tmp) / "bundle", params, model_cfg)
    model_cfg, params, _, _ = bundle.load(bundle_dir)
    start = time.perf_counter()
    stablehlo = export.write_stablehlo(pathlib.Path(tmp) / "artifacts", model_cfg, params)
    export_s = time.perf_counter() - start
    artifact = jax.export.deserialize((stablehlo / "score_matrix.bin").read_bytes())
    flat = bundle.flatten_params(params)
    predictor = inference.load(bundle_dir)
    img_emb, cap_emb, cap_mask = scoring_bench.synthetic_embeddings(
        predictor, np.random.default_rng(seed), images, captions, regions)
    width = int(cap_mask.sum(1).max())
    cap_emb, cap_mask = cap_emb[:, :width], cap_mask[:, :width]

    call_artifact = jax.jit(artifact.call)
    run_artifact = lambda: call_artifact(flat, img_emb, cap_emb, cap_mask)
    run_inference = lambda: predictor.score_matrix(img_emb, cap_emb, cap_mask, progress=None)
    start = time.perf_counter()
    got = np.asarray(run_artifact())
    artifact_compile_s = time.perf_counter() - start
    expected = run_inference()
    artifact_s = inference_s = float("inf")
    for _ in range(repeats):                                 # alternately: same conditions
      artifact_s = min(artifact_s, _best_seconds(run_artifact, 1))
      inference_s = min(inference_s, _best_seconds(run_inference, 1))
  pairs = images * captions
  return {"device_kind": jax.devices()[0].device_kind, "images": images, "captions": captions,
          "embed_dim": model_cfg["embed_dim"], "caption_width": width,
          "mean_caption_length": float(cap_mask.sum(1).mean()),
          "export_s": export_s, "artifact_compile_and_first_run_s": artifact_compile_s,
          "artifact_pairs_per_s": pairs / artifact_s,
          "inference_pairs_per_s": pairs / inference_s,
          "ratio": inference_s / artifact_s,
          "max_abs_diff": float(np.abs(got - expected).max()),
          "peak_rss_mb": bench.peak_rss_mb()}


def describe(r: dict) -> str:
  return "\n".join([
      f"device: {r['device_kind']}  d={r['embed_dim']}  {r['images']} x {r['captions']} pairs, "
      f"caption width {r['caption_width']}, mean length {r['mean_caption_length']:.1f}",
      f"artifact (score_matrix.bin): {r['artifact_pairs_per_s']:10.1f} pairs/s  (export "
      f"{r['export_s']:.1f} s, compile + first run {r['artifact_compile_and_first_run_s']:.1f} s)",
      f"inference.score_matrix:      {r['inference_pairs_per_s']:10.1f} pairs/s",
      f"artifact / inference: {r['ratio']:.2f}x   max abs diff: {r['max_abs_diff']:.2e}",
      f"peak RSS: {r['peak_rss_mb']:.0f} MB"])
