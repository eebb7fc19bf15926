"""One topology's report: both programs analysed, as a dict (JSON) and as a readable table."""
import os

from camp_jax import memory
from camp_jax.aot import analysis, chunk, hlo_cost, programs as programs_lib, topology

GIB = float(1 << 30)
DESCRIBE_ROWS = 6  # of the largest traffic rows


def prepare(topos) -> None:
  """Process set-up before jax starts its backends: plugin environment, CPU devices for
  the GPU cost analysis, and CPU as the default backend (compile-only devices come from
  the topology API whatever the default is)."""
  topology.prepare_env({t.platform for t in topos})
  gpus = [t.num_devices for t in topos if t.platform == "cuda"]
  if gpus:
    hlo_cost.request_cpu_devices(max(gpus))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run(config, topo: topology.Topology, programs=("train",), fit_chunk: bool = False) -> dict:
  """Compiles `programs` ("train", "eval") of `config` for `topo`; the report as a dict.
  `fit_chunk`: also search the largest train_caption_chunk that fits (`chunk`)."""
  devices = topology.devices(topo)
  dtype = config.model.dtype
  out = {"topology": topo.name, "chips": topo.num_devices, "platform": topo.platform,
         "device_kind": devices[0].device_kind, "batch_size": config.batch_size,
         "dtype": dtype}
  keys = {"train": "train_step", "eval": "eval_tile"}
  for name in programs:
    if name == "train" and config.train_caption_chunk == memory.AUTO:
      out[keys[name]] = _auto_chunk_train(config, topo, devices)
      continue
    program = programs_lib.PROGRAMS[name](config, devices)
    out[keys[name]] = analysis.analyze(program, topo, dtype)
  if fit_chunk:
    capacity = analysis.capacity(topo)
    out["largest_fitting_chunk"] = chunk.largest_fitting(config, devices, capacity)
  out["mesh"] = next((out[k]["mesh"] for k in keys.values() if k in out), None)
  return out


def _auto_chunk_train(config, topo, devices) -> dict:
  """train_caption_chunk=-1 as a run resolves it (`chunk`, `memory.largest_fitting_chunk`):
  the report of the chunk picked, or of the last tried when none fits."""
  reports = []

  def measure(trial):
    reports.append(analysis.analyze(programs_lib.train_program(trial, devices), topo,
                                    config.model.dtype))
    return reports[-1]["memory_per_chip_bytes"]

  chunk.largest_fitting(config, devices, analysis.capacity(topo), measure)
  return reports[-1]


def not_fitting(reports) -> list[str]:
  """One line per program that does not fit its chip's memory."""
  lines = []
  for r in reports:
    for key in ("train_step", "eval_tile"):
      p = r.get(key)
      if p and not p["fits"]:
        need, have = p["memory_per_chip_bytes"] / GIB, p["usable_bytes"] / GIB
        lines.append(f"{key} on {r['topology']} needs {need:.2f} GiB per chip, "
                     f"{need - have:.2f} GiB more than the {have:.1f} GiB a run may use "
                     f"of its {p['hbm_capacity_bytes'] / GIB:.1f} GiB (memory.HEADROOM, "
                     "and jax's share on GPUs)")
  return lines


def _num(x, scale=1.0, fmt="{:.2f}") -> str:
  return "n/a" if x is None else fmt.format(x / scale)


def _duration(hours) -> str:
  if hours is None:
    return "n/a"
  if hours >= 1.0:
    return f"{hours:.2f} h"
  return f"{hours * 60:.2f} min" if hours * 60 >= 1.0 else f"{hours * 3600:.2f} s"


def describe(r: dict) -> str:
  mesh = "x".join(str(v) for v in (r["mesh"] or {}).values())
  lines = [f"{r['topology']}: {r['chips']} x {r['device_kind']}, mesh {r['mesh']} ({mesh}), "
           f"batch {r['batch_size']}, {r['dtype']}"]
  for key in ("train_step", "eval_tile"):
    p = r.get(key)
    if not p:
      continue
    unit = "epoch" if key == "train_step" else "eval"
    lines += [
        f"  {key}: per device",
        f"    memory   {_num(p['memory_per_chip_bytes'], GIB)} GiB of "
        f"{_num(p['hbm_capacity_bytes'], GIB, '{:.1f}')} GiB, {_num(p['usable_bytes'], GIB)} "
        f"GiB usable  fits: "
        f"{'yes' if p['fits'] else 'NO'}  (arguments {_num(p['argument_bytes'], GIB)}, "
        f"outputs {_num(p['output_bytes'], GIB)}, temporaries {_num(p['temp_bytes'], GIB)}, "
        f"aliased {_num(p['alias_bytes'], GIB)} GiB)",
        f"    cost     {_num(p['flops_per_chip'], 1e12, '{:.3f}')} TFLOP, "
        f"{_num(p['hbm_bytes_per_chip'], GIB)} GiB HBM traffic  ({p['cost_source']})",
        f"    roofline {_num(p['roofline_s'], 1e-3, '{:.2f}')} ms ({p['bound']}-bound)  "
        f"{_duration(p.get(f'hours_per_{unit}'))} per {unit}  "
        f"compile {p['compile_s']:.1f} s"]
    if p.get("traffic_by_op"):
      lines.append(f"    traffic  estimated from the HLO: "
                   f"{_num(p['traffic_estimate_bytes'], GIB)} GiB, "
                   f"{_num(p['off_chip_traffic_estimate_bytes'], GIB)} GiB of it off chip; "
                   f"the largest (GiB in all, off chip):")
      gib = lambda x: _num(x, GIB, "{:.3f}")
      lines += [f"      {gib(row['bytes'])} {gib(row['off_chip_bytes'])}  {row['hlo']:<12} "
                f"{row['op']}" for row in p["traffic_by_op"][:DESCRIBE_ROWS]]
    if key == "eval_tile":
      lines.append(f"    tile     {p['image_group']} images x {p['caption_chunk']} captions "
                   f"(blocks of {p['caption_block']}), {p['tiles']} tiles for "
                   f"{p['eval_images']} x {p['eval_captions']} ({p['eval_split']})")
  fit = r.get("largest_fitting_chunk")
  if fit:
    lines.append(f"  largest train_caption_chunk that fits the usable memory: "
                 f"{fit['chunk']} (0 = no chunking; tried {memory.describe_tried(fit)})")
  return "\n".join(lines)
