"""Retrieval metrics of a score matrix: ranks, R@K, median and mean rank, rsum, COCO folds.

One tie rule everywhere (exhaustive scoring, shortlist + rerank): a ground truth tied with
a wrong item ranks behind it, so a constant score matrix gets R@1 = 0 rather than 100.
"""
import numpy as np

RECALL_KS = (1, 5, 10)
KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
        "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr", "rsum")


def ground_truth_ranks(scores, row_group: np.ndarray, col_group: np.ndarray,
                       chunk_rows: int = 256) -> np.ndarray:
  """0-based rank of each row's best ground truth among the columns, ties counted against it.

  Args:
    scores: (Q, n), higher = better; a memmap or a transposed view is fine.
    row_group, col_group: (Q,), (n,) ints; column j is a ground truth of row q when
      col_group[j] == row_group[q] (image i owns captions j with j // 5 == i).
    chunk_rows: rows per block, bounding the (chunk, n) temporaries.

  Returns:
    (Q,) ranks: the number of wrong columns scoring at least the best ground truth.
  """
  ranks = np.empty(len(row_group), np.int64)
  for start in range(0, len(ranks), chunk_rows):
    rows = np.asarray(scores[start:start + chunk_rows])
    own = row_group[start:start + len(rows), None] == col_group[None]
    best = np.where(own, rows, -np.inf).max(axis=1, keepdims=True)
    ranks[start:start + len(rows)] = np.sum(~own & (rows >= best), axis=1)
  return ranks


def caption_owners(n_captions: int, captions_per_image: int) -> np.ndarray:
  """The image of each caption: (n_captions,) = j // captions_per_image."""
  return np.arange(n_captions) // captions_per_image


def image_to_text_ranks(scores, captions_per_image: int = 5) -> np.ndarray:
  """Rank of each image's best caption among all captions: (Ni, Nc) -> (Ni,)."""
  scores = np.asarray(scores)
  return ground_truth_ranks(scores, np.arange(scores.shape[0]),
                            caption_owners(scores.shape[1], captions_per_image))


def text_to_image_ranks(scores, captions_per_image: int = 5) -> np.ndarray:
  """Rank of each caption's image among all images: (Ni, Nc) -> (Nc,)."""
  scores = np.asarray(scores)
  return ground_truth_ranks(scores.T, caption_owners(scores.shape[1], captions_per_image),
                            np.arange(scores.shape[0]), chunk_rows=1024)


def recalls(ranks: np.ndarray, prefix: str) -> dict:
  """{prefix_r1, prefix_r5, prefix_r10}: percent of 0-based ranks below K."""
  return {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks < k)) for k in RECALL_KS}


def rank_summary(ranks: np.ndarray, prefix: str) -> dict:
  """`recalls` with the median and mean rank (1-based)."""
  out = recalls(ranks, prefix)
  out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
  out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
  return out


def rsum(metrics: dict) -> float:
  return sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)


def check_score_matrix(scores, captions_per_image: int = 5) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 2 or scores.shape[1] != captions_per_image * scores.shape[0]:
    raise ValueError(f"score matrix has shape {scores.shape}, expected (n_images, "
                     f"{captions_per_image} * n_images)")
  if not np.all(np.isfinite(scores)):
    raise ValueError("score matrix contains NaN or Inf")
  return scores


def recall_metrics(scores, captions_per_image: int = 5) -> dict:
  """Recalls of a score matrix whose caption j belongs to image j // captions_per_image.

  Args:
    scores: (n_images, captions_per_image * n_images), higher = better match.
    captions_per_image: captions of each image, consecutive.

  Returns:
    {i2t_r1, i2t_r5, i2t_r10, i2t_medr, i2t_meanr, t2i_..., rsum, n_images, n_captions},
    recalls in percent.
  """
  scores = check_score_matrix(scores, captions_per_image)
  out = {**rank_summary(image_to_text_ranks(scores, captions_per_image), "i2t"),
         **rank_summary(text_to_image_ranks(scores, captions_per_image), "t2i")}
  out["rsum"] = rsum(out)
  out["n_images"], out["n_captions"] = scores.shape
  return out


def fold_metrics(scores, folds: int = 5, captions_per_image: int = 5) -> dict:
  """Mean of `recall_metrics` over `folds` disjoint blocks of images (COCO 1K: 5 folds of 5K).

  The mean of the folds' rsums equals the rsum of the mean recalls.
  """
  scores = check_score_matrix(scores, captions_per_image)
  n = scores.shape[0]
  if n % folds:
    raise ValueError(f"{n} images cannot be split into {folds} equal folds")
  size, k = n // folds, captions_per_image
  per_fold = [recall_metrics(scores[f * size:(f + 1) * size, f * size * k:(f + 1) * size * k], k)
              for f in range(folds)]
  out = {key: float(np.mean([m[key] for m in per_fold])) for key in KEYS}
  out["n_images"], out["n_captions"], out["folds"] = size, size * k, folds
  return out


def format_table(metrics: dict, title: str = "") -> str:
  """A printable recall table; fold means (metrics["folds"]) get a table of their own."""
  head = f"{'':6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'medr':>8}{'meanr':>9}"
  lines = [title] if title else []
  lines.append(head)
  for d, name in (("i2t", "i->t"), ("t2i", "t->i")):
    lines.append(f"{name:6}" + "".join(f"{metrics[f'{d}_r{k}']:8.1f}" for k in RECALL_KS)
                 + f"{metrics[f'{d}_medr']:8.1f}{metrics[f'{d}_meanr']:9.1f}")
  lines.append(f"rsum {metrics['rsum']:.1f}   ({metrics['n_images']} images, "
               f"{metrics['n_captions']} captions)")
  if isinstance(metrics.get("folds"), dict):
    folds = metrics["folds"]
    lines.append(format_table(folds, f"mean of {folds['folds']} folds of {folds['n_images']} "
                                     "images"))
  return "\n".join(lines)


def format_comparison(rows: dict[str, dict], title: str = "") -> str:
  """Several runs' recalls in one table, a row per run: {name: metrics}."""
  width = max(len(name) for name in rows) + 2
  head = f"{'':{width}}" + "".join(f"{f'{d} R@{k}':>10}" for d in ("i->t", "t->i")
                                   for k in RECALL_KS) + f"{'rsum':>7}"
  lines = [title] if title else []
  lines.append(head)
  for name, m in rows.items():
    cells = "".join(f"{m[f'{d}_r{k}']:10.1f}" for d in ("i2t", "t2i") for k in RECALL_KS)
    lines.append(f"{name:{width}}{cells}{m['rsum']:7.1f}")
  return "\n".join(lines)
