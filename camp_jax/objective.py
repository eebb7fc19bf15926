r"""The training objective: one global batch -> (loss, aux), the same aux for every model.

  value, aux = loss(model, params, batch, mesh, config, rng)

The loss is computed on the (B, B) score matrix of the whole global batch (hardest
negatives over it). Region embeddings stay split over the mesh's "images" axis and word
embeddings are regrouped over "captions", so device (i, c) scores image block i against
caption block c (`batch_scores`). The loss reads 3B of those scores: with
`config.backward_pairs="hardest"` (the default) the matrix has no backward pass and only
those pairs are scored again, to differentiate (`batch_pair_scores`): the same gradients
for half the FLOPs. `config.train_caption_chunk` > 0 scores each device's captions in
blocks (`caption_chunked`) to bound memory. Those are CAMP's hoisted exact path
(`config.fast_scoring`); otherwise, and for VSE, the model's transcription expands every
pair (with dropout, given `rng`) and GSPMD places it.

aux (`AUX_KEYS`), float32 scalars whatever the model:
  loss                    the ranking loss (`config.loss`); the value returned adds
                          shortlist_loss x config.shortlist_loss_weight
  positive_score          mean score of the positive pairs (the diagonal)
  hardest_negative_score  mean score of each image's hardest negative caption
  shortlist_loss          VSE++ hinge on the shortlist vectors; NaN when its weight is 0
  region_gate, word_gate  mean fusion gate of the positives' regions and real words;
                          NaN for models without gates (`model.has_gates` False)
"""
import functools

import jax
import jax.numpy as jnp

from camp_jax import losses, scoring, sharding

P = jax.sharding.PartitionSpec
AUX_KEYS = ("loss", "positive_score", "hardest_negative_score", "shortlist_loss",
            "region_gate", "word_gate")
BACKWARD_PAIRS = ("hardest", "all")  # config.backward_pairs
NAN = float("nan")


def loss(model, params, batch, mesh: jax.sharding.Mesh, config, rng=None):
  """(value, aux) of one global batch {"images", "tokens", "lengths"} (rows over "images").

  `rng`: the dropout key of the transcription path (unused on the hoisted path).
  """
  run = functools.partial(model.apply, {"params": params})
  img_emb = run(batch["images"], method="encode_images")
  # The region FC split by columns over "captions" (`column_split`). The words' GRU is not:
  # split so, its recurrence would exchange the hidden state at every word.
  img_emb = sharding.column_split(img_emb, mesh, img_emb.shape[-1])
  cap_emb, cap_mask = run(batch["tokens"], batch["lengths"], method="encode_captions")
  # Each item is encoded once per "images" block, where the batch's rows lie (unconstrained,
  # GSPMD encodes the words once per caption block on every image block).
  embeddings = jax.lax.with_sharding_constraint((img_emb, cap_emb, cap_mask),
                                                sharding.batch_sharding(mesh))
  img_emb, cap_emb, cap_mask = embeddings
  if model.PAIRWISE and config.fast_scoring:
    value, scores, gates = _hoisted(model, params, *embeddings, mesh, config)
  else:
    value, scores, gates = _transcription(model, params, *embeddings, mesh, config, rng)
  row_hardest, _ = losses.hardest_negatives(scores)
  aux = {"loss": value, "positive_score": jnp.mean(jnp.diagonal(scores)),
         "hardest_negative_score": jnp.mean(scores[jnp.arange(scores.shape[0]), row_hardest]),
         "shortlist_loss": jnp.float32(NAN), "region_gate": jnp.float32(NAN),
         "word_gate": jnp.float32(NAN)}
  if config.shortlist_loss_weight:
    vectors = (run(img_emb, method="image_vectors"),
               run(cap_emb, cap_mask, method="caption_vectors"))
    aux["shortlist_loss"] = losses.max_violation_hinge(vectors[0] @ vectors[1].T)
    value = value + config.shortlist_loss_weight * aux["shortlist_loss"]
  if gates is not None:  # The positives': (B, R) and (B, L).
    gates = jax.lax.stop_gradient(gates)
    aux["region_gate"] = jnp.mean(gates["region_gate"])
    aux["word_gate"] = jnp.sum(gates["word_gate"] * cap_mask) / jnp.sum(cap_mask)
  return value, aux


def _hoisted(model, params, img_emb, cap_emb, cap_mask, mesh, config):
  """(ranking loss, scores (B, B), positives' gates or None) by the hoisted exact path."""
  hardest_only = config.backward_pairs == "hardest"
  # With hardest_only every pair is scored without a backward pass (no activations kept);
  # the 3B pairs the loss reads are scored again below, to differentiate.
  frozen = jax.lax.stop_gradient if hardest_only else lambda x: x
  pooling = scoring.pooling_for(mesh, config.pooling_kernel) if hardest_only else "xla"
  scores, gates = batch_scores(model, frozen(params), frozen(img_emb), frozen(cap_emb),
                               cap_mask, mesh, config.train_caption_chunk, model.has_gates,
                               pooling)
  if gates is not None:  # Every pair's gates, a by-product of the scores: the diagonal's.
    gates = {k: jnp.diagonal(g).T for k, g in gates.items()}
  if not hardest_only:
    return losses.LOSSES[config.loss](scores), scores, gates
  diagonal = jnp.arange(scores.shape[0])
  row_hardest, column_hardest = losses.hardest_negatives(scores)
  picked = batch_pair_scores(model, params, img_emb, cap_emb, cap_mask,
                             jnp.concatenate([diagonal, diagonal, column_hardest]),
                             jnp.concatenate([diagonal, row_hardest, diagonal]), mesh)
  return losses.PAIR_LOSSES[config.loss](*jnp.split(picked, 3)), scores, gates


def _transcription(model, params, img_emb, cap_emb, cap_mask, mesh, config, rng):
  """(ranking loss, scores, positives' gates or None): every pair expanded, with dropout."""
  # The pairs: regions stay split over "images", words are regrouped over "captions".
  cap_emb, cap_mask = jax.lax.with_sharding_constraint((cap_emb, cap_mask),
                                                       sharding.caption_sharding(mesh))
  variables = {"params": params}
  scores = model.apply(variables, img_emb, cap_emb, cap_mask, deterministic=False,
                       rngs={} if rng is None else {"dropout": rng}, method="score_matrix")
  gates = None
  if model.has_gates:  # The positives, pair by pair.
    explained = model.apply(variables, img_emb, cap_emb, cap_mask, method="explain_pair")
    gates = {k: explained[k] for k in ("region_gate", "word_gate")}
  return losses.LOSSES[config.loss](scores), scores, gates


def batch_scores(model, params, img_emb, cap_emb, cap_mask, mesh: jax.sharding.Mesh,
                 chunk: int = 0, with_gates: bool = False, pooling: str = "xla"):
  """The training batch's (B, B) score matrix by the fast path, one block per device.

  Device (i, c) of the ("images", "captions") mesh scores image block i against caption
  block c; the result is split the same way, so hardest negatives and the loss reduce over
  both axes. Differentiable (the params' gradients are summed over the devices).

  Args:
    model, params: a CAMP model and its params.
    img_emb, cap_emb, cap_mask: (B, R, d), (B, L, d), (B, L) global arrays.
    mesh: the training mesh.
    chunk: captions per rematerialised block on each device (`caption_chunked`); 0: all.
    with_gates: also give the full model's gates of every pair.
    pooling: "xla"; "pallas" or "interpret" only where no gradient is taken.

  Returns:
    (scores (B, B), gates {"region_gate": (B, B, R), "word_gate": (B, B, L)} split like
    the scores, or None without `with_gates`).
  """
  run = functools.partial(model.apply, {"params": params})
  # The per-item features once across the mesh: rows over "images", columns over "captions"
  # (`column_split`), then gathered to the blocks that read them; outside the
  # rematerialised blocks.
  items, dim = sharding.batch_sharding(mesh), img_emb.shape[-1]
  constrain = jax.lax.with_sharding_constraint
  img = run(constrain(img_emb, items), method="image_features")
  cap = run(*constrain((cap_emb, cap_mask), items), method="caption_features")
  img, cap = constrain(sharding.column_split((img, cap), mesh, dim), items)

  def local(params, img, cap):
    fn = lambda img, cap: model.apply({"params": params}, img, cap, with_gates, pooling,
                                      method="pair_scores")
    return caption_chunked(fn, img, cap, chunk)

  images, captions = sharding.AXES
  out = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(images), P(captions)),
                      out_specs=P(images, captions), check_vma=scoring.checks_vma(pooling))(
                          params, img, cap)
  return out if with_gates else (out, None)  # pair_scores gives (scores, gates) with_gates


def batch_pair_scores(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index,
                      mesh: jax.sharding.Mesh):
  """Scores of chosen pairs of the training batch by the fast path, differentiable: (P,).

  The pairs (img_index[p], cap_index[p]) are split over every device of the mesh (padded to
  a multiple of its size). On one device the per-item features of the batch are computed
  once and picked per pair. On several, each device computes the features of its own pairs
  from their embeddings: moving every item's features to every device (and their gradients
  back) would cost more HBM traffic than the d x d products it saves. The embeddings'
  rows are gathered by columns over "captions", half the bytes on a 128 x 2 mesh.

  Args:
    model, params: a CAMP model and its params.
    img_emb, cap_emb, cap_mask: (B, R, d), (B, L, d), (B, L) global arrays.
    img_index, cap_index: (P,) int rows of the pairs.
    mesh: the training mesh.
  """
  run = functools.partial(model.apply, {"params": params})
  n = img_index.shape[0]
  img_index, cap_index = (jnp.pad(x, (0, -n % mesh.size)) for x in (img_index, cap_index))
  if mesh.size == 1:
    img = run(img_emb, method="image_features")
    cap = run(cap_emb, cap_mask, method="caption_features")
    return scoring.picked_pair_scores(model, params, img, cap, img_index, cap_index)[:n]
  constrain = jax.lax.with_sharding_constraint
  split = lambda x: constrain(x, sharding.flat_sharding(mesh))
  by_columns = lambda x: sharding.column_split(x, mesh, img_emb.shape[-1])

  def rows(emb, index):
    # Each "images" block gathers its pairs' rows, split by columns over "captions", and
    # its devices then swap halves: no device receives a whole copy of the batch.
    index = constrain(index, sharding.batch_sharding(mesh))
    return split(by_columns(by_columns(emb)[index]))

  img = run(rows(img_emb, img_index), method="image_features")
  cap = run(rows(cap_emb, cap_index), split(cap_mask[split(cap_index)]),
            method="caption_features")
  return scoring.aligned_pair_scores(model, params, img, cap)[:n]


def caption_chunked(score_fn, img, cap, chunk: int):
  """score_fn over blocks of `chunk` captions, rematerialised: bounded memory under grad.

  Each block's activations are recomputed in the backward pass instead of stored, so
  memory grows with images x chunk, not images x captions. Where no gradient is taken
  (the all-pairs pass of backward_pairs="hardest") nothing is recomputed: blocks then
  cost no extra FLOPs.

  Args:
    score_fn: (img, cap) -> (Ni, c, ...) scores, or a pytree of such arrays.
    img: the images (a pytree of (Ni, ...) arrays, used by every block as it is).
    cap: the captions, a pytree of (Nc, ...) arrays, split into blocks.
    chunk: captions per block; 0 or >= Nc scores all at once. Must divide Nc.

  Returns:
    (Ni, Nc, ...), or the pytree of them.
  """
  n_cap = jax.tree.leaves(cap)[0].shape[0]
  if not chunk or chunk >= n_cap:
    return score_fn(img, cap)
  if n_cap % chunk:
    raise ValueError(f"config.train_caption_chunk={chunk} does not divide the {n_cap} "
                     "captions that each device scores (the batch over the mesh's captions "
                     "axis); pick a divisor")
  blocks = jax.tree.map(lambda x: x.reshape((n_cap // chunk, chunk) + x.shape[1:]), cap)
  block_out = jax.lax.map(jax.checkpoint(lambda b: score_fn(img, b)), blocks)
  return jax.tree.map(
      lambda x: jnp.moveaxis(x, 0, 1).reshape((x.shape[1], n_cap) + x.shape[3:]), block_out)
