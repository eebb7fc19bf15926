"""How many captions each device scores at once in the train step (config.train_caption_chunk).

Chunks (`scoring.caption_chunked`) bound the step's activations: only one block of captions
is alive at a time. With `backward_pairs="all"` each block is recomputed in the backward
pass, wasted work where the whole block of pairs fits; with "hardest" (the default) the
blocks have no backward pass, so chunks cost no FLOPs (on CPU, batch 128 at d=1024, chunks
of 16 ran faster than none). -1 ("auto") picks the largest block that fits, trying no
chunking first; `train.resolve_caption_chunk` does it on the real devices, `camp_jax.aot`
for a slice.
"""
import os

import jax
from absl import logging


AUTO = -1  # config.train_caption_chunk: pick from the device's memory.


def device_memory_bytes(device) -> int:
  """What one device can hold: its allocator's limit, or this host's RAM shared by its
  devices (CPU, where jax reports no limit)."""
  limit = (device.memory_stats() or {}).get("bytes_limit")
  if limit:
    return int(limit)
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // jax.local_device_count()


def candidates(captions_per_device: int, most: int = 6) -> list[int]:
  """0 (no chunking), then the largest proper divisors of the captions per device."""
  divisors = [c for c in range(captions_per_device - 1, 0, -1) if captions_per_device % c == 0]
  return ([0] + divisors)[:most]


def largest_fitting(memory_of, capacity: int, captions_per_device: int,
                          headroom: float = 0.9) -> int:
  """The largest train_caption_chunk whose step fits `headroom` x `capacity` bytes.

  `memory_of(chunk)` compiles the step with that chunk and returns its bytes per device.
  Chunks recompute each block of captions in the backward pass: wasted work where the
  whole block of pairs fits, so no chunking is tried first.
  """
  tried = []
  for chunk in candidates(captions_per_device):
    need = memory_of(chunk)
    tried.append(f"{chunk}: {need / 2**30:.2f} GiB")
    if need <= headroom * capacity:
      logging.info("train_caption_chunk=%d: the step needs %.2f GiB of %.2f GiB per device "
                   "(tried %s)", chunk, need / 2**30, capacity / 2**30, ", ".join(tried))
      return chunk
  raise ValueError(f"config.train_caption_chunk=-1: no chunk fits {capacity / 2**30:.1f} GiB "
                   f"per device (tried {', '.join(tried)}); lower config.batch_size or use "
                   "more devices")
