"""--topology names -> compile-only devices, on a machine with neither TPU nor GPU.

  v5e:16x16, v5p:8x8x8, v4:4x4x4, v6e:2x2   TPU slices (libtpu: pip install -e '.[tpu]')
  h100:8, h200:1, a100-80g:16               GPUs, 8 per host (pip install -e '.[cuda12]')

TPU devices come from libtpu's topology API; GPU devices from the CUDA plugin given a
GpuTargetConfigProto (`chips.Chip.target_config`). Neither needs the hardware.
"""
import dataclasses
import importlib.util
import math
import os

from camp_jax.aot import chips

INSTALL = {"tpu": "pip install -e '.[tpu]'", "cuda": "pip install -e '.[cuda12]'"}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str          # as given, e.g. "v5e:16x16"
  chip: chips.Chip
  shape: tuple       # TPU: the slice's chip grid; GPU: (hosts, GPUs per host)

  @property
  def num_devices(self) -> int:
    return math.prod(self.shape)

  @property
  def platform(self) -> str:
    return self.chip.platform


def parse(name: str) -> Topology:
  """"v5e:4x4" -> Topology; "h100:8" -> 8 GPUs (8 per host). Raises ValueError."""
  prefix, sep, dims = name.strip().partition(":")
  if not sep or not dims:
    raise ValueError(f"--topology={name!r}: expected CHIP:SHAPE, e.g. v5e:4x4, v5p:2x2x2, "
                     "h100:8")
  chip = chips.get(prefix)
  try:
    shape = tuple(int(x) for x in dims.lower().split("x"))
  except ValueError:
    raise ValueError(f"--topology={name!r}: shape {dims!r} is not like 4x4 or 8") from None
  if any(s < 1 for s in shape):
    raise ValueError(f"--topology={name!r}: sizes must be positive")
  if chip.platform == "cuda":
    if len(shape) != 1:
      raise ValueError(f"--topology={name!r}: GPUs are counted, e.g. {prefix}:8")
    n, per_host = shape[0], chip.chips_per_host
    if n > per_host and n % per_host:
      raise ValueError(f"--topology={name!r}: more than {per_host} GPUs must be whole hosts "
                       f"of {per_host}")
    shape = (max(1, n // per_host), min(n, per_host))
  elif len(shape) not in (2, 3):
    raise ValueError(f"--topology={name!r}: TPU slices are 2-D (v5e, v6e) or 3-D (v4, v5p)")
  return Topology(name.strip(), chip, shape)


def parse_list(values) -> list[Topology]:
  """Repeated and/or comma-separated --topology values."""
  names = [n for v in values for n in str(v).split(",") if n.strip()]
  if not names:
    raise ValueError("give at least one --topology, e.g. --topology=v5e:4x4")
  return [parse(n) for n in names]


def prepare_env(platforms) -> None:
  """Environment the plugins read when jax first initialises its backends: call early.

  Without a driver the CUDA plugin's version check fails on cuInit; skip it (the devices
  are compile-only anyway).
  """
  if "cuda" in platforms:
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


def require(platform: str) -> None:
  """Raises RuntimeError, saying what to install, unless `platform`'s compiler is here."""
  module = {"tpu": "libtpu", "cuda": "jax_cuda12_plugin"}[platform]
  if platform == "tpu" and os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
    return  # jax loads libtpu from there, as on TPU VM images
  if importlib.util.find_spec(module) is None:
    what = "libtpu" if platform == "tpu" else "the CUDA plugin (jax-cuda12-plugin)"
    raise RuntimeError(f"compiling for {platform.upper()} needs {what}, which is not "
                       f"installed: {INSTALL[platform]}")


def devices(topo: Topology) -> list:
  """The topology's compile-only devices, in jax's order."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  require(topo.platform)
  if topo.platform == "tpu":
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.name,
                                        **(topo.chip.tpu_options or {}))
  else:
    prepare_env(("cuda",))
    grid = "1x{}x{}".format(*topo.shape)  # slices x hosts x GPUs per host
    desc = topologies.get_topology_desc(grid, "cuda", target_config=topo.chip.target_config(),
                                        topology=grid)
  found = list(desc.devices)
  if len(found) != topo.num_devices:
    raise RuntimeError(f"{topo.name}: expected {topo.num_devices} devices, the topology API "
                       f"gave {len(found)}")
  return found
