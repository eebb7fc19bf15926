"""Helpers for tests that start camp_jax in subprocesses, as a user would."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_EPOCHS = 3  # 8 steps an epoch on the tiny config; checkpoints every 4 steps.


def cpu_env(devices: int = 1) -> dict:
  """Environment for a subprocess on `devices` CPU devices that imports camp_jax and configs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def tiny_main(workdir, data_dir, *flags) -> list[str]:
  """The command line of a tiny training run."""
  return [sys.executable, "-m", "camp_jax.main", "--config=configs/default.py:tiny",
          f"--workdir={workdir}", f"--config.data.dir={data_dir}",
          f"--config.num_epochs={TINY_EPOCHS}", *flags]


def run_tiny(workdir, data_dir, *flags) -> subprocess.CompletedProcess:
  proc = subprocess.run(tiny_main(workdir, data_dir, *flags), cwd=REPO, env=cpu_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc
