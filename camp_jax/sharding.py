"""Device mesh, named shardings, global batches, and multi-process start-up."""
import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with a `data` axis over every device of every process (Auto axis type)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the `data` axis."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's share of a batch (numpy) -> global jax.Arrays sharded over `data`."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts jax.distributed when this is one of several processes; returns whether it did.

  Explicit arguments win; otherwise a TPU pod slice or SLURM job is detected from the
  environment (jax reads the details itself). A single process runs unchanged.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = coordinator is not None or (num_processes or 1) > 1
  in_slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  in_tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
  if not (explicit or in_slurm or in_tpu_pod):
    return False
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
