"""What every command line of camp_jax shares: absl flags with one meaning per name, and errors
that read as one line.

  cli.define("bundle", "data_dir", "split")   # the shared flags a tool takes
  cli.run(main)                               # absl's app.run, with expected errors as one line

A name means the same thing in every tool: `--split` is always a split name, `--data_dir`
always a precomp folder, `--bundle` an inference bundle, `--workdir` a training run.
"""
import logging as std_logging
import os
import pathlib
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
SHARED = {
    "workdir": (flags.DEFINE_string, None,
                "Training run folder: checkpoints, TensorBoard logs, eval/<split>.json."),
    "bundle": (flags.DEFINE_string, None,
               "Inference bundle folder (params, model config, vocabulary), as written by "
               "camp_jax.export or camp_jax.convert."),
    "out": (flags.DEFINE_string, None, "Folder or file to write."),
    "overwrite": (flags.DEFINE_bool, False, "Replace an existing --out."),
    "data_dir": (flags.DEFINE_string, None,
                 "Precomp folder holding {split}_ims.npy and {split}_caps.txt."),
    "split": (flags.DEFINE_string, None, "Split name: train, dev, test or testall."),
    "image": (flags.DEFINE_integer, None, "An image: its index in the split."),
    "checkpoint": (flags.DEFINE_string, "best",
                   "Checkpoint of the run: best, latest or a step number."),
    "json": (flags.DEFINE_bool, False, "Also print the result as one JSON line (the last)."),
    "stablehlo": (flags.DEFINE_bool, False,
                  "Export: also write jax.export artifacts to BUNDLE/stablehlo/."),
}
_PACKAGE_DIRS = tuple(str(pathlib.Path(__file__).resolve().parents[i] / name)
                      for i, name in ((0, ""), (1, "configs")))


def define(*names: str) -> None:
  """Defines the shared flags `names` (once per process, whichever tool asks first)."""
  for name in names:
    if name in FLAGS:
      continue
    if name == "config":
      config_flags.DEFINE_config_file("config", None, "Run config: configs/NAME.py[:ARG]; "
                                      "override any field with --config.FIELD=VALUE.",
                                      lock_config=True)
      continue
    define_flag, default, help_text = SHARED[name]
    define_flag(name, default, help_text)


def _raised_by_us(error: BaseException) -> bool:
  """Whether the innermost frame of `error` is camp_jax's or configs' own code."""
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIRS)


EXPECTED = (OSError, ValueError, IndexError, KeyError, RuntimeError)


def _own_or_important(record) -> bool:
  """Keeps camp_jax's INFO lines and everyone's warnings; drops libraries' INFO chatter."""
  return record.levelno >= std_logging.WARNING or os.path.abspath(record.pathname).startswith(
      _PACKAGE_DIRS)


def quiet_libraries() -> None:
  """At the default verbosity, INFO lines of jax, orbax, clu and absl are hidden;
  --verbosity=1 shows everything."""
  handler = logging.get_absl_handler().python_handler  # ABSLHandler skips its own filters.
  if logging.get_verbosity() < logging.DEBUG and _own_or_important not in handler.filters:
    handler.addFilter(_own_or_important)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # tensorflow's C++ INFO lines


def guarded(main):
  """main, with an expected error (bad input, config or file, raised with a message by
  camp_jax itself) printed as one line and exit code 1. Other errors keep their traceback,
  as does every error with --verbosity=1 or higher."""
  def run_main(argv):
    quiet_libraries()
    try:
      return main(argv)
    except EXPECTED as e:
      if logging.get_verbosity() >= logging.DEBUG or not _raised_by_us(e):
        raise
      print(f"error: {e}", file=sys.stderr)
      return 1
  return run_main


def run(main) -> None:
  """absl's app.run for a tool's main, with `guarded` errors."""
  app.run(guarded(main))


def call(main, argv: list[str]) -> int:
  """Runs a tool's main in this process as `python -m ...` would (flags parsed from `argv`,
  errors as `run` shows them) and returns its exit code: for tests and notebooks."""
  FLAGS.unparse_flags()
  for name in [n for n in FLAGS if n.startswith("config.")]:
    delattr(FLAGS, name)  # Override flags that config_flags defined in an earlier call.
  saved, sys.argv = sys.argv, [sys.argv[0], *argv]  # config_flags reads its overrides here.
  try:
    parsed = FLAGS(sys.argv)
  finally:
    sys.argv = saved
  return guarded(main)(parsed) or 0
