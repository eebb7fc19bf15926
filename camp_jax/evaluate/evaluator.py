"""Evaluating params, a run or a bundle on a split; saved score matrices and their ensembles.

Every process of a multi-process run calls these alike. The split is encoded on the mesh
with the params already there (a run's replicated train state): its embeddings stay on
the devices, rows split over all of them; the score matrix is split over every device of
every process (each process scores its share of the pairs), gathered once, and every
process computes the same metrics. Process 0 writes the files.
"""
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from camp_jax import (batching, bundle, checkpoints, data, distributed, files, kernel_check,
                      models, scoring, sharding)
from camp_jax.data import tokenizer
from camp_jax.evaluate import metrics as metrics_lib

IMAGE_BATCH = 128    # images per encoder call (split over the devices)
CAPTION_BATCH = 512  # captions per encoder call


def metrics_of(scores, captions_per_image: int = 5, folds: int = 0) -> dict:
  """Recalls of the whole matrix, plus the mean over `folds` blocks of images under "folds"
  (COCO: 5K and 1K from one matrix)."""
  out = metrics_lib.recall_metrics(scores, captions_per_image)
  if folds and folds > 1:
    out["folds"] = metrics_lib.fold_metrics(scores, folds, captions_per_image)
  return out


def scalar_metrics(metrics: dict, prefix: str) -> dict:
  """Flat {prefix/key: number} for metric writers; fold means under prefix/folds/."""
  out = {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
  if isinstance(metrics.get("folds"), dict):
    out.update(scalar_metrics(metrics["folds"], f"{prefix}/folds"))
  return out


def write_metrics(folder: str | os.PathLike, split: str, metrics: dict) -> pathlib.Path:
  """Writes <folder>/eval/<split>.json, atomically."""
  return files.write_text(pathlib.Path(folder) / "eval" / f"{split}.json",
                          json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def read_metrics(folder: str | os.PathLike, split: str) -> dict | None:
  """<folder>/eval/<split>.json as written by `write_metrics`, or None when there is none."""
  path = pathlib.Path(folder) / "eval" / f"{split}.json"
  return json.loads(path.read_text()) if path.is_file() else None


def beside_run(folder: str | os.PathLike, split: str, metrics: dict) -> str | None:
  """A table of this run's `metrics` on `split` below the runs it started from, oldest
  first: the run in `folder`, the one that run started from (its metrics' "init_from"),
  and so on (CAMP's three stages). None where `folder` has no metrics for `split`."""
  chain, seen = [], set()
  while folder and str(folder) not in seen and (before := read_metrics(folder, split)):
    seen.add(str(folder))
    chain.append((folder, before))
    folder = before.get("init_from")
  if not chain:
    return None
  name = lambda m: m.get("variant") or m.get("model") or "model"
  short = lambda f: os.path.relpath(f) if pathlib.Path(f).absolute().is_relative_to(
      pathlib.Path.cwd()) else str(f)
  rows = {f"{name(m)} ({short(f)})": m for f, m in reversed(chain)}
  rows[f"{name(metrics)} (this run)"] = metrics
  return metrics_lib.format_comparison(rows, f"{split}: this run below the runs it started from")


def save_scores(path: str | os.PathLike, scores: np.ndarray) -> pathlib.Path:
  """Writes a score matrix as .npy (float32, images x captions), atomically."""
  with files.atomic_path(path) as tmp:
    np.save(tmp, np.asarray(scores, np.float32))
  return pathlib.Path(path)


def encode_split(model, params, split, vocab, mesh: jax.sharding.Mesh) -> tuple:
  """(img_emb (N', R, d), cap_emb (M', L, d), cap_mask (M', L)): a split's embeddings as
  global arrays, rows split over every device of `mesh` and padded to a multiple of the
  devices (the first N = split.num_images and M = len(split.captions) rows are real).

  `params` are used where they lie: replicated over `mesh` (a run's train state), or put
  there. L is the longest caption, or the model's `pad_words_to` slots if it has them.
  """
  params = sharding.put_global(params, sharding.replicated(mesh))
  tokens, lengths = tokenizer.encode_all(split.captions, vocab)
  tokens = tokens[:, :int(lengths.max())]  # encode_captions pads to pad_words_to itself
  images = _encode(model, params, "encode_images", (split.images,), mesh, IMAGE_BATCH)
  return (images, *_encode(model, params, "encode_captions", (tokens, lengths), mesh,
                           CAPTION_BATCH))


def _encode(model, params, method: str, arrays: tuple, mesh, most: int):
  """`method` over the rows of `arrays` (numpy every process holds, memmaps read a batch at
  a time), in batches split over every device; the outputs stay there, in float32."""
  flat = sharding.flat_sharding(mesh)
  n = len(arrays[0])
  size = -(-batching.batch_size_for(n, most) // mesh.size) * mesh.size
  parts = []
  for start in range(0, n, size):
    batch = tuple(batching.pad_rows(np.asarray(a[start:start + size]), size) for a in arrays)
    parts.append(scoring.apply(model, params, *sharding.put_global(batch, flat),
                               method=method))
  as_f32 = lambda x: x if x.dtype == jnp.bool_ else x.astype(jnp.float32)
  concat = jax.jit(lambda *xs: as_f32(jnp.concatenate(xs)), out_shardings=flat)
  return jax.tree.map(lambda *xs: concat(*xs), *parts)


def evaluate_params(model_cfg: dict, params, split, vocab, *, folds: int = 0,
                    mesh=None, scores_path=None, pooling: str = "auto") -> dict:
  """Recalls of `params` on a split (a `PrecompSplit`); optionally saves the score matrix.

  Runs on `mesh` (default: every device of every process; a run passes its own, and its
  replicated params are used in place). `pooling`: `scoring.score_matrix`'s ("auto": the
  Pallas pooling kernel on TPU).
  """
  start = time.time()
  model, mesh = models.build(model_cfg), mesh or sharding.make_mesh()
  params = sharding.put_global(params, sharding.replicated(mesh))
  embeddings = encode_split(model, params, split, vocab, mesh)
  scores = scoring.score_matrix(model, params, *embeddings, mesh=mesh, pooling=pooling,
                                num_images=split.num_images, num_captions=len(split.captions))
  metrics = metrics_of(scores, split.captions_per_image, folds)
  metrics["seconds"] = time.time() - start
  logging.info("evaluated %s: %d x %d pairs in %.1f s", split.name, *scores.shape,
               metrics["seconds"])
  if scores_path and distributed.is_primary():
    save_scores(scores_path, scores)
  return metrics


def ensemble(score_files, captions_per_image: int = 5, folds: int = 0) -> tuple[np.ndarray, dict]:
  """The mean of saved score matrices (the SCAN-family ensemble) and its metrics."""
  matrices = []
  for path in score_files:
    try:
      m = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: not a saved score matrix ({e})") from e
    if matrices and m.shape != matrices[0].shape:
      raise ValueError(f"{path}: shape {m.shape} differs from {score_files[0]}'s "
                       f"{matrices[0].shape}; ensembles average matrices of the same split")
    matrices.append(m)
  if not matrices:
    raise ValueError("no score matrices given")
  scores = np.mean([np.asarray(m, np.float32) for m in matrices], axis=0)
  return scores, metrics_of(scores, captions_per_image, folds)


def _checked_vocab(config, bundle_vocab, source: str):
  """The vocabulary to tokenize with: the model's own; a config vocabulary must agree."""
  config_vocab = data.load_vocab(config.data) if (config.data.vocab or bundle_vocab is None) \
      else None
  if bundle_vocab is None:
    return config_vocab
  if config_vocab is not None and config_vocab != bundle_vocab:
    raise ValueError(f"config.data.vocab={config.data.vocab} ({len(config_vocab)} words) "
                     f"disagrees with the vocabulary of {source} ({len(bundle_vocab)} words): "
                     "its ids would feed the model the wrong words; leave config.data.vocab "
                     "empty to use the model's own, or pass the one it was trained with")
  return bundle_vocab


def evaluate_run(config, *, workdir=None, checkpoint="best", bundle_path=None,
                 split=None, scores: bool = False) -> dict:
  """Evaluates a run's checkpoint, or a bundle, on `split` (default: config.eval_splits).

  Tokenizes with the model's own vocabulary (the bundle's, or the one the run recorded) and
  refuses a config vocabulary that disagrees. Results go to <workdir>/eval/<split>.json; a
  bundle's go beside it (<bundle>/eval/) unless `workdir` names an empty or non-run folder.
  `scores` also saves each score matrix as eval/<split>_scores.npy.

  Returns:
    {split: metrics}.
  """
  if bundle_path:
    model_cfg, params, vocab, _ = bundle.load(bundle_path)
    vocab = _checked_vocab(config, vocab, f"bundle {bundle_path}")
    out = pathlib.Path(workdir or bundle_path)
    if workdir and checkpoints.is_run(workdir):
      raise ValueError(f"--workdir={workdir} holds a training run; evaluating a bundle there "
                       "would overwrite its eval/ results: leave --workdir out (results go "
                       "beside the bundle) or give another folder")
  else:
    if not workdir:
      raise ValueError("--workdir (a training run) or --bundle is needed to evaluate")
    model_cfg, params, vocab_path = checkpoints.load_trained(workdir, checkpoint)
    vocab = _checked_vocab(config, checkpoints.run_vocabulary(workdir, vocab_path),
                           f"run {workdir} ({vocab_path})")
    out = pathlib.Path(workdir)
  if vocab is None:
    raise ValueError("no vocabulary: set config.data.vocab")
  # Where the Pallas pooling kernel would run, it first checks itself (else XLA's pooling).
  pooling, _ = kernel_check.resolve_pooling(config, models.build(model_cfg), params,
                                            sharding.make_mesh())
  results = {}
  for name in ([split] if split else config.eval_splits):
    scores_path = out / "eval" / f"{name}_scores.npy" if scores else None
    metrics = evaluate_params(model_cfg, params, data.load_split(config.data, name), vocab,
                              folds=config.eval_folds, scores_path=scores_path,
                              pooling=pooling)
    metrics.update(model=model_cfg.get("name", "camp"), variant=model_cfg.get("variant"))
    if distributed.is_primary():
      write_metrics(out, name, metrics)
    results[name] = metrics
  return results
