r"""Gate diagnostics: do the full CAMP's adaptive gates close on what does not match?

  python -m camp_jax.gate_diagnostics --workdir=RUN [--config=configs/default.py] \
      [--split=test] [--images=200] [--out=FILE.png] [--json]

The paper's claim (the gates "properly handle negative pairs and irrelevant information")
as numbers, on the first `max_images` images of a split and their captions. Four groups of
gate values, for the region gates and for the word gates (real words only):

  relevant / irrelevant   on MATCHED pairs (an image with one of its own captions), the
                          regions and words the data marks relevant (a region a caption
                          names, a word that names a region) and the rest (clutter; filler
                          and function words, <start>, <end>). Needs the data's truth,
                          `camp_jax.data.load_relevance` (the built-in synthetic set has it);
                          left out, with a note, for data without it.
  matched / hardest_negative
                          every gate of the matched pairs, and of the hardest negatives by
                          the model's own scores: per image its best-scoring caption of
                          another image, per caption its best-scoring other image (the
                          pairs the training loss reads).

  values = gate_values(model_cfg, params, images, tokens, lengths, relevance)
  summary = summarize(values)          # {"region_gate": {group: mean}, "word_gate": ...}
  summary, values = diagnose_run(workdir, data_config, split="test")   # + RUN/eval/ files

Everything is batched (the score matrix by `camp_jax.scoring`, the gates of the chosen
pairs by one jitted vmap of `explain_pair` over fixed-size batches of pairs).
"""
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from camp_jax import batching, checkpoints, data, files, inference
from camp_jax.data import tokenizer

GATES = ("region_gate", "word_gate")
GROUPS = ("relevant", "irrelevant", "matched", "hardest_negative")
PAIR_BATCH = 256


def hardest_negative_pairs(scores: np.ndarray, captions_per_image: int = 5):
  """The hardest negatives of an (N, M) score matrix as pairs (image_index, caption_index):
  per image its best-scoring caption of another image, then per caption its best-scoring
  other image; (N + M,) each."""
  scores = np.asarray(scores)
  owner = np.arange(scores.shape[1]) // captions_per_image
  wrong = np.where(owner[None] == np.arange(scores.shape[0])[:, None], -np.inf, scores)
  images = np.concatenate([np.arange(scores.shape[0]), np.argmax(wrong, axis=0)])
  captions = np.concatenate([np.argmax(wrong, axis=1), np.arange(scores.shape[1])])
  return images, captions


@functools.partial(jax.jit, static_argnums=0)
def _explained_gates(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index):
  explain = lambda i, c, m: model.apply({"params": params}, i, c, m, method="explain_pair")
  out = jax.vmap(explain)(img_emb[img_index], cap_emb[cap_index], cap_mask[cap_index])
  return out["region_gate"], out["word_gate"]


def pair_gates(model, params, img_emb, cap_emb, cap_mask, img_index, cap_index):
  """The gates of the pairs (img_index[p], cap_index[p]): region (P, R), word (P, L)."""
  arrays = tuple(jnp.asarray(a) for a in (img_emb, cap_emb, cap_mask))
  fn = functools.partial(_explained_gates, model, params, *arrays)
  index = (np.asarray(img_index, np.int32), np.asarray(cap_index, np.int32))
  return batching.map_batches(fn, index, batching.batch_size_for(len(index[0]), PAIR_BATCH))


def _aligned_words(word_relevant: np.ndarray, cap_mask: np.ndarray) -> np.ndarray:
  """Word relevance (M, T) cut or padded to the model's word slots (M, L)."""
  width = cap_mask.shape[1]
  out = np.zeros(cap_mask.shape, bool)
  out[:, :min(width, word_relevant.shape[1])] = word_relevant[:, :width]
  if np.any(out & ~cap_mask) or np.any(word_relevant[:, width:]):
    raise ValueError("word relevance marks positions past a caption's length: its columns "
                     "must be the positions of tokenizer.encode(caption)")
  return out


def gate_values(model_cfg: dict, params, images, tokens, lengths, relevance=None,
                captions_per_image: int = 5) -> dict:
  """The gates of each group: {"region_gate" | "word_gate": {group: (k,) float32}}.

  Args:
    model_cfg, params: a full CAMP (variant "gate_fusion").
    images: (N, R, img_dim) region features; tokens (M, T), lengths (M,): their captions,
      M = captions_per_image * N, caption j belonging to image j // captions_per_image.
    relevance: None, or (region_relevant (N, R) bool, word_relevant (M, T') bool) aligned
      with the token positions (`camp_jax.data.load_relevance`).
  """
  if model_cfg.get("name", "camp") != "camp" or model_cfg.get("variant") != "gate_fusion":
    raise ValueError(f"gate diagnostics need the full CAMP (model.variant='gate_fusion'); "
                     f"this model is {model_cfg.get('name', 'camp')!r} "
                     f"{model_cfg.get('variant')!r}, which has no gates")
  predictor = inference.Predictor(model_cfg, params)
  img_emb, cap_emb, cap_mask = predictor.encode_split(images, tokens, lengths)
  cap_mask = np.asarray(cap_mask, bool)
  scores = predictor.score_matrix(img_emb, cap_emb, cap_mask, progress=None)
  m = len(cap_mask)
  owner = np.arange(m) // captions_per_image
  neg_img, neg_cap = hardest_negative_pairs(scores, captions_per_image)
  region, word = pair_gates(predictor.model, predictor.params, img_emb, cap_emb, cap_mask,
                            np.concatenate([owner, neg_img]), np.concatenate([np.arange(m),
                                                                              neg_cap]))
  real = cap_mask[np.concatenate([np.arange(m), neg_cap])]
  values = {"region_gate": {"matched": region[:m].ravel(), "hardest_negative": region[m:].ravel()},
            "word_gate": {"matched": word[:m][real[:m]], "hardest_negative": word[m:][real[m:]]}}
  if relevance is not None:
    region_relevant, word_relevant = (np.asarray(r, bool) for r in relevance)
    if region_relevant.shape != (len(images), region.shape[1]) or len(word_relevant) != m:
      raise ValueError(f"relevance of shapes {region_relevant.shape}, {word_relevant.shape} "
                       f"for {len(images)} images of {region.shape[1]} regions and {m} captions")
    regions_in_pairs = region_relevant[owner]                                 # (M, R)
    words = _aligned_words(word_relevant, cap_mask)
    values["region_gate"].update(relevant=region[:m][regions_in_pairs],
                                 irrelevant=region[:m][~regions_in_pairs])
    values["word_gate"].update(relevant=word[:m][words], irrelevant=word[:m][cap_mask & ~words])
  return values


def summarize(values: dict) -> dict:
  """{"region_gate" | "word_gate": {group: mean}, "counts": {gate: {group: n}}}; a group
  without values (no relevance truth) is None."""
  mean = lambda v: float(np.mean(v)) if v is not None and len(v) else None
  out = {g: {k: mean(values[g].get(k)) for k in GROUPS} for g in GATES}
  out["counts"] = {g: {k: int(len(values[g].get(k, ()))) for k in GROUPS} for g in GATES}
  return out


def data_config_of_run(vocab_path: str | None) -> ml_collections.ConfigDict:
  """Without a run config: the data is the precomp folder of the vocabulary the run recorded
  (the synthetic set's folder holds its vocab.json)."""
  if not vocab_path:
    raise ValueError("the run recorded no vocabulary file; pass --config=CONFIG (its "
                     "config.data names the data)")
  return ml_collections.ConfigDict(dict(kind="precomp", dir=os.path.dirname(vocab_path),
                                        vocab=""))


def load_relevance(data_config, split: str):
  """`camp_jax.data.load_relevance`, or (None, why) when the data has no such truth."""
  try:
    return data.load_relevance(data_config, split), None
  except (FileNotFoundError, ValueError) as e:
    logging.warning("no relevant / irrelevant groups: %s", e)
    return None, str(e)


def diagnose_run(workdir, data_config=None, split: str = "test", checkpoint="best",
                 max_images: int = 200) -> tuple[dict, dict]:
  """(summary, values) of a run's checkpoint on the first `max_images` images of `split`
  (0: all); writes the summary to RUN/eval/<split>_gates.json."""
  model_cfg, params, vocab_path = checkpoints.load_trained(workdir, checkpoint)
  vocab = checkpoints.run_vocabulary(workdir, vocab_path)
  data_config = data_config or data_config_of_run(vocab_path)
  whole = data.load_split(data_config, split)
  n = min(max_images or whole.num_images, whole.num_images)
  part = whole.slice_images(0, n) if n < whole.num_images else whole
  tokens, lengths = tokenizer.encode_all(part.captions, vocab)
  relevance, missing = load_relevance(data_config, split)
  if relevance is not None:
    relevance = (relevance[0][:n], relevance[1][:n * part.captions_per_image])
  values = gate_values(model_cfg, params, np.asarray(part.images), tokens, lengths, relevance,
                       part.captions_per_image)
  summary = dict(summarize(values), split=split, images=n, captions=part.num_captions,
                 workdir=str(workdir), relevance=missing or "from the data")
  files.write_text(pathlib.Path(workdir) / "eval" / f"{split}_gates.json",
                   json.dumps(summary, indent=2, sort_keys=True) + "\n")
  return summary, values


def format_table(summary: dict) -> str:
  """The summary as a small text table (rows: gates; columns: groups)."""
  head = (f"gates on {summary.get('split', '?')} ({summary.get('images', '?')} images, "
          f"{summary.get('captions', '?')} captions)")
  lines = [f"{head:<44}" + "".join(f"{k.replace('_', ' '):>18}" for k in GROUPS)]
  for g in GATES:
    cell = lambda v: f"{v:>18.3f}" if v is not None else f"{'-':>18}"
    lines.append(f"{g.replace('_', ' '):<44}" + "".join(cell(summary[g][k]) for k in GROUPS))
  lines.append("relevant / irrelevant: items of matched pairs; hardest negative: the "
               "best-scoring wrong caption of each image and wrong image of each caption")
  if summary.get("relevance", "from the data") != "from the data":
    lines.append(f"no relevance truth: {summary['relevance']}")
  return "\n".join(lines)


def plot(values: dict, path: str | os.PathLike, title: str = "") -> pathlib.Path:
  """Histograms of the gates: rows region / word gate, columns relevant vs irrelevant
  (matched pairs) and matched vs hardest negative; the dashed lines are the means."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), squeeze=False)
  pairs = (("relevant", "irrelevant"), ("matched", "hardest_negative"))
  colours = ("#2a9d8f", "#e76f51")
  bins = np.linspace(0.0, 1.0, 41)
  for row, gate in enumerate(GATES):
    for col, groups in enumerate(pairs):
      ax = axes[row, col]
      for group, colour in zip(groups, colours):
        v = values[gate].get(group)
        if v is None or not len(v):
          continue
        label = f"{group.replace('_', ' ')} (mean {np.mean(v):.3f})"
        ax.hist(np.clip(v, 0, 1), bins=bins, density=True, alpha=0.55, color=colour,
                label=label)
        ax.axvline(float(np.mean(v)), color=colour, linestyle="--")
      if ax.has_data():
        ax.legend(fontsize=8, loc="upper left")
      else:
        ax.text(0.5, 0.5, "no relevance truth for this data", ha="center",
                transform=ax.transAxes)
      ax.set_xlim(0, 1)
      ax.set_xlabel(gate.replace("_", " "))
      ax.set_title(("relevant vs irrelevant items (matched pairs)",
                    "matched pairs vs hardest negatives")[col], fontsize=10)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


__all__ = ["GATES", "GROUPS", "data_config_of_run", "diagnose_run", "format_table",
           "gate_values", "hardest_negative_pairs", "load_relevance", "pair_gates", "plot",
           "summarize"]
