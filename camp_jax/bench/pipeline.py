"""Training input-pipeline throughput in image-caption pairs per second.

  python -m camp_jax.bench pipeline --regions=36 --feature_dim=2048 --images=2000 \
      --batch_size=128 [--steps=200] [--backend=thread|tf] [--json]

Writes a temporary precomp split of that size (random features, synthetic captions), warms
the pipeline up, then times `train_batches`. The file was just written, so it is read from
the page cache: this measures the pipeline, not the disk.
"""
import os
import tempfile
import time

import numpy as np

from camp_jax.data import pipeline, precomp, synthetic, vocab as vocab_lib


def write_split(folder: str, num_images: int, regions: int, feature_dim: int) -> None:
  """Random float32 (num_images, regions, feature_dim) features, written in chunks."""
  images = np.lib.format.open_memmap(os.path.join(folder, "train_ims.npy"), mode="w+",
                                     dtype=np.float32, shape=(num_images, regions, feature_dim))
  rng = np.random.default_rng(0)
  for start in range(0, num_images, 256):
    stop = min(num_images, start + 256)
    images[start:stop] = rng.random((stop - start, regions, feature_dim), np.float32)
  images.flush()
  del images
  # Borrow captions from a small synthetic set, repeated to the needed count.
  synthetic.generate(os.path.join(folder, "synth"), num_train=num_images, num_dev=1,
                     num_test=1, num_regions=3, feature_dim=4)
  with open(os.path.join(folder, "synth", "train_caps.txt"), "rb") as src, open(
      os.path.join(folder, "train_caps.txt"), "wb") as dst:
    dst.write(src.read())


def run(*, regions: int, feature_dim: int, images: int, batch_size: int, steps: int,
        backend: str = "thread", warmup: int = 5, workers: int | None = None) -> dict:
  with tempfile.TemporaryDirectory() as folder:
    write_split(folder, images, regions, feature_dim)
    split = precomp.read_split(folder, "train", check_finite=False)
    vocab = vocab_lib.load_vocab(os.path.join(folder, "synth", "vocab.json"))
    start = time.perf_counter()
    with pipeline.train_batches(split, vocab, global_batch_size=batch_size, seed=0,
                                backend=backend, workers=workers) as it:
      for _ in range(warmup):
        next(it)
      setup_s = time.perf_counter() - start
      start = time.perf_counter()
      for _ in range(steps):
        batch = next(it)
      elapsed = time.perf_counter() - start
      workers = it.workers
  return {"pairs_per_s": steps * batch_size / elapsed, "batches_per_s": steps / elapsed,
          "ms_per_batch": 1000 * elapsed / steps, "steps": steps, "batch_size": batch_size,
          "images": images, "regions": regions, "feature_dim": feature_dim,
          "batch_mb": batch["images"].nbytes / 2**20, "setup_and_warmup_s": setup_s,
          "backend": backend, "workers": workers, "cpus": os.cpu_count()}


def describe(r: dict) -> str:
  return (f"{r['pairs_per_s']:.0f} image-caption pairs/s ({r['ms_per_batch']:.1f} ms per batch "
          f"of {r['batch_size']} x {r['regions']}x{r['feature_dim']} features, "
          f"{r['batch_mb']:.0f} MB; backend {r['backend']}, {r['workers']} workers, "
          f"{r['cpus']} CPUs)")
