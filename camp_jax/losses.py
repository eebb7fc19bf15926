"""Losses on a square batch score matrix whose diagonal holds the positive pairs."""
import jax
import jax.numpy as jnp


def hardest_negative_bce(scores: jax.Array, eps: float = 1e-6) -> jax.Array:
  """The release's loss: BCE on the positives and on each row's and column's hardest negative.

  loss = -(2 sum_i log S_ii + sum_i min_{j!=i} log(1 - S_ij) + sum_j min_{i!=j} log(1 - S_ij)),
  with S clipped to [eps, 1 - eps]; summed over the batch, not averaged.

  Args:
    scores: (B, B) probabilities, image i x caption j.

  Returns:
    A scalar.
  """
  s = jnp.clip(scores, eps, 1.0 - eps)
  positives = jnp.log(jnp.diagonal(s))
  # log(1 - s) < 0 everywhere, so a 0 on the diagonal never wins the min.
  negatives = jnp.where(jnp.eye(s.shape[0], dtype=bool), 0.0, jnp.log1p(-s))
  return -(2.0 * jnp.sum(positives) + jnp.sum(jnp.min(negatives, axis=1))
           + jnp.sum(jnp.min(negatives, axis=0)))


def max_violation_hinge(scores: jax.Array, margin: float = 0.2) -> jax.Array:
  """VSE++ loss: hinge on the hardest negative caption per image and image per caption.

  Args:
    scores: (B, B) similarities, image i x caption j.
    margin: the hinge margin.

  Returns:
    A scalar, summed over the batch.
  """
  positives = jnp.diagonal(scores)
  off_diagonal = ~jnp.eye(scores.shape[0], dtype=bool)
  cost_caption = jnp.where(off_diagonal, jax.nn.relu(margin + scores - positives[:, None]), 0.0)
  cost_image = jnp.where(off_diagonal, jax.nn.relu(margin + scores - positives[None, :]), 0.0)
  return jnp.sum(jnp.max(cost_caption, axis=1)) + jnp.sum(jnp.max(cost_image, axis=0))


LOSSES = {"hardest_negative_bce": hardest_negative_bce, "max_violation_hinge": max_violation_hinge}


# Both losses read only 3B entries of the (B, B) matrix: the diagonal, each row's and each
# column's hardest negative. Given where those are, each is a function of those 3B scores
# (the same value; the gradient of the first maximum where scores tie exactly), so the
# train step can backpropagate through those pairs only.


def hardest_negatives(scores: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per image the hardest negative caption, per caption the hardest negative image.

  Args:
    scores: (B, B), image i x caption j.

  Returns:
    (B,) column of each row's largest off-diagonal score, (B,) row of each column's.
  """
  off_diagonal = jnp.where(jnp.eye(scores.shape[0], dtype=bool), -jnp.inf, scores)
  return jnp.argmax(off_diagonal, axis=1), jnp.argmax(off_diagonal, axis=0)


def hardest_negative_bce_of_pairs(positive, row_negative, column_negative, eps: float = 1e-6):
  """`hardest_negative_bce` from S_ii, S_{i, j_i} and S_{i_j, j} (each (B,))."""
  clip = lambda s: jnp.clip(s, eps, 1.0 - eps)
  return -(2.0 * jnp.sum(jnp.log(clip(positive))) + jnp.sum(jnp.log1p(-clip(row_negative)))
           + jnp.sum(jnp.log1p(-clip(column_negative))))


def max_violation_hinge_of_pairs(positive, row_negative, column_negative, margin: float = 0.2):
  """`max_violation_hinge` from S_ii, S_{i, j_i} and S_{i_j, j} (each (B,))."""
  return (jnp.sum(jax.nn.relu(margin + row_negative - positive))
          + jnp.sum(jax.nn.relu(margin + column_negative - positive)))


PAIR_LOSSES = {"hardest_negative_bce": hardest_negative_bce_of_pairs,
               "max_violation_hinge": max_violation_hinge_of_pairs}
