"""Shared test settings.

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
