"""Orbax checkpoints of a training run: the latest few, and the best on dev.

    <workdir>/checkpoints/<step>/{state, extra}   latest `keep` steps, saved asynchronously
    <workdir>/best/<step>/{state, extra}          the best by dev rsum (one)

`state` is the train state (params, optimizer state, step, rng); `extra` is JSON: the
input pipeline position, the model config and the metrics at save time. Orbax writes each
step to a temporary folder and renames it when complete, so a run killed mid-save (SIGKILL
included) leaves its previous checkpoints intact. All of orbax lives in this file.

Restores always name where the arrays go (an abstract target with shardings), so a run
trained on N devices restores on M: resuming takes the train state's shardings on the
current mesh; `load_params` (eval, export, warm start) puts everything on one local device.
"""
import os
import pathlib
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from camp_jax.data import vocab as vocab_lib


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored; the message names its path."""


def manager(directory: str | os.PathLike, keep: int, async_save: bool = True):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr, step: int, state, extra: dict) -> bool:
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 extra=ocp.args.JsonSave(extra)))


def _abstract(target):
  """ShapeDtypeStructs that keep each array's sharding, so restored arrays land in place."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                      if isinstance(x, jax.Array) else x, target)


def restore(mngr, target, step: int | None = None,
            fall_back: bool = False) -> tuple[Any, dict, int] | None:
  """Restores (state, extra, step) of `step` (default: the latest), or None when empty.

  A checkpoint that fails to restore raises CheckpointError naming its path; with
  `fall_back`, the next older one is tried instead (and the failure logged).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    steps = [s for s in steps if s <= step]
  for s in steps:
    path = pathlib.Path(mngr.directory) / str(s)
    try:
      restored = mngr.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(target)), extra=ocp.args.JsonRestore()))
      return restored["state"], dict(restored["extra"]), s
    except Exception as e:  # orbax raises many types for damaged files.
      if not fall_back:
        raise CheckpointError(f"checkpoint {path} failed to restore: {e!r}; rerun with "
                              "--config.checkpoint_fallback=True to use the previous one") from e
      logging.error("checkpoint %s failed to restore (%r); falling back to an older one", path, e)
  if steps:
    raise CheckpointError(f"no checkpoint under {mngr.directory} could be restored")
  return None


def load_params(directory: str | os.PathLike, step: int | None = None) -> tuple[Any, dict, int]:
  """Params, extra JSON and step of a saved train state, without knowing its structure."""
  directory = pathlib.Path(directory).absolute()
  mngr = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      # Named handlers, so that item_metadata reads the saved tree (None without them).
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "extra": ocp.JsonCheckpointHandler()})
  step = mngr.latest_step() if step is None else step
  if step is None or step not in mngr.all_steps():
    at = "" if step is None else f"at step {step} "
    raise CheckpointError(f"no checkpoint {at}under {directory} (steps: "
                          f"{sorted(mngr.all_steps())})")
  try:
    # The saved layout (one device or a pod) does not matter: every array lands whole on
    # this process's first device.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    saved = mngr.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          saved)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
  except Exception as e:
    raise CheckpointError(f"checkpoint {directory / str(step)} failed to restore: {e!r}") from e
  state = restored["state"]
  params = state["params"] if isinstance(state, dict) else state.params
  return params, dict(restored["extra"]), step


def is_run(folder: str | os.PathLike) -> bool:
  """Whether `folder` holds a training run's checkpoints."""
  return any((pathlib.Path(folder) / sub).is_dir() for sub in ("checkpoints", "best"))


def parse_checkpoint(which: str | int) -> str | int:
  """A run's checkpoint as --checkpoint names it: "best", "latest", or a step number (an int
  or its digits); anything else is refused."""
  if which in ("best", "latest"):
    return which
  if str(which).isdigit():
    return int(which)
  raise ValueError(f"checkpoint={which!r}: expected best, latest or a step number")


def load_trained(workdir: str | os.PathLike, which: str | int = "best"):
  """(model_config, params, vocab_path or None) of a run: "best", "latest" or a step number.

  `vocab_path` is the vocabulary file the run recorded; `run_vocabulary` reads it.
  """
  workdir = pathlib.Path(workdir)
  which = parse_checkpoint(which)
  if which == "best":
    directory, step = workdir / "best", None
    if not directory.is_dir():
      logging.warning("%s has no best checkpoint; using the latest", workdir)
      directory = workdir / "checkpoints"
  else:
    directory, step = workdir / "checkpoints", None if which == "latest" else which
  if not directory.is_dir():
    raise CheckpointError(f"{workdir} has no checkpoints ({directory} is missing)")
  params, extra, _ = load_params(directory, step)
  return extra["model_config"], params, extra.get("vocab_path")


def run_vocabulary(workdir: str | os.PathLike, vocab_path: str | None) -> vocab_lib.Vocabulary:
  """The vocabulary a run trained with: the file it recorded (`load_trained`'s `vocab_path`).

  One rule for every reader of a run (evaluation, export): that file, or a one-line error
  naming it; a run's ids mean nothing with another word list.
  """
  if not vocab_path:
    raise FileNotFoundError(f"run {workdir} recorded no vocabulary file (no vocab_path in "
                            "its checkpoint)")
  if not pathlib.Path(vocab_path).is_file():
    raise FileNotFoundError(f"run {workdir} trained with the vocabulary {vocab_path}, which "
                            "is missing; restore that file (its ids are the model's)")
  return vocab_lib.load_vocab(vocab_path)


def params_from_run(params, workdir: str | os.PathLike, which: str | int = "best"):
  """Warm start: copies every parameter of another run whose path and shape match.

  The rest keep their fresh values (e.g. stage 2's fusion head on top of stage 1).
  """
  _, loaded, _ = load_trained(workdir, which)
  flat = flax.traverse_util.flatten_dict(params)
  source = flax.traverse_util.flatten_dict(loaded)
  copied, fresh = [], []
  for path, value in flat.items():
    if path in source and np.shape(source[path]) == np.shape(value):
      flat[path] = jnp.asarray(source[path], value.dtype)
      copied.append("/".join(path))
    else:
      fresh.append("/".join(path))
  logging.info("init_from %s: %d parameters copied, fresh: %s", workdir, len(copied), fresh)
  if not copied:
    raise ValueError(f"config.init_from={workdir}: no parameter matches this model by name "
                     "and shape")
  return flax.traverse_util.unflatten_dict(flat)
