"""The optimizer of a run: learning-rate schedule, trained and frozen parameters, word rows.

  tx, schedule = create_optimizer(config, params, steps_per_epoch)

Global-norm clipping, then Adam or SGD (Nesterov momentum, weight decay), at the release's
schedule. Parameters that `config.trainable` does not match get zero updates. With
`config.word_vectors.freeze`, the word-embedding rows that took a pretrained vector (the
rows `config.word_vectors.mask` marks; every row without a mask) get zero gradients and
zero updates, weight decay included, so they stay bit-identical (the release's
`embed_mask`).
"""
import re
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from camp_jax import models
from camp_jax.data import word_vectors as word_vectors_lib

OPTIMIZERS = ("adam", "sgd")  # config.optimizer


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """lr (x 128 / batch, as the release) decayed x0.1 every `lr_update` epochs."""
  lr = config.learning_rate * (128 / config.batch_size if config.scale_lr_by_batch else 1.0)
  return optax.exponential_decay(lr, transition_steps=max(1, config.lr_update * steps_per_epoch),
                                 decay_rate=0.1, staircase=True)


def trainable_mask(params, patterns) -> Any:
  """True for parameters whose "/"-joined path matches one of the regex `patterns`.

  Empty patterns: everything is trained.
  """
  flat = flax.traverse_util.flatten_dict(params)
  if not patterns:
    return jax.tree.map(lambda _: True, params)
  unmatched = [p for p in patterns if not any(re.search(p, "/".join(k)) for k in flat)]
  if unmatched:
    raise ValueError(f"config.trainable patterns {unmatched} match no parameter; parameter "
                     f"paths look like {'/'.join(next(iter(flat)))}")
  return flax.traverse_util.unflatten_dict(
      {k: any(re.search(p, "/".join(k)) for p in patterns) for k in flat})


def word_vectors(config, vocab_size: int) -> tuple[np.ndarray, np.ndarray] | None:
  """(vectors (V, word_dim), rows taken (V,) bool) of config.word_vectors, or None."""
  section = config.get("word_vectors")
  return None if section is None else word_vectors_lib.from_config(section, vocab_size)


def _kept_entries(config, params) -> list | None:
  """Per leaf of `params`: None (every entry trains) or a bool array, False where frozen.

  Only the word embedding has frozen entries: its rows taken from word_vectors.path.
  """
  section = config.get("word_vectors")
  if section is None or not section.get("freeze") or not section.get("path"):
    return None
  vectors, rows = word_vectors(config, np.load(section.path, mmap_mode="r").shape[0])
  # `with_word_vectors` knows where the embedding is: it writes 0 over the frozen rows.
  ones = jax.tree.map(lambda p: np.broadcast_to(np.float32(1), np.shape(p)), params)
  marked = models.with_word_vectors(ones, np.zeros_like(vectors), rows)
  return [None if np.all(m) else np.asarray(m) != 0 for m in jax.tree.leaves(marked)]


def _zero_frozen(kept: list) -> optax.GradientTransformation:
  """Sets the entries `kept` marks False to exactly zero."""
  def zero(updates, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    return treedef.unflatten([u if k is None else jnp.where(k, u, jnp.zeros_like(u))
                              for u, k in zip(leaves, kept)])
  return optax.stateless(zero)


def create_optimizer(config, params, steps_per_epoch: int):
  """(tx, schedule): clipping, then Adam or SGD; frozen params and word rows get zero."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    opt = optax.adam(schedule)
  else:  # "sgd" (OPTIMIZERS; the config is checked at start)
    opt = optax.chain(optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
  opt = optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)
  mask = trainable_mask(params, config.trainable)
  labels = jax.tree.map(lambda m: "train" if m else "frozen", mask)
  tx = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
  kept = _kept_entries(config, params)
  if kept is not None:  # Zero gradients in (no moments, no share of the norm), zero updates out.
    tx = optax.chain(_zero_frozen(kept), tx, _zero_frozen(kept))
  return tx, schedule
