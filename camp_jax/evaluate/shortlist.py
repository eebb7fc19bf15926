"""Recall of shortlist + exact rerank, per shortlist size K, against exhaustive scoring.

A shortlist ranks every candidate by one matrix product of independent vectors; the top K
are rescored exactly and put first, the rest keep their shortlist order. Ranks use the
same tie rule as exhaustive recall (`metrics.ground_truth_ranks`).
"""
import time
from typing import Callable

import numpy as np

from camp_jax.evaluate import metrics as metrics_lib

DIRECTIONS = ("i2t", "t2i")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k best of each row, best first: (Q, n) -> (Q, k)."""
  if k < scores.shape[1]:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  else:
    part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
  rows = np.arange(len(scores))[:, None]
  return part[rows, np.argsort(-scores[rows, part], axis=1, kind="stable")]


def reranked(shortlist: np.ndarray, top: np.ndarray, exact: np.ndarray) -> np.ndarray:
  """Scores that order each row as the rerank does: the top K by exact score, then the rest.

  Args:
    shortlist: (Q, n) shortlist scores.
    top: (Q, K) shortlisted indices.
    exact: (Q, K) their exact scores.
  """
  out = np.array(shortlist, np.float64)
  lift = out.max() - exact.min() + 1.0                  # every shortlisted item comes first
  out[np.arange(len(out))[:, None], top] = exact + lift
  return out


def shortlist_rerank_recall(predictor, encoded: dict, captions_per_image: int = 5,
                            ks=(5, 10, 20, 50, 100),
                            log: Callable[[str], None] = lambda s: None) -> list[dict]:
  """Recall of shortlist + exact rerank against exhaustive scoring, per K.

  Args:
    predictor: an `inference.Predictor`.
    encoded: {"images": {"emb" (N, R, d), "vec" (N, d)}, "captions": {"emb" (M, L, d),
      "mask" (M, L), "vec" (M, d)}}, e.g. a `gallery.Gallery`'s sides; caption j belongs
      to image j // captions_per_image.
    ks: shortlist sizes (clipped to the number of candidates per direction).
    log: progress messages.

  Returns:
    Rows {"k", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", ..., "i2t_pairs", "t2i_pairs"
    (fraction of the N x M pairs scored), "i2t_seconds", "t2i_seconds", "i2t_speedup",
    "t2i_speedup"}: first "exhaustive" (k = None), then "shortlist only" (k = 0), then one
    per K. Seconds exclude encoding, which both paths share, and compilation (the exhaustive
    matrix and each K run twice, the second time timed).
  """
  img, cap = encoded["images"], encoded["captions"]
  n, m = len(img["emb"]), len(cap["emb"])
  exhaustive_fn = lambda: predictor.score_matrix(img["emb"], cap["emb"], cap["mask"],
                                                 progress=None)
  exhaustive_fn()
  start = time.perf_counter()
  exhaustive = exhaustive_fn()
  exhaustive_s = time.perf_counter() - start
  log(f"exhaustive {n} x {m} scores in {exhaustive_s:.2f} s")

  start = time.perf_counter()
  short = img["vec"] @ cap["vec"].T                                          # (N, M)
  short_s = time.perf_counter() - start
  owners = metrics_lib.caption_owners(m, captions_per_image)
  groups = {"i2t": (np.arange(n), owners), "t2i": (owners, np.arange(n))}

  def row(k, ranks: dict, pairs: dict, seconds: dict) -> dict:
    out = {"k": k}
    for d in DIRECTIONS:
      out.update(metrics_lib.recalls(ranks[d], d))
      out.update({f"{d}_pairs": pairs[d], f"{d}_seconds": seconds[d],
                  f"{d}_speedup": exhaustive_s / max(seconds[d], 1e-9)})
    return out

  rank_of = lambda d, s: metrics_lib.ground_truth_ranks(s, *groups[d])
  rows = [row(None, {"i2t": rank_of("i2t", exhaustive), "t2i": rank_of("t2i", exhaustive.T)},
              {"i2t": 1.0, "t2i": 1.0}, {"i2t": exhaustive_s, "t2i": exhaustive_s}),
          row(0, {"i2t": rank_of("i2t", short), "t2i": rank_of("t2i", short.T)},
              {"i2t": 0.0, "t2i": 0.0}, {"i2t": short_s, "t2i": short_s})]
  for k in ks:
    ranks, pairs, seconds = {}, {}, {}
    for d in DIRECTIONS:
      s = short if d == "i2t" else short.T
      kk = max(1, min(int(k), s.shape[1]))

      def shortlist_and_rerank(s=s, kk=kk, d=d):
        top = top_k(s, kk)                                                   # (Q, K)
        q = np.repeat(np.arange(len(s)), kk)
        i, c = (q, top.ravel()) if d == "i2t" else (top.ravel(), q)
        return top, predictor.score_pairs(img["emb"], cap["emb"], cap["mask"], i, c)

      shortlist_and_rerank()                      # compiles this K's shapes
      start = time.perf_counter()
      top, exact = shortlist_and_rerank()
      seconds[d] = short_s + time.perf_counter() - start
      ranks[d] = rank_of(d, reranked(s, top, exact.reshape(-1, kk)))
      pairs[d] = kk / s.shape[1]
    rows.append(row(int(k), ranks, pairs, seconds))
    log(f"K={k}: i2t R@1 {rows[-1]['i2t_r1']:.1f}, t2i R@1 {rows[-1]['t2i_r1']:.1f}")
  return rows


def format_recall_table(rows: list[dict]) -> str:
  """A text table of `shortlist_rerank_recall` rows; R@1 also as % of the exhaustive R@1."""
  base = rows[0]
  head = (f"{'K':>10} | {'i2t R@1':>7} {'R@5':>5} {'R@10':>5} {'%exh':>6} {'pairs':>6} "
          f"{'speed':>6} | {'t2i R@1':>7} {'R@5':>5} {'R@10':>5} {'%exh':>6} {'pairs':>6} "
          f"{'speed':>6}")
  lines = [head, "-" * len(head)]
  for row in rows:
    name = "exhaustive" if row["k"] is None else "shortlist" if row["k"] == 0 else str(row["k"])
    cells = []
    for d in DIRECTIONS:
      rel = 100.0 * row[f"{d}_r1"] / base[f"{d}_r1"] if base[f"{d}_r1"] else float("nan")
      cells.append(f"{row[f'{d}_r1']:7.1f} {row[f'{d}_r5']:5.1f} {row[f'{d}_r10']:5.1f} "
                   f"{rel:5.1f}% {100 * row[f'{d}_pairs']:5.1f}% {row[f'{d}_speedup']:5.1f}x")
    lines.append(f"{name:>10} | {cells[0]} | {cells[1]}")
  lines.append("%exh: R@1 as a percentage of exhaustive R@1; pairs: fraction of image-caption "
               "pairs scored exactly; speed: exhaustive seconds / (shortlist + rerank) seconds.")
  return "\n".join(lines)
