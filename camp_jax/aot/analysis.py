"""Lower and compile a program for compile-only devices; read memory, cost and a roofline.

  report = analyze(compiled_program, topology, dtype)   # one dict, the same for TPU and GPU

Per device: argument, output, temporary and alias bytes from `memory_analysis()`, their
total against the chip's HBM, FLOPs and HBM bytes per call from `cost_analysis()`, the
compile time, a roofline time max(FLOPs / peak, bytes / bandwidth), and which operations
move the bytes (`hbm.traffic_by_op`, an estimate from the optimized HLO). "fits" is
`memory.fits` of what a run's allocator gets of the chip (`capacity`), headroom kept.
The CUDA plugin returns no cost analysis: GPU programs take FLOPs and bytes from the same
program compiled for as many CPU devices on the same mesh shape (`cpu_cost`, see
`hlo_cost`), and say so in `cost_source`.
"""
import dataclasses
import time
from typing import Any, Callable

import jax

from camp_jax import memory
from camp_jax.aot import chips, hbm, hlo_cost, topology

TRAFFIC_ROWS = 12  # operations listed in "traffic_by_op", the most off-chip bytes first

TRITON_HINT = ("XLA's Triton GEMM emitter failed on this program; compile with "
               "XLA_FLAGS=--xla_gpu_enable_triton_gemm=false")


@dataclasses.dataclass
class Program:
  """A jitted function and abstract arguments (ShapeDtypeStructs with shardings)."""
  name: str                       # "train_step" or "eval_tile"
  fn: Any                         # jax.jit(...) result
  args: tuple
  kwargs: dict
  info: dict                      # shapes and plan, reported as they are
  calls: float = 1.0              # calls per unit of work (steps per epoch, tiles per eval)
  unit: str = "epoch"
  # Rebuilds the program on other devices (same mesh shape): for GPU cost on CPU devices.
  rebuild: Callable | None = None


def compile_program(program: Program):
  """(compiled, compile seconds); XLA errors with a known cause become one-line errors
  (`memory.DoesNotFit` for want of memory)."""
  start = time.perf_counter()
  try:
    compiled = program.fn.lower(*program.args, **program.kwargs).compile()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if "tile sizes" in text or "triton" in text.lower():
      first = text.strip().splitlines()[0][:300]
      raise RuntimeError(f"{program.name}: {TRITON_HINT}. XLA said: {first}") from None
    if memory.out_of_memory(e):
      first = text.strip().splitlines()[0][:400]
      raise memory.DoesNotFit(f"{program.name} does not fit the device memory: {first}") \
          from None
    raise
  return compiled, time.perf_counter() - start


def cost(compiled) -> dict | None:
  c = compiled.cost_analysis()
  if isinstance(c, (list, tuple)):
    c = c[0] if c else None
  if not c or "flops" not in c:
    return None
  return {"flops": float(c["flops"]), "bytes": float(c.get("bytes accessed", 0.0))}


def capacity(topo: topology.Topology) -> int:
  """Bytes a run's allocator gets of one of the topology's chips (`memory.chip_capacity`)."""
  return memory.chip_capacity(topo.chip.hbm_bytes, topo.platform)


def cpu_cost(program: Program, num_devices: int) -> tuple[dict | None, str]:
  """({"flops", "bytes"} per device, source) from a CPU compile of `program` on as many CPU
  devices (`hlo_cost`), or (None, why)."""
  cpus = jax.devices("cpu")
  if program.rebuild is None or len(cpus) < num_devices:
    return None, (f"none: needs {num_devices} CPU devices "
                  f"({hlo_cost.FLAG}={num_devices}), this process has {len(cpus)}")
  compiled, _ = compile_program(program.rebuild(cpus[:num_devices]))
  return cost(compiled), "cpu_compile_same_mesh"


def roofline(flops: float | None, hbm_bytes: float | None, chip: chips.Chip,
             dtype: str) -> dict:
  if flops is None or hbm_bytes is None:
    return {"roofline_s": None, "bound": None}
  compute_s, memory_s = flops / chip.peak_flops(dtype), hbm_bytes / chip.hbm_bytes_per_s
  return {"roofline_s": max(compute_s, memory_s), "compute_s": compute_s, "memory_s": memory_s,
          "bound": "compute" if compute_s >= memory_s else "memory"}


def analyze(program: Program, topo: topology.Topology, dtype: str) -> dict:
  """Compiles `program` and reports per device (see the module docstring)."""
  compiled, compile_s = compile_program(program)
  mem = memory.program_bytes(compiled)
  measured, source = cost(compiled), "xla"
  if measured is None:
    measured, source = cpu_cost(program, topo.num_devices)
  flops = measured and measured["flops"]
  hbm_bytes = measured and measured["bytes"]
  roof = roofline(flops, hbm_bytes, topo.chip, dtype)
  report = {
      "flops_per_chip": flops, "hbm_bytes_per_chip": hbm_bytes, "cost_source": source,
      "memory_per_chip_bytes": mem["total"], "hbm_capacity_bytes": topo.chip.hbm_bytes,
      "usable_bytes": memory.usable_bytes(capacity(topo)),
      "fits": memory.fits(mem["total"], capacity(topo)),
      "argument_bytes": mem["argument"], "output_bytes": mem["output"],
      "temp_bytes": mem["temp"], "alias_bytes": mem["alias"],
      "compile_s": compile_s, "peak_flops": topo.chip.peak_flops(dtype),
      "hbm_bytes_per_s": topo.chip.hbm_bytes_per_s, **roof, **program.info,
  }
  if roof["roofline_s"] is not None:
    report[f"hours_per_{program.unit}"] = roof["roofline_s"] * program.calls / 3600
  total, rows = hbm.traffic_by_op(compiled.as_text())
  report["traffic_estimate_bytes"] = total["bytes"]
  report["off_chip_traffic_estimate_bytes"] = total["off_chip_bytes"]
  report["traffic_by_op"] = rows[:TRAFFIC_ROWS]
  return report
