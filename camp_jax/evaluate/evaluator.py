"""Evaluating params, a run or a bundle on a split; saved score matrices and their ensembles.

Every process of a multi-process run calls these alike: each encodes the split on its own
devices, the score matrix is split over every device of every process (each process scores
its share of the pairs), gathered once, and every process computes the same metrics.
Process 0 writes the files.
"""
import json
import os
import pathlib
import time

import numpy as np
from absl import logging

from camp_jax import distributed, sharding
from camp_jax.evaluate import metrics as metrics_lib


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


def write_json(path: str | os.PathLike, payload: dict) -> pathlib.Path:
  """Writes JSON atomically (a temporary file renamed into place)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)
  return path


def write_metrics(folder: str | os.PathLike, split: str, metrics: dict) -> pathlib.Path:
  """Writes <folder>/eval/<split>.json."""
  return write_json(pathlib.Path(folder) / "eval" / f"{split}.json", metrics)


def read_metrics(folder: str | os.PathLike, split: str) -> dict | None:
  """<folder>/eval/<split>.json as written by `write_metrics`, or None when there is none."""
  path = pathlib.Path(folder) / "eval" / f"{split}.json"
  return json.loads(path.read_text()) if path.is_file() else None


def save_scores(path: str | os.PathLike, scores: np.ndarray) -> pathlib.Path:
  """Writes a score matrix as .npy (float32, images x captions), atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.tmp.npy")
  np.save(tmp, np.asarray(scores, np.float32))
  os.replace(tmp, path)
  return path


def split_scores(predictor, split, vocab, *, mesh=None, pooling: str = "auto") -> np.ndarray:
  """The (images, captions) score matrix of a split by `predictor` (an `inference.Predictor`)."""
  from camp_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
  tokens, lengths = tokenizer.encode_all(split.captions, vocab)
  img_emb, cap_emb, cap_mask = predictor.encode_split(split.images, tokens, lengths)
  return predictor.score_matrix(img_emb, cap_emb, cap_mask, mesh=mesh, pooling=pooling)


def evaluate_params(model_cfg: dict, params, split, vocab, *, folds: int = 0,
                    mesh=None, scores_path=None, pooling: str = "auto") -> dict:
  """Recalls of `params` on a split (a `PrecompSplit`); optionally saves the score matrix.

  `pooling`: `scoring.score_matrix`'s ("auto": the Pallas pooling kernel on TPU).
  """
  from camp_jax import inference  # pylint: disable=g-import-not-at-top
  start = time.time()
  # The encoders run on each process's own devices from its copy of the replicated params;
  # the pairs are split over every device.
  predictor = inference.Predictor(model_cfg, sharding.host_local(params))
  scores = split_scores(predictor, split, vocab, mesh=mesh, pooling=pooling)
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
  from camp_jax import data  # pylint: disable=g-import-not-at-top
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
  from camp_jax import bundle, checkpoints, data  # pylint: disable=g-import-not-at-top
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
    from camp_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    recorded = vocab_lib.load_vocab(vocab_path) if vocab_path and os.path.isfile(vocab_path) \
        else None
    vocab = _checked_vocab(config, recorded, f"run {workdir} ({vocab_path})")
    out = pathlib.Path(workdir)
  if vocab is None:
    raise ValueError("no vocabulary: set config.data.vocab")
  results = {}
  for name in ([split] if split else config.eval_splits):
    scores_path = out / "eval" / f"{name}_scores.npy" if scores else None
    metrics = evaluate_params(model_cfg, params, data.load_split(config.data, name), vocab,
                              folds=config.eval_folds, scores_path=scores_path,
                              pooling=config.get("pooling_kernel", "auto"))
    metrics.update(model=model_cfg.get("name", "camp"), variant=model_cfg.get("variant"))
    if distributed.is_primary():
      write_metrics(out, name, metrics)
    results[name] = metrics
  return results
