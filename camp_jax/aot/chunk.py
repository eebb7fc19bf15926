"""The largest config.train_caption_chunk whose train step fits a chip, as a run picks it.

Both ask `memory.largest_fitting_chunk` (the same candidates, formula and headroom); a run
measures its step on its devices against their allocator's limit, this measures
`programs.train_program` on compile-only devices against the chip's HBM.
"""
from camp_jax import memory, sharding
from camp_jax.aot import analysis, programs


def captions_per_device(config, devices) -> int:
  """The batch over the captions axis of the mesh `config` gets on `devices`."""
  _, captions = sharding.mesh_shape(len(devices), config.batch_size, config.mesh)
  return config.batch_size // captions


def largest_fitting(config, devices, capacity: int, measure=None) -> dict:
  """`memory.largest_fitting_chunk` of `config`'s train step on `devices` of `capacity`
  bytes each. `measure(config with a chunk)`: bytes or None; default one compile each."""
  if measure is None:
    measure = lambda trial: memory.compiled_total(
        lambda: analysis.compile_program(programs.train_program(trial, devices))[0])
  return memory.largest_fitting_chunk(lambda chunk: measure(memory.with_chunk(config, chunk)),
                                      capacity, captions_per_device(config, devices))
