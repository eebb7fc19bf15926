"""Retrieval metrics (R@K, median and mean rank, rsum) and the evaluation driver.

Ranks are counted pessimistically: a ground truth tied with a wrong item ranks behind it,
so a constant score matrix gets R@1 = 0 rather than 100.
"""
import json
import os
import pathlib
import time

import numpy as np
from absl import logging

KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
        "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr", "rsum")


def image_to_text_ranks(scores: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
  """0-based rank of each image's best caption among all captions: (Ni, Nc) -> (Ni,)."""
  n_img = scores.shape[0]
  ranks = np.empty(n_img, np.int64)
  for start in range(0, n_img, 256):  # Row chunks bound the boolean temporaries.
    rows = scores[start:start + 256]
    idx = np.arange(start, start + len(rows))
    own = rows.reshape(len(rows), -1, captions_per_image)[np.arange(len(rows)), idx]
    best = own.max(axis=1, keepdims=True)
    ranks[idx] = (rows >= best).sum(axis=1) - (own >= best).sum(axis=1)
  return ranks


def text_to_image_ranks(scores: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
  """0-based rank of each caption's image among all images: (Ni, Nc) -> (Nc,)."""
  n_cap = scores.shape[1]
  ranks = np.empty(n_cap, np.int64)
  for start in range(0, n_cap, 1024):
    cols = scores[:, start:start + 1024]
    idx = np.arange(start, start + cols.shape[1])
    own = cols[idx // captions_per_image, np.arange(len(idx))]
    ranks[idx] = (cols >= own[None]).sum(axis=0) - 1
  return ranks


def _summary(ranks: np.ndarray, prefix: str) -> dict:
  out = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks < k)) for k in (1, 5, 10)}
  out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
  out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
  return out


def recall_metrics(scores, captions_per_image: int = 5) -> dict:
  """Recalls of a score matrix whose caption j belongs to image j // captions_per_image.

  Args:
    scores: (n_images, captions_per_image * n_images), higher = better match.
    captions_per_image: captions of each image, consecutive.

  Returns:
    {i2t_r1, i2t_r5, i2t_r10, i2t_medr, i2t_meanr, t2i_..., rsum, n_images, n_captions},
    recalls in percent.
  """
  scores = np.asarray(scores)
  if scores.ndim != 2 or scores.shape[1] != captions_per_image * scores.shape[0]:
    raise ValueError(f"score matrix has shape {scores.shape}, expected (n_images, "
                     f"{captions_per_image} * n_images)")
  if not np.all(np.isfinite(scores)):
    raise ValueError("score matrix contains NaN or Inf")
  out = {**_summary(image_to_text_ranks(scores, captions_per_image), "i2t"),
         **_summary(text_to_image_ranks(scores, captions_per_image), "t2i")}
  out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
  out["n_images"], out["n_captions"] = scores.shape
  return out


def fold_metrics(scores, folds: int = 5, captions_per_image: int = 5) -> dict:
  """Mean of `recall_metrics` over `folds` disjoint blocks of images (COCO 1K: 5 folds of 5K)."""
  scores = np.asarray(scores)
  n = scores.shape[0]
  if n % folds:
    raise ValueError(f"{n} images cannot be split into {folds} equal folds")
  size = n // folds
  per_fold = [recall_metrics(scores[f * size:(f + 1) * size,
                                    f * size * captions_per_image:(f + 1) * size * captions_per_image],
                             captions_per_image) for f in range(folds)]
  out = {k: float(np.mean([m[k] for m in per_fold])) for k in KEYS}
  out["n_images"], out["n_captions"] = size, size * captions_per_image
  out["folds"] = folds
  return out


def format_table(metrics: dict, title: str = "") -> str:
  """A printable recall table."""
  head = f"{'':6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'medr':>8}{'meanr':>9}"
  lines = [title] if title else []
  lines.append(head)
  for d, name in (("i2t", "i->t"), ("t2i", "t->i")):
    lines.append(f"{name:6}" + "".join(f"{metrics[f'{d}_r{k}']:8.1f}" for k in (1, 5, 10))
                 + f"{metrics[f'{d}_medr']:8.1f}{metrics[f'{d}_meanr']:9.1f}")
  lines.append(f"rsum {metrics['rsum']:.1f}   ({metrics['n_images']} images, "
               f"{metrics['n_captions']} captions)")
  return "\n".join(lines)


def write_metrics(workdir: str | os.PathLike, split: str, metrics: dict) -> pathlib.Path:
  """Writes <workdir>/eval/<split>.json."""
  path = pathlib.Path(workdir) / "eval" / f"{split}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)
  return path


def evaluate_arrays(predictor_fns, images, tokens, lengths, *, captions_per_image=5,
                    batch_size=256, folds=None) -> dict:
  """Encodes a split, scores every image against every caption, and returns the recalls.

  Args:
    predictor_fns: (encode_images, encode_captions, score_matrix) numpy functions, e.g. the
      methods of `camp_jax.inference.Predictor`.
    images: (N, R, D) features (a memmap is read in batches).
    tokens, lengths: (C, T), (C,) with C = captions_per_image * N.
    folds: average over this many folds of images as well (COCO 1K); None: whole split.
  """
  encode_images, encode_captions, score_matrix = predictor_fns
  start = time.time()
  img_emb = np.concatenate([encode_images(np.asarray(images[i:i + batch_size]))
                            for i in range(0, len(images), batch_size)])
  caps = [encode_captions(tokens[i:i + batch_size], lengths[i:i + batch_size])
          for i in range(0, len(tokens), batch_size)]
  width = max(c[0].shape[1] for c in caps)
  pad = lambda a: np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2))
  cap_emb = np.concatenate([pad(c[0]) for c in caps])
  cap_mask = np.concatenate([pad(c[1]) for c in caps])
  scores = score_matrix(img_emb, cap_emb, cap_mask)
  metrics = (fold_metrics(scores, folds, captions_per_image) if folds
             else recall_metrics(scores, captions_per_image))
  metrics["seconds"] = time.time() - start
  logging.info("evaluated %d x %d pairs in %.1f s", len(img_emb), len(cap_emb),
               metrics["seconds"])
  return metrics
