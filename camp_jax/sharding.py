"""The device mesh and how arrays lie on it: one convention for training and scoring.

The mesh is 2-D, ("images", "captions"), over every device of every process. CAMP's work is
the image x caption score matrix, and each device computes one block of it:

  * a training batch is split by rows over "images" (each process feeds the rows of its
    devices, `host_rows`); inside the step, region embeddings stay split over "images" and
    word embeddings are regrouped over "captions", so device (i, c) scores image block i
    against caption block c, and the loss reduces over both axes;
  * per-item work (the region FC and the hoisted features, not the words' GRU) is split by
    rows over "images" and by columns over "captions" (`column_split`);
  * evaluation splits a group of images over all devices (`P(("images", "captions"))`),
    each scoring them against the same caption chunk.

So any number of devices shares a batch: batch 128 on 256 chips is a 128 x 2 mesh (one
image against half of the captions per chip), where a 1-D data axis would need 256 rows.
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

IMAGES, CAPTIONS = "images", "captions"
AXES = (IMAGES, CAPTIONS)


def mesh_shape(num_devices: int, batch_size: int, spec: str = "") -> tuple[int, int]:
  """(images, captions) sizes of the mesh for `num_devices` and a global batch.

  Args:
    num_devices: devices of the mesh.
    batch_size: rows of the global batch, split over the images axis.
    spec: config.mesh: "" picks the most images the batch allows (images = gcd(devices,
      batch), the rest on captions); "IxC" sets both, one of them may be -1 (inferred).
  """
  if not spec:
    images = math.gcd(num_devices, batch_size)
    return images, num_devices // images
  try:
    images, captions = (int(x) for x in spec.lower().split("x"))
  except ValueError:
    raise ValueError(f"config.mesh={spec!r}: expected '' (automatic) or 'IxC', e.g. '128x2' "
                     "or '-1x2'") from None
  if images == -1 and captions > 0 and num_devices % captions == 0:
    images = num_devices // captions
  elif captions == -1 and images > 0 and num_devices % images == 0:
    captions = num_devices // images
  if images < 1 or captions < 1 or images * captions != num_devices:
    raise ValueError(f"config.mesh={spec!r} does not cover the {num_devices} devices "
                     "(images x captions must equal the device count)")
  if batch_size % images:
    raise ValueError(f"config.mesh={spec!r}: the batch of {batch_size} rows cannot be split "
                     f"over {images} image blocks; pick an images size that divides it")
  return images, captions


def make_mesh(shape: tuple[int, int] | None = None, devices=None) -> Mesh:
  """The ("images", "captions") mesh (Auto axis types); default shape (all devices, 1).

  Devices keep jax's order (process by process), so each process's devices form a
  contiguous block of rows of any batch split over "images".
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = shape or (devices.size, 1)
  return Mesh(devices.reshape(shape), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over "images", the same on every "captions" device: a training batch."""
  return NamedSharding(mesh, P(IMAGES))


def caption_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over "captions": the caption side of the training score matrix."""
  return NamedSharding(mesh, P(CAPTIONS))


def column_split(tree, mesh: Mesh, dim: int):
  """Per-item features of rows split over "images": each leaf whose last axis is `dim`
  (the embedding size) computed split by that axis over "captions" (a sharding constraint).

  The devices of one "images" block hold the same rows; constrained so, each computes only
  its share of the columns of every x @ W (reading that share of W, and writing that share
  of W's gradient), where unconstrained each would compute all of them. Constrain the
  result to its final sharding afterwards to gather the columns. Identity where "captions"
  is 1 or does not divide `dim`.
  """
  captions = mesh.shape[CAPTIONS]
  if captions == 1 or dim % captions:
    return tree
  split = lambda x: NamedSharding(mesh, P(IMAGES, *([None] * (x.ndim - 2)), CAPTIONS))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, split(x))
                      if x.ndim >= 2 and x.shape[-1] == dim else x, tree)


def flat_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over every device: image groups in evaluation."""
  return NamedSharding(mesh, P(mesh.axis_names))


def state_sharding(mesh: Mesh, state):
  """The train state's placement: step, rng and params replicated; each optimizer-state
  array split over every device along its first axis that the device count divides
  (replicated where none does), so each device updates only its share (ZeRO-1). Inside the
  step XLA then reduces the gradients to each shard and gathers the updated parameters. On
  CPU devices everything stays replicated."""
  rep = replicated(mesh)
  if mesh.devices.flat[0].platform == "cpu":
    # XLA's CPU runtime can order the step's parameter all-gathers differently on each
    # simulated device and deadlock (SIGABRT in rendezvous, 7 of 30 8-device runs): on CPU
    # the state stays replicated.
    return jax.tree.map(lambda _: rep, state)

  def moment(x):
    for axis, size in enumerate(x.shape):
      if size >= mesh.size and size % mesh.size == 0:
        return NamedSharding(mesh, P(*([None] * axis), AXES))
    return rep
  return state.replace(step=rep, params=jax.tree.map(lambda _: rep, state.params),
                       opt_state=jax.tree.map(moment, state.opt_state), rng=rep)


def host_rows(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
  """[start, stop) of the rows of a (global_rows, ...) array that this process's devices hold.

  Several processes hold the same rows when the captions axis spans processes.
  """
  spans = {(s.start or 0, global_rows if s.stop is None else s.stop)
           for s, *_ in sharding.addressable_devices_indices_map((global_rows,)).values()}
  start, stop = min(a for a, _ in spans), max(b for _, b in spans)
  covered = sorted(spans)
  if any(b < a2 for (_, b), (a2, _) in zip(covered, covered[1:])):
    raise ValueError(f"the devices of process {jax.process_index()} hold rows {covered} of "
                     "the batch, which are not contiguous; build the mesh with make_mesh")
  return start, stop


def global_batch(local_batch: dict, mesh: Mesh, global_rows: int) -> dict:
  """This process's rows (`host_rows`) of a batch (numpy) -> global arrays split over "images"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v),
                                                    (global_rows,) + np.shape(v)[1:])
          for k, v in local_batch.items()}


def put_global(tree, sharding: NamedSharding):
  """Host values that every process holds in full -> global arrays with `sharding`."""
  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(host_local(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def host_local(tree):
  """A tree of fully replicated arrays as this process's own copy (numpy).

  On several processes a replicated global array spans devices this process cannot
  address, so it cannot be fed to host-local computations (the encoders in evaluation);
  every process holds the full value on its first local shard. Arrays of one process are
  returned unchanged.
  """
  def local(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if not x.is_fully_replicated:
      raise ValueError(f"array of shape {x.shape} is sharded ({x.sharding}) over several "
                       "processes; host_local needs replicated arrays")
    return np.asarray(x.addressable_data(0))
  return jax.tree.map(local, tree)
