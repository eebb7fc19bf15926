"""Helpers for tests that start camp_jax in subprocesses, as a user would."""
import os
import pathlib
import subprocess
import sys
import time

import pytest

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


def checkpoint_steps(workdir) -> list[int]:
  """The steps saved under <workdir>/checkpoints, oldest first."""
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def wait_for_checkpoint(proc, workdir, min_step: int, timeout: float = 300):
  """Waits until a running training process has saved a checkpoint >= `min_step`."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f"run ended (code {proc.returncode}) before checkpoint {min_step}: "
                  f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
    if any(s >= min_step for s in checkpoint_steps(workdir)):
      return
    time.sleep(0.2)
  proc.kill()
  pytest.fail(f"no checkpoint >= {min_step} within {timeout} s")
