"""CPU devices for FLOPs and bytes where the compiler gives none (the CUDA plugin's path).

The same program is rebuilt for as many CPU devices on the same mesh shape and compiled
for the CPU, whose cost analysis counts the per-device program after SPMD partitioning:
the FLOPs are the program's (the same dots and elementwise work); the bytes follow the
CPU's fusion decisions, so they are an estimate of the GPU's HBM traffic.

The process needs that many CPU devices, set before jax starts its backends:
XLA_FLAGS=--xla_force_host_platform_device_count=N (`python -m camp_jax.aot` does it);
`analysis.cpu_cost` compiles there.
"""
import os
import re

FLAG = "--xla_force_host_platform_device_count"


def request_cpu_devices(n: int) -> None:
  """Asks for `n` CPU devices (call before jax initialises its backends)."""
  flags = os.environ.get("XLA_FLAGS", "")
  found = re.search(FLAG + r"=(\d+)", flags)
  if found and int(found.group(1)) >= n:
    return
  flags = re.sub(FLAG + r"=\d+", "", flags).strip()
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={n}".strip()
