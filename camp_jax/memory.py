"""What fits on a device: a compiled program's bytes, the headroom kept, and the chunk search.

  program_bytes(compiled) -> {"argument", "output", "temp", "alias", "generated_code", "total"}
  fits(total, capacity) -> bool        total <= HEADROOM x capacity
  device_memory_bytes(device), chip_capacity(hbm_bytes, platform) -> capacity
  largest_fitting_chunk(measure, capacity, captions_per_device) -> {"chunk", "tried", ...}

A run (`train.resolve_caption_chunk`, on its devices' allocator limit) and the compile-only
analysis (`camp_jax.aot`, on what that limit is for the chip: `chip_capacity`) both decide
here, with the same headroom.

config.train_caption_chunk: how many captions each device scores at once in the train
step. Chunks (`objective.caption_chunked`) bound the step's activations: only one block of
captions is alive at a time. With backward_pairs="all" each block is recomputed in the
backward pass, wasted work where the whole block of pairs fits, so no chunking is tried
first. With "hardest" (the default) the all-pairs pass has no backward pass and its blocks
cost nothing extra (on CPU, batch 128 at d=1024, blocks of 16 ran faster than none). -1
(`AUTO`) picks the largest block that fits.
"""
import os
from typing import Callable

import jax
from absl import logging

AUTO = -1  # config.train_caption_chunk: pick from the device's memory.
# Share of a device's memory a program may take: the rest is left to what the program does
# not count (the allocator's fragmentation, the input batches in flight, other programs).
HEADROOM = 0.9
GIB = float(1 << 30)


def device_memory_bytes(device) -> int:
  """What one device can hold: its allocator's limit, or this host's RAM shared by its
  devices (CPU, where jax reports no limit)."""
  limit = (device.memory_stats() or {}).get("bytes_limit")
  if limit:
    return int(limit)
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // jax.local_device_count()


def chip_capacity(hbm_bytes: int, platform: str) -> int:
  """What a run's allocator gets of a chip of `hbm_bytes` (`device_memory_bytes` there):
  all of a TPU's; of a GPU's, the share jax's client takes, XLA_PYTHON_CLIENT_MEM_FRACTION
  (default 0.75)."""
  if platform != "cuda":
    return hbm_bytes
  return int(float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75")) * hbm_bytes)


def program_bytes(compiled) -> dict:
  """A compiled program's bytes per device (`memory_analysis`); "total" counts donated
  arguments, which alias outputs, once: argument + output - alias + temp."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes"))
         for k in ("argument", "output", "temp", "alias", "generated_code")}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


class DoesNotFit(RuntimeError):
  """A compiler refused a program for want of device memory."""


def out_of_memory(error: Exception) -> bool:
  """Whether a compile failed for want of device memory (TPU compiles refuse such programs)."""
  text = str(error)
  return (isinstance(error, DoesNotFit) or "RESOURCE_EXHAUSTED" in text
          or "Ran out of memory" in text)


def compiled_total(compile_fn: Callable[[], object]) -> int | None:
  """`program_bytes(compile_fn())["total"]`, or None where the compiler refuses it for want
  of memory."""
  try:
    compiled = compile_fn()
  except Exception as e:  # pylint: disable=broad-except
    if out_of_memory(e):
      return None
    raise
  return program_bytes(compiled)["total"]


def with_chunk(config, chunk: int):
  """A copy of `config` with train_caption_chunk = `chunk`."""
  config = config.copy_and_resolve_references()
  config.train_caption_chunk = chunk
  return config


def usable_bytes(capacity: int) -> int:
  return int(HEADROOM * capacity)


def fits(total: int, capacity: int) -> bool:
  """Whether a program of `total` bytes fits a device of `capacity`, headroom kept."""
  return total <= usable_bytes(capacity)


def candidates(captions_per_device: int, most: int = 6) -> list[int]:
  """0 (no chunking), then the largest proper divisors of the captions per device."""
  divisors = [c for c in range(captions_per_device - 1, 0, -1) if captions_per_device % c == 0]
  return ([0] + divisors)[:most]


def largest_fitting_chunk(measure: Callable[[int], int | None], capacity: int,
                          captions_per_device: int) -> dict:
  """The first of `candidates` whose train step `fits`: one `measure` each, largest first.

  Args:
    measure: chunk -> the step's total bytes per device (`program_bytes`), or None where
      the compiler refuses it for want of memory.
    capacity: bytes of one device.
    captions_per_device: the batch over the mesh's captions axis.

  Returns:
    {"chunk": the chunk, or None when none fits, "capacity_bytes", "usable_bytes",
     "tried": [{"chunk", "memory_per_chip_bytes" (None: refused), "fits"}, ...]}.
  """
  tried = []
  for chunk in candidates(captions_per_device):
    total = measure(chunk)
    ok = total is not None and fits(total, capacity)
    tried.append({"chunk": chunk, "memory_per_chip_bytes": total, "fits": ok})
    if ok:
      break
  found = tried[-1]["chunk"] if tried and tried[-1]["fits"] else None
  return {"chunk": found, "capacity_bytes": capacity, "usable_bytes": usable_bytes(capacity),
          "tried": tried}


def describe_tried(result: dict) -> str:
  """"0: 3.10 GiB, 16: 1.20 GiB" of a `largest_fitting_chunk` result."""
  gib = lambda b: "refused" if b is None else f"{b / GIB:.2f} GiB"
  return ", ".join(f"{t['chunk']}: {gib(t['memory_per_chip_bytes'])}" for t in result["tried"])


def resolved_chunk(result: dict) -> int:
  """The chunk of a `largest_fitting_chunk` result, logged; raises when none fits."""
  capacity = result["capacity_bytes"] / GIB
  if result["chunk"] is None:
    raise ValueError(f"config.train_caption_chunk=-1: no chunk fits {HEADROOM:.0%} of "
                     f"{capacity:.1f} GiB per device (tried {describe_tried(result)}); lower "
                     "config.batch_size or use more devices")
  logging.info("train_caption_chunk=%d: the step fits %.0f%% of %.2f GiB per device (tried %s)",
               result["chunk"], 100 * HEADROOM, capacity, describe_tried(result))
  return result["chunk"]
