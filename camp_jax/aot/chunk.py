"""The largest config.train_caption_chunk whose train step fits the chip's memory.

Chunking (`scoring.caption_chunked`) bounds the step's activations by recomputing each
block of captions in the backward pass; where the whole block of pairs fits, the
recomputation is wasted work. Candidates, largest first: 0 (no chunking: every caption a
device scores at once), then the divisors of the captions per device. Each candidate is one
compile; the first that fits is the answer.
"""
from camp_jax import chunking, sharding
from camp_jax.aot import analysis, programs, topology


def trials(config, devices):
  """(chunk, config with that chunk) for each candidate: no chunking, then smaller blocks."""
  _, captions = sharding.mesh_shape(len(devices), config.batch_size, config.mesh)
  for chunk in chunking.candidates(config.batch_size // captions):
    trial = config.copy_and_resolve_references()
    trial.train_caption_chunk = chunk
    yield chunk, trial


def largest_fitting(config, topo: topology.Topology, devices) -> dict:
  """{"chunk": the largest chunk that fits or None, "tried": [{chunk, memory, fits}, ...]}."""
  tried = []
  for chunk, trial in trials(config, devices):
    try:
      compiled, compile_s = analysis.compile_program(programs.train_program(trial, devices))
    except RuntimeError as e:  # A TPU compile refuses a program over the chip's HBM.
      if "does not fit" not in str(e):
        raise
      tried.append({"chunk": chunk, "memory_per_chip_bytes": None, "fits": False})
      continue
    total = analysis.memory(compiled)["total"]
    fits = total <= topo.chip.hbm_bytes
    tried.append({"chunk": chunk, "memory_per_chip_bytes": total, "fits": fits,
                  "compile_s": compile_s})
    if fits:
      return {"chunk": chunk, "tried": tried}
  return {"chunk": None, "tried": tried}
