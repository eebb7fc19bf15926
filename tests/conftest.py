"""Shared test settings, and the tiny training run that several test files use.

The PyTorch reference outputs live in `tests/fixtures/torch_reference/` (its README says
how they were made), so a fresh clone tests parity with nothing beside it.
"""
import os
import pathlib
import sys

import pytest

# Keep JAX on the CPU and quiet; tests that need several devices start their own process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# `make test` puts libtpu beside the venv, not in it (so CPU runs never probe for a TPU);
# the compile-only TPU tests load it from there.
_LIBTPU = pathlib.Path(sys.prefix) / "tpu-plugin" / "libtpu" / "libtpu.so"
if _LIBTPU.is_file():
  os.environ.setdefault("TPU_LIBRARY_PATH", str(_LIBTPU))

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "torch_reference"


@pytest.fixture(scope="session")
def torch_fixture_dir() -> pathlib.Path:
  return FIXTURES


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> pathlib.Path:
  from camp_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("data") / "synthetic_tiny"
  synthetic.ensure_synthetic(path, **default.get_config("tiny").data.synthetic.to_dict())
  return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data_dir) -> tuple[pathlib.Path, str]:
  """(workdir, stdout) of one uninterrupted tiny training run, shared by the session."""
  from tests import helpers  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("tiny_run")
  return workdir, helpers.run_tiny(workdir, tiny_data_dir).stdout
