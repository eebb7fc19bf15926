"""FLOPs and bytes where the compiler gives none (the CUDA plugin's compile-only path).

The same program is rebuilt for as many CPU devices on the same mesh shape and compiled
for the CPU, whose cost analysis counts the per-device program after SPMD partitioning:
the FLOPs are the program's (the same dots and elementwise work); the bytes follow the
CPU's fusion decisions, so they are an estimate of the GPU's HBM traffic.

The process needs that many CPU devices, set before jax starts its backends:
XLA_FLAGS=--xla_force_host_platform_device_count=N (`python -m camp_jax.aot` does it).
"""
import os
import re

import jax

FLAG = "--xla_force_host_platform_device_count"


def request_cpu_devices(n: int) -> None:
  """Asks for `n` CPU devices (call before jax initialises its backends)."""
  flags = os.environ.get("XLA_FLAGS", "")
  found = re.search(FLAG + r"=(\d+)", flags)
  if found and int(found.group(1)) >= n:
    return
  flags = re.sub(FLAG + r"=\d+", "", flags).strip()
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={n}".strip()


def cpu_cost(program, num_devices: int) -> tuple[dict | None, str]:
  """({"flops", "bytes"} per device, source) from a CPU compile of `program`, or (None, why)."""
  from camp_jax.aot import analysis  # pylint: disable=g-import-not-at-top
  cpus = jax.devices("cpu")
  if program.rebuild is None or len(cpus) < num_devices:
    return None, (f"none: needs {num_devices} CPU devices "
                  f"({FLAG}={num_devices}), this process has {len(cpus)}")
  compiled, _ = analysis.compile_program(program.rebuild(cpus[:num_devices]))
  return analysis.cost(compiled), "cpu_compile_same_mesh"
