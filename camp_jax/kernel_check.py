"""The Pallas pooling kernel checks itself against XLA on one small tile before first use.

  check_pooling(model, params, pooling) -> {"kernel", "max_abs_diff", "tolerance", "ok", "used"}
  resolve_pooling(config, model, params, mesh) -> (pooling to use, the check or None)

A kernel that compiles can still be wrong on a chip or a libtpu it was never run on. Where
`scoring.pooling_for` picks the kernel ("pallas", or "interpret") for the full CAMP, a run
first scores a tile of random embeddings of the model's sizes (a few images x a few
captions of varied lengths, a fixed seed) through `scoring.score_matrix` on its own mesh,
once with the kernel and once with "xla". A difference above the tolerance, or a kernel that
fails to compile or run, is one warning line, and the run falls back to "xla". Every process
gets the same gathered scores, so every process takes the same decision.
"""
import math

import numpy as np
from absl import logging

from camp_jax import scoring, sharding

# Largest |kernel - xla| score difference accepted, by the model's compute dtype: the two
# sum in different orders; bfloat16 rounds the matmul results (tests/test_pooling_kernel.py).
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-3}
KERNELS = ("pallas", "interpret")


def random_tile(model, images: int = 4, captions: int = 6, regions: int = 36,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """img_emb (images, regions, d), cap_emb (captions, L, d), cap_mask (captions, L): random
  float32 embeddings of the model's d, caption lengths spread over 1..L (L = 3 * captions),
  masked word slots zero (as `encode_captions` makes them)."""
  rng = np.random.default_rng(seed)
  d, width = model.embed_dim, 3 * captions
  lengths = np.linspace(1, width, captions).round().astype(int)
  mask = np.arange(width)[None] < lengths[:, None]
  cap_emb = rng.normal(size=(captions, width, d)).astype(np.float32) * mask[..., None]
  img_emb = rng.normal(size=(images, regions, d)).astype(np.float32)
  return img_emb, cap_emb, mask


def check_pooling(model, params, pooling: str, *, tolerance: float | None = None,
                  mesh=None, images: int = 4, captions: int = 6, regions: int = 36,
                  seed: int = 0, fault: float = 0.0) -> dict:
  """Scores one `random_tile` with `pooling` and with "xla"; compares them.

  Args:
    model, params: a full CAMP (variant "gate_fusion") and its params (anywhere).
    pooling: "pallas" or "interpret".
    tolerance: the largest |difference| accepted (default: TOLERANCE of the model's dtype).
    mesh: where to score (default: every device, as `scoring.score_matrix`).
    fault: added to the kernel's scores (tests plant a mismatch with it); 0 in every run.

  Returns:
    {"kernel": pooling, "max_abs_diff": float or None (no scores), "tolerance": float,
     "ok": bool, "used": pooling if ok else "xla", and "error": the kernel's first error
     line where it failed to compile or run}.
  """
  if pooling not in KERNELS:
    raise ValueError(f"check_pooling(pooling={pooling!r}): expected one of {KERNELS}")
  if getattr(model, "variant", None) != "gate_fusion":
    raise ValueError(f"check_pooling: the kernel serves the full CAMP (variant "
                     f"'gate_fusion'), not {getattr(model, 'variant', type(model).__name__)!r}")
  if tolerance is None:
    tolerance = TOLERANCE[np.dtype(model.dtype).name]
  img_emb, cap_emb, cap_mask = random_tile(model, images, captions, regions, seed)
  mesh = mesh or sharding.make_mesh()
  score = lambda p: scoring.score_matrix(model, params, img_emb, cap_emb, cap_mask, mesh=mesh,
                                         buckets=(cap_mask.shape[1],), progress=None,
                                         pooling=p)
  want = score("xla")
  out = {"kernel": pooling, "max_abs_diff": None, "tolerance": float(tolerance)}
  try:
    got = score(pooling) + fault
  except Exception as e:  # pylint: disable=broad-except  # Mosaic/Triton errors: any type.
    out["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
  else:
    diff = float(np.max(np.abs(got - want)))
    out["max_abs_diff"] = diff
  ok = out["max_abs_diff"] is not None and math.isfinite(out["max_abs_diff"]) \
      and out["max_abs_diff"] <= tolerance
  return {**out, "ok": ok, "used": pooling if ok else "xla"}


def resolve_pooling(config, model, params, mesh, *, check=check_pooling) -> tuple[str, dict | None]:
  """(config's pooling_kernel, or "xla" where its kernel failed `check`; the check or None).

  Checks only where `scoring.pooling_for(mesh, config.pooling_kernel)` picks the kernel
  ("pallas", "interpret") for a full CAMP; elsewhere returns (the choice unchanged, None).
  On a failed check logs one warning line with the figure. `check`: `check_pooling` (tests
  pass one with a planted fault).
  """
  choice = config.get("pooling_kernel", "auto")
  kernel = scoring.pooling_for(mesh, choice)
  if kernel not in KERNELS or getattr(model, "variant", None) != "gate_fusion":
    return choice, None
  result = check(model, params, kernel, mesh=mesh)
  if result["ok"]:
    logging.info("pooling kernel %r agrees with XLA on a test tile (max |diff| %.2e)",
                 kernel, result["max_abs_diff"])
    return choice, result
  found = (f"differs from XLA by {result['max_abs_diff']:.3e} (tolerance "
           f"{result['tolerance']:.0e})" if result["max_abs_diff"] is not None
           else f"failed ({result.get('error')})")
  logging.warning("pooling kernel %r %s on a test tile: using pooling_kernel='xla' instead",
                  kernel, found)
  return "xla", result
