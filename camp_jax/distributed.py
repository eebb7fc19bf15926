"""Processes and devices: `jax.distributed` start-up, what runs where, who writes files.

One process runs unchanged. Several processes (a TPU pod slice, a SLURM job, or explicit
--coordinator/--num_processes/--process_id) call `initialize_distributed` before anything
touches a device; the mesh (`camp_jax.sharding`) then spans every device of every process.
"""
import importlib.metadata
import os

import jax
from absl import logging

# Seconds without heartbeats after which a process counts as dead and the others abort
# (jax's default is 100). Also bounds the shutdown barrier at exit.
DEFAULT_HEARTBEAT_TIMEOUT_S = 60


# Packages that make jax run on an accelerator; installed but unused means a broken install.
ACCELERATOR_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin", "libtpu")


def log_platform() -> None:
  """Logs the platform, device kinds and counts; warns in one line when an accelerator plugin
  is installed but jax fell back to the CPU (a plugin of another jax version, say)."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  logging.info("jax %s on %s: %d devices (%s), %d local, process %d of %d", jax.__version__,
               jax.default_backend(), len(devices), ", ".join(kinds), jax.local_device_count(),
               jax.process_index(), jax.process_count())
  if jax.default_backend() == "cpu":
    installed = []
    for name in ACCELERATOR_PLUGINS:
      try:
        installed.append(f"{name} {importlib.metadata.version(name)}")
      except importlib.metadata.PackageNotFoundError:
        pass
    if installed and os.environ.get("JAX_PLATFORMS", "") != "cpu":
      logging.warning("running on the CPU although %s is installed: it does not match jax %s "
                      "(reinstall with pip install -e '.[cuda12]' or '.[tpu]')",
                      ", ".join(installed), jax.__version__)


def is_primary() -> bool:
  """Whether this process writes files that all processes share (eval JSON, tables)."""
  return jax.process_index() == 0


def _env_says_multiprocess() -> bool:
  """A SLURM step of several tasks, a multi-host TPU slice, or CAMP_DISTRIBUTED=1."""
  if os.environ.get("CAMP_DISTRIBUTED", "") not in ("", "0"):
    return True
  # Inside `srun` (SLURM_STEP_* are set per step); an sbatch script itself is one process.
  if "SLURM_STEP_NODELIST" in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS",
                                                                 os.environ.get("SLURM_NTASKS",
                                                                                "1"))) > 1:
    return True
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           heartbeat_timeout_s: int | None = None) -> bool:
  """Starts jax.distributed when this is one of several processes; returns whether it did.

  Explicit arguments win; otherwise a SLURM step or a TPU pod slice is detected from the
  environment and jax reads the details itself (on a TPU VM pod, whose environment does
  not always say so, set CAMP_DISTRIBUTED=1). A single process runs unchanged.

  `heartbeat_timeout_s` (default: $CAMP_HEARTBEAT_TIMEOUT_S, else 60) bounds how long the
  other processes wait for a process that died: after it, the coordination service
  reports the missing process and every survivor aborts with an error instead of hanging
  in a collective. It also bounds the barrier at exit.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = coordinator is not None or (num_processes or 1) > 1
  if not (explicit or _env_says_multiprocess()):
    return False
  if explicit and None in (coordinator, num_processes, process_id):
    raise ValueError("a multi-process run needs --coordinator, --num_processes and "
                     f"--process_id together (got {coordinator}, {num_processes}, "
                     f"{process_id})")
  if heartbeat_timeout_s is None:
    heartbeat_timeout_s = int(os.environ.get("CAMP_HEARTBEAT_TIMEOUT_S",
                                             DEFAULT_HEARTBEAT_TIMEOUT_S))
  kwargs = dict(heartbeat_timeout_seconds=heartbeat_timeout_s,
                shutdown_timeout_seconds=heartbeat_timeout_s)
  if explicit:
    kwargs.update(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  # CPU processes talk through gloo (jax's default; set explicitly so an environment
  # variable cannot leave CPU collectives off). No effect on TPU and GPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices, heartbeat "
               "timeout %d s", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), heartbeat_timeout_s)
  return True
