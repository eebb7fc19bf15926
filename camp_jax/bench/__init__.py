"""Benchmarks, one subcommand each (`python -m camp_jax.bench --help`).

  scoring     exhaustive scoring: the fast path against the reference, in one run
  train_step  the real jitted train step of a config
  export      the exported score_matrix artifact against the inference API, in one run
  pipeline    the training input pipeline, in image-caption pairs per second
  device      the first minutes on a machine: versions, kernel check, parity, step, scoring
"""
import resource


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
