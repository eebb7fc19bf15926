r"""Attention pictures: what CAMP looked at when it scored one image against one caption.

  python -m camp_jax.visualize --bundle=B --data_dir=DIR [--split=test] --image=I --caption=J --out=FILE.png
  python -m camp_jax.visualize --bundle=B --data_dir=DIR --image=I --text="a red cube on the left" --out=FILE.png

The figure shows, with the caption's words as rows and the image's regions as columns:
  * word -> regions: how each word spreads its attention over the regions (rows sum to 1);
  * region -> words: how each region spreads its attention over the words (columns sum to 1);
  * per word and per region, the fusion gate (how much of the cross-modal message is let in)
    and the attention-pooling weight (how much it counts in the final vector);
  * the score in the title.
"""
import os
import textwrap

import numpy as np

from camp_jax import files, inference
from camp_jax.data import tokenizer


def caption_words(caption: str, vocab) -> tuple[np.ndarray, list[str]]:
  """Ids (T,) as the model reads them and one label per id; unknown words get a '?'."""
  words = tokenizer.tokenize(caption)[:tokenizer.MAX_WORDS]
  ids = tokenizer.encode(caption, vocab)
  labels = ["<start>"] + [w if w in vocab else f"{w}?" for w in words] + ["<end>"]
  return ids, labels


def explain(predictor: inference.Predictor, features: np.ndarray, caption: str) -> dict:
  """Attention maps, gates, pooling weights and score of one pair, as numpy.

  Args:
    predictor: a loaded bundle with a vocabulary.
    features: (R, img_dim) region features of one image.
    caption: the sentence.

  Returns:
    {"region_attends_words": (R, L), "word_attends_regions": (L, R), "score": (),
     "words": L labels, and for the full model "region_gate" (R,), "word_gate" (L,),
     "region_pooling" (R, H), "word_pooling" (L, H)}; L counts <start> and <end>.
  """
  if predictor.vocab is None:
    raise ValueError("the bundle has no vocab.json; the caption cannot be read without it")
  if not tokenizer.tokenize(caption):
    raise ValueError(f"empty caption {caption!r}")
  if not predictor.model.PAIRWISE:
    raise ValueError(f"model {predictor.model_config.get('name')!r} has no attention to draw "
                     "(expected a CAMP bundle)")
  ids, labels = caption_words(caption, predictor.vocab)
  img_emb = predictor.encode_images(np.asarray(features, np.float32)[None])[0]
  cap_emb, mask = predictor.encode_captions(ids[None], np.array([len(ids)], np.int32))
  out = predictor.explain_pair(img_emb, cap_emb[0], mask[0])
  n = len(ids)  # Drop padding slots (the stage-1 model pads to a fixed number).
  for key in ("word_attends_regions", "word_gate", "word_pooling"):
    if key in out:
      out[key] = out[key][:n]
  out["region_attends_words"] = out["region_attends_words"][:, :n]
  out["words"] = labels
  return out


def _heatmap(ax, values, words, title, cmap, axis):
  """values (L, R) with words as rows; marks the strongest cell along `axis` (1: per row)."""
  image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0.0, vmax=float(values.max()),
                    interpolation="nearest")
  ax.set_title(title, fontsize=9.5, loc="left")
  ax.set_yticks(range(len(words)), words, fontsize=9)
  ax.set_xticks(range(values.shape[1]), [f"r{r}" for r in range(values.shape[1])],
                fontsize=8, rotation=90 if values.shape[1] > 16 else 0)
  ax.set_xticks(np.arange(values.shape[1] + 1) - 0.5, minor=True)
  ax.set_yticks(np.arange(len(words) + 1) - 0.5, minor=True)
  ax.grid(which="minor", color="white", linewidth=0.5)
  ax.tick_params(which="minor", length=0)
  best = values.argmax(axis=axis)
  cells = enumerate(best) if axis == 1 else ((i, j) for j, i in enumerate(best))
  for i, j in cells:
    v = values[i, j]
    ax.text(j, i, f"{v:.2f}".lstrip("0"), ha="center", va="center", fontsize=6.5,
            color="black" if v > 0.6 * values.max() else "white")
  return image


def _colorbar(fig, image, cax, uniform):
  """A colour bar with a mark at the uniform weight 1/n (attention spread evenly)."""
  cbar = fig.colorbar(image, cax=cax)
  cbar.ax.tick_params(labelsize=7)
  if uniform <= image.norm.vmax:
    cbar.ax.axhline(uniform, color="white", linewidth=1.5)
    cbar.ax.axhline(uniform, color="black", linewidth=0.6, linestyle="--")


def _bars(ax, values, labels, horizontal, colour, title, limit=None):
  pos = np.arange(len(values))
  top = limit or max(1e-6, float(values.max())) * 1.15
  if horizontal:
    ax.barh(pos, values, color=colour, height=0.75)
    ax.set_ylim(len(values) - 0.5, -0.5)
    ax.set_yticks(pos, [""] * len(values))
    ax.set_xlim(0, top)
    ax.tick_params(axis="x", labelsize=7.5)
    ax.grid(axis="x", alpha=0.3)
  else:
    ax.bar(pos, values, color=colour, width=0.75)
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xticks(pos, labels, fontsize=8, rotation=90 if len(values) > 16 else 0)
    ax.set_ylim(0, top)
    ax.tick_params(axis="y", labelsize=7.5)
    ax.grid(axis="y", alpha=0.3)
  ax.set_axisbelow(True)
  ax.set_title(title, fontsize=9.5, loc="left")
  for side in ("top", "right"):
    ax.spines[side].set_visible(False)


def draw(explanation: dict, caption: str = "", title: str = ""):
  """A matplotlib Figure of one explanation (see `explain`)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  words = explanation["words"]
  w2r = explanation["word_attends_regions"]                               # (L, R)
  r2w = explanation["region_attends_words"].T                             # (L, R)
  n_words, n_regions = w2r.shape
  gated = "region_gate" in explanation
  cell = 0.36
  heat_w, heat_h = max(2.4, n_regions * cell), max(2.4, n_words * cell)
  bar_w, cbar_w, gap = 1.5, 0.15, 0.75
  # Columns: label gutter is the figure margin; heat, colour bar, gap, heat, colour bar,
  # gap, word gate, small gap, word pooling.
  cols = [heat_w, 0.08, cbar_w, gap, heat_w, 0.08, cbar_w] + ([0.45, bar_w, 0.3, bar_w]
                                                              if gated else [])
  rows = [heat_h] + ([0.55, 1.3] if gated else [])
  left, right, top, bottom = 1.5, 0.35, 1.45, 0.6
  fig_w, fig_h = left + sum(cols) + right, top + sum(rows) + bottom
  fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
  grid = fig.add_gridspec(len(rows), len(cols), width_ratios=cols, height_ratios=rows,
                          wspace=0.0, hspace=0.0, left=left / fig_w, right=1 - right / fig_w,
                          top=1 - top / fig_h, bottom=bottom / fig_h)
  ax_w2r, ax_r2w = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 4])
  image = _heatmap(ax_w2r, w2r, words, "word → regions\neach row sums to 1", "magma", axis=1)
  _colorbar(fig, image, fig.add_subplot(grid[0, 2]), 1.0 / n_regions)
  image = _heatmap(ax_r2w, r2w, words, "region → words\neach column sums to 1", "viridis",
                   axis=0)
  _colorbar(fig, image, fig.add_subplot(grid[0, 6]), 1.0 / n_words)
  regions = [f"r{r}" for r in range(n_regions)]
  if gated:
    _bars(fig.add_subplot(grid[0, 8]), explanation["word_gate"], words, True, "#2a9d8f",
          "word gate", limit=1.0)
    _bars(fig.add_subplot(grid[0, 10]), explanation["word_pooling"].mean(axis=-1), words, True,
          "#e76f51", "word pooling")
    for col, key, colour, name, limit in ((0, "region_gate", "#2a9d8f", "region gate", 1.0),
                                          (4, "region_pooling", "#e76f51", "region pooling",
                                           None)):
      values = explanation[key] if key == "region_gate" else explanation[key].mean(axis=-1)
      _bars(fig.add_subplot(grid[2, col]), values, regions, False, colour, name, limit)
      ax = (ax_w2r, ax_r2w)[col // 4]
      ax.set_xticks(range(n_regions), [""] * n_regions)
    note = ("gate = sigmoid(<feature, message>): how much of the other modality is fused in.  "
            "pooling = weight in the pooled vector (mean over heads).  "
            "Numbers mark the strongest cell per word / per region; the dashed line on a colour "
            "scale is the uniform weight.")
  else:
    note = ("stage-1 model: no gates or pooling weights (mean pooling + cosine).  "
            "Numbers mark the strongest cell per word / per region; the dashed line on a "
            "colour scale is the uniform weight.")
  fig.text(0.35 / fig_w, 1 - 0.3 / fig_h, title or f"score {float(explanation['score']):.4f}",
           fontsize=12, fontweight="bold", va="top")
  if caption:
    wrapped = "\n".join(textwrap.wrap(f"“{caption}”", int(fig_w * 12)))
    fig.text(0.35 / fig_w, 1 - 0.62 / fig_h, wrapped, fontsize=9.5, va="top", style="italic")
  fig.text(0.35 / fig_w, 0.12 / fig_h, "\n".join(textwrap.wrap(note, int(fig_w * 15))),
           fontsize=7.5, color="0.35", va="bottom")
  return fig


def render(predictor, features: np.ndarray, caption: str, out: str | os.PathLike,
           title: str = "") -> dict:
  """Explains one pair and writes the figure to `out` (PNG, ...); returns the explanation."""
  explanation = explain(predictor, features, caption)
  score = float(explanation["score"])
  fig = draw(explanation, caption, f"CAMP score {score:.4f}" + (f"  ·  {title}" if title else ""))
  with files.atomic_path(out) as tmp:
    fig.savefig(tmp)
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)
  return explanation
