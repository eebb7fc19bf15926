"""Facts about the chips the compile-only analysis targets: memory, bandwidth, peak FLOP/s.

Figures are the vendors' public per-chip numbers (dense, no sparsity):
  * TPU v4:  https://cloud.google.com/tpu/docs/v4   (32 GiB HBM2, 1,200 GB/s, 275 TFLOP/s bf16)
  * TPU v5e: https://cloud.google.com/tpu/docs/v5e  (16 GiB HBM2, 819 GB/s, 197 TFLOP/s bf16)
  * TPU v5p: https://cloud.google.com/tpu/docs/v5p  (95 GiB HBM2e, 2,765 GB/s, 459 TFLOP/s bf16)
  * TPU v6e: https://cloud.google.com/tpu/docs/v6e  (32 GiB HBM, 1,640 GB/s, 918 TFLOP/s bf16)
  * H100 SXM 80GB: NVIDIA H100 Tensor Core GPU datasheet (80 GB HBM3, 3.35 TB/s, 989 TFLOP/s
    bf16 dense, 494.7 TFLOP/s TF32 dense, 132 SMs)
  * H200 SXM: NVIDIA H200 Tensor Core GPU datasheet (141 GB HBM3e, 4.8 TB/s, the H100's
    compute: 989 / 494.7 TFLOP/s; 143,771 MiB as nvidia-smi reports it)
  * A100 SXM 80GB: NVIDIA A100 Tensor Core GPU datasheet (80 GB HBM2e, 2,039 GB/s, 312 TFLOP/s
    bf16, 156 TFLOP/s TF32, 108 SMs)
GPU target descriptions (SM count, shared memory, L2, clock, memory size as the driver
reports it) follow XLA's own spec files (xla/tools/hlo_opt/gpu_specs/{h100_sxm,a100_sxm_80}
.txtpb); the H200's are the H100's with its memory and bandwidth.

`f32_flops` is the peak for float32 matrix products at jax's default precision: a TPU runs
them as one bfloat16 pass (so the bf16 peak), an Ampere/Hopper GPU as TF32.
"""
import dataclasses

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str                 # the --topology prefix, e.g. "v5e" or "h100"
  platform: str             # "tpu" or "cuda"
  device_kind: str          # what jax reports as device_kind
  hbm_bytes: int
  hbm_bytes_per_s: float
  bf16_flops: float         # dense peak FLOP/s
  f32_flops: float          # float32 matmuls at jax's default precision (see above)
  chips_per_host: int
  gpu: dict | None = None   # GPU only: the fields of the GpuTargetConfigProto
  # TPU only: libtpu topology options. v4 runs as one device per chip ("megacore", as jax
  # uses it on a v4 VM); libtpu's compile-only default is one device per TensorCore.
  tpu_options: dict | None = None

  def peak_flops(self, dtype: str) -> float:
    return self.bf16_flops if dtype == "bfloat16" else self.f32_flops

  def target_config(self) -> str:
    """The GpuTargetConfigProto (text format) that the CUDA plugin compiles for."""
    if self.gpu is None:
      raise ValueError(f"{self.name} is a TPU; only GPUs take a target config")
    g = self.gpu
    info = {
        "threads_per_block_limit": 1024, "threads_per_warp": 32,
        "shared_memory_per_block": 48 << 10, "shared_memory_per_core": g["smem_per_sm"],
        "threads_per_core_limit": 2048, "core_count": g["sms"],
        "fpus_per_core": g["fpus_per_sm"], "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
        "memory_bandwidth": int(self.hbm_bytes_per_s), "l2_cache_size": g["l2_bytes"],
        "clock_rate_ghz": g["clock_ghz"], "device_memory_size": self.hbm_bytes,
        "shared_memory_per_block_optin": g["smem_per_block_optin"],
    }
    lines = ["gpu_device_info {"] + [f"  {k}: {v}" for k, v in info.items()]
    lines += [f"  cuda_compute_capability {{ major: {g['cc'][0]} minor: {g['cc'][1]} }}",
              "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536", "}",
              'platform_name: "CUDA"',
              "dnn_version_info { major: 9 minor: 8 }",
              "runtime_version { major: 12 minor: 8 }",
              f'device_description_str: "{self.device_kind}"']
    return "\n".join(lines) + "\n"


_HOPPER = dict(sms=132, fpus_per_sm=128, smem_per_sm=233472, smem_per_block_optin=232448,
               l2_bytes=50 << 20, clock_ghz=1.98, cc=(9, 0))

CHIPS = {c.name: c for c in [
    Chip("v4", "tpu", "TPU v4", 32 * GIB, 1200e9, 275e12, 275e12, 4,
         tpu_options={"chip_config_name": "megacore"}),
    Chip("v5e", "tpu", "TPU v5 lite", 16 * GIB, 819e9, 197e12, 197e12, 4),
    Chip("v5p", "tpu", "TPU v5", 95 * GIB, 2765e9, 459e12, 459e12, 4),
    Chip("v6e", "tpu", "TPU v6 lite", 32 * GIB, 1640e9, 918e12, 918e12, 4),
    Chip("h100", "cuda", "NVIDIA H100 80GB HBM3", 84929347584, 3.35e12, 989.4e12, 494.7e12, 8,
         gpu=_HOPPER),
    Chip("h200", "cuda", "NVIDIA H200", 143771 << 20, 4.8e12, 989.4e12, 494.7e12, 8,
         gpu=_HOPPER),
    Chip("a100-80g", "cuda", "NVIDIA A100-SXM4-80GB", 85100068864, 2.039e12, 312e12, 156e12, 8,
         gpu=dict(sms=108, fpus_per_sm=64, smem_per_sm=167936, smem_per_block_optin=166912,
                  l2_bytes=40 << 20, clock_ghz=1.41, cc=(8, 0))),
]}
ALIASES = {"h100-80g": "h100", "h100-sxm": "h100", "a100": "a100-80g", "v5litepod": "v5e",
           "v6": "v6e"}


def get(name: str) -> Chip:
  key = ALIASES.get(name.lower(), name.lower())
  if key not in CHIPS:
    raise ValueError(f"unknown chip {name!r}; known: {', '.join(sorted(CHIPS))}")
  return CHIPS[key]
