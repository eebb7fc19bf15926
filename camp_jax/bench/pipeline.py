"""Training input-pipeline throughput in image-caption pairs per second.

  python -m camp_jax.bench pipeline --regions=36 --feature_dim=2048 --images=2000 \
      --batch_size=128 [--steps=200] [--feeds=tf,grain] [--json]

Writes a temporary precomp split of that size (random features, synthetic captions), then
for each feed warms it up and times it on the same file: "tf" is `train_batches` (tf.data,
the training feed); "grain" makes the same kind of batches with grain (`pip install grain`:
a map over step numbers, threads, numpy gathers), for comparison. The file was just written,
so it is read from the page cache: this measures the feed, not the disk.
"""
import os
import tempfile
import time

import numpy as np

from camp_jax.data import pipeline, precomp, synthetic, tokenizer, vocab as vocab_lib

FEEDS = ("tf", "grain")


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
                     num_test=1, num_regions=3, feature_dim=4, clutter_regions=0)
  with open(os.path.join(folder, "synth", "train_caps.txt"), "rb") as src, open(
      os.path.join(folder, "train_caps.txt"), "wb") as dst:
    dst.write(src.read())


def grain_batches(split, vocab, *, global_batch_size: int, seed: int, threads: int):
  """Global batches with grain: a map over step numbers, `threads` threads, 4 ahead."""
  try:
    import grain  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("--feeds=grain needs grain: pip install grain") from e
  tokens, lengths = tokenizer.encode_all(split.captions, vocab,
                                         max_words=pipeline.LENGTH_BUCKETS[-1] - 2)
  n, k, size = split.num_images, split.captions_per_image, global_batch_size
  steps_per_epoch = n // size

  def batch(g):
    epoch, step = divmod(g, steps_per_epoch)
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(n)[step * size:(step + 1) * size]
    captions = order * k + rng.integers(k, size=size)
    width = next(b for b in pipeline.LENGTH_BUCKETS if b >= lengths[captions].max())
    return {"images": np.take(split.images, order, axis=0),
            "tokens": tokens[captions, :width], "lengths": lengths[captions]}

  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4)
  return iter(grain.MapDataset.range(0, 1 << 40).map(batch).to_iter_dataset(options))


def _open(feed: str, split, vocab, batch_size: int, workers: int):
  if feed == "tf":
    return pipeline.train_batches(split, vocab, global_batch_size=batch_size, seed=0)
  return grain_batches(split, vocab, global_batch_size=batch_size, seed=0, threads=workers)


def _time(feed: str, split, vocab, *, batch_size: int, steps: int, warmup: int,
          workers: int) -> dict:
  start = time.perf_counter()
  it = _open(feed, split, vocab, batch_size, workers)
  for _ in range(warmup):
    next(it)
  setup_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(it)
  elapsed = time.perf_counter() - start
  start = time.perf_counter()
  if hasattr(it, "close"):
    it.close()
  close_s = time.perf_counter() - start
  return {"pairs_per_s": steps * batch_size / elapsed, "ms_per_batch": 1000 * elapsed / steps,
          "setup_and_warmup_s": setup_s, "close_s": close_s,
          "batch_mb": batch["images"].nbytes / 2**20}


def run(*, regions: int, feature_dim: int, images: int, batch_size: int, steps: int,
        feeds=("tf",), warmup: int = 5, workers: int | None = None, repeats: int = 1) -> dict:
  """Times each of `feeds` (see FEEDS) on one temporary split, `repeats` rounds in turn,
  the fastest round kept: {"feeds": {feed: timings}, ...}."""
  for feed in feeds:
    if feed not in FEEDS:
      raise ValueError(f"feed {feed!r}, expected some of {FEEDS}")
  workers = workers or min(4, os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as folder:
    write_split(folder, images, regions, feature_dim)
    split = precomp.read_split(folder, "train", check_finite=False)
    vocab = vocab_lib.load_vocab(os.path.join(folder, "synth", "vocab.json"))
    pipeline.prepare_tensorflow()  # As main does; not counted in the first feed's start.
    timings = {}
    for _ in range(repeats):
      for feed in feeds:
        t = _time(feed, split, vocab, batch_size=batch_size, steps=steps, warmup=warmup,
                  workers=workers)
        if feed not in timings or t["pairs_per_s"] > timings[feed]["pairs_per_s"]:
          timings[feed] = t
  return {"feeds": timings, "steps": steps, "repeats": repeats, "batch_size": batch_size,
          "images": images, "regions": regions, "feature_dim": feature_dim,
          "workers": workers, "cpus": os.cpu_count()}


def describe(r: dict) -> str:
  lines = [f"{r['batch_size']} x {r['regions']}x{r['feature_dim']} float32 features per batch "
           f"({next(iter(r['feeds'].values()))['batch_mb']:.0f} MB), {r['images']} images, "
           f"{r['steps']} batches, best of {r['repeats']}, {r['cpus']} CPUs:"]
  for feed, t in r["feeds"].items():
    lines.append(f"  {feed:6s} {t['pairs_per_s']:7.0f} image-caption pairs/s "
                 f"({t['ms_per_batch']:.1f} ms per batch; start {t['setup_and_warmup_s']:.1f} s, "
                 f"close {t['close_s']:.2f} s)")
  return "\n".join(lines)
