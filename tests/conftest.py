"""Shared test settings, and the tiny training run that several test files use.

`CAMP_SHARED_DIR` points at the read-only `shared/` folder that holds the
PyTorch reference fixtures; it defaults to `../shared` beside the checkout.
"""
import os
import pathlib

import pytest

# Keep JAX on the CPU and quiet; tests that need several devices start their own process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(os.environ.get("CAMP_SHARED_DIR", REPO.parent / "shared"))
FIXTURES = SHARED_DIR / "fixtures" / "torch_reference"


@pytest.fixture(scope="session")
def torch_fixture_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.fail(f"PyTorch reference fixtures not found at {FIXTURES}: set CAMP_SHARED_DIR "
                "to the folder that holds fixtures/torch_reference/ (default: ../shared).")
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
