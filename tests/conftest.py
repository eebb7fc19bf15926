"""Shared test settings, and the tiny training run that several test files use.

The PyTorch reference outputs live in `tests/fixtures/torch_reference/` (its README says
how they were made), so a fresh clone tests parity with nothing beside it.
"""
import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

# Keep JAX on the CPU and quiet; tests that need several devices start their own process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Every subprocess a test starts inherits this: a native crash (SIGABRT, SIGSEGV) dumps the
# Python stack of every thread to its stderr (tests/helpers.py keeps that stderr in a file).
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
# `make test` puts libtpu beside the venv, not in it (so CPU runs never probe for a TPU);
# the compile-only TPU tests load it from there.
_LIBTPU = pathlib.Path(sys.prefix) / "tpu-plugin" / "libtpu" / "libtpu.so"
if _LIBTPU.is_file():
  os.environ.setdefault("TPU_LIBRARY_PATH", str(_LIBTPU))


# One XLA compilation cache for the session, shared with the subprocesses the tests start
# (they inherit the environment): most of them compile the same tiny programs, and a cached
# executable is the same executable, so no result changes. Point JAX_COMPILATION_CACHE_DIR at a
# folder of your own to keep it between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="camp_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  # Only programs that took 0.2 s or more to compile are written (not eager code's single ops).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

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
