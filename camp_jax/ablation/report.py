"""The ablation's results: per variant the mean and std over seeds, as JSON, Markdown, PNG.

  results = collect(workdir, variants, seeds, split)
  write_reports(workdir, results)      # DIR/ablation.json, DIR/ablation.md, DIR/ablation.png

std is the sample standard deviation over seeds (0 with one seed).
"""
import json
import math
import pathlib

import numpy as np

from camp_jax import files
from camp_jax.ablation.plan import Variant, final_run

METRICS = ("i2t_r1", "t2i_r1", "rsum")
LABELS = {"i2t_r1": "i→t R@1", "t2i_r1": "t→i R@1", "rsum": "rsum"}
GATE_COLUMNS = tuple((gate, group) for gate in ("region_gate", "word_gate")
                     for group in ("relevant", "irrelevant", "matched", "hardest_negative"))


def _read(path: pathlib.Path) -> dict | None:
  return json.loads(path.read_text()) if path.is_file() else None


def mean_std(values) -> tuple[float, float]:
  values = [v for v in values if v is not None]
  if not values:
    return math.nan, math.nan
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def collect(workdir, variants: tuple[Variant, ...], seeds, split: str = "test") -> dict:
  """{variant: {label, seeds: {seed: metrics}, mean, std, gates?}} of the finished runs.

  A variant without any finished seed is left out.
  """
  out = {}
  for v in variants:
    per_seed, gates = {}, {}
    for seed in seeds:
      run = final_run(workdir, v, seed)
      metrics = _read(run / "eval" / f"{split}.json")
      if metrics is None:
        continue
      per_seed[str(seed)] = {k: metrics[k] for k in METRICS}
      summary = _read(run / "eval" / f"{split}_gates.json") if v.gated else None
      if summary:
        gates[str(seed)] = {f"{g}/{k}": summary[g][k] for g, k in GATE_COLUMNS}
    if not per_seed:
      continue
    stats = {k: mean_std([m[k] for m in per_seed.values()]) for k in METRICS}
    entry = {"label": v.label, "stages": list(v.stages), "overrides": list(v.overrides),
             "seeds": per_seed, "mean": {k: s[0] for k, s in stats.items()},
             "std": {k: s[1] for k, s in stats.items()}}
    if gates:
      entry["gates"] = {"seeds": gates, "mean": {
          c: mean_std([g[c] for g in gates.values()])[0] for c in next(iter(gates.values()))}}
    out[v.name] = entry
  return out


def _cell(mean: float, std: float) -> str:
  return "—" if math.isnan(mean) else f"{mean:.1f} ± {std:.1f}"


def markdown(results: dict, meta: dict) -> str:
  """The tables of ablation.md: recalls (mean ± std), per seed, and the gates."""
  lines = [f"# Ablation: {meta['config']}, split {meta['split']}, seeds "
           f"{', '.join(map(str, meta['seeds']))}", "",
           "| variant | " + " | ".join(LABELS[k] for k in METRICS) + " | seeds |",
           "|---|" + "---:|" * (len(METRICS) + 1)]
  for r in results.values():
    cells = [_cell(r["mean"][k], r["std"][k]) for k in METRICS]
    lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {len(r['seeds'])} |")
  lines += ["", "Mean ± sample standard deviation over seeds; recalls in percent. Per seed:",
            "", "| variant | seed | " + " | ".join(LABELS[k] for k in METRICS) + " |",
            "|---|---:|" + "---:|" * len(METRICS)]
  for r in results.values():
    for seed, m in r["seeds"].items():
      lines.append(f"| {r['label']} | {seed} | " + " | ".join(f"{m[k]:.1f}" for k in METRICS)
                   + " |")
  gated = {name: r for name, r in results.items() if "gates" in r}
  if gated:
    heads = [f"{g.split('_')[0]}: {k.replace('_', ' ')}" for g, k in GATE_COLUMNS]
    lines += ["", f"## Gates ({meta['split']}, first {meta['gate_images']} images; mean over "
              "seeds)", "", "| variant | " + " | ".join(heads) + " |",
              "|---|" + "---:|" * len(heads)]
    for r in gated.values():
      cell = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) \
          else f"{v:.3f}"
      lines.append(f"| {r['label']} | " + " | ".join(
          cell(r["gates"]["mean"].get(f"{g}/{k}")) for g, k in GATE_COLUMNS) + " |")
    lines += ["", "Relevant / irrelevant: regions and words of matched pairs, as the data "
              "marks them; hardest negative: per image its best-scoring wrong caption and per "
              "caption its best-scoring wrong image (`python -m camp_jax.gate_diagnostics`)."]
  return "\n".join(lines) + "\n"


def plot(results: dict, path: pathlib.Path, title: str = "") -> pathlib.Path:
  """Bars of the mean with std error bars (seeds as dots): R@1 both ways, and rsum."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(results)
  x = np.arange(len(names))
  fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(names)), 4.5),
                                    gridspec_kw={"width_ratios": [2, 1]})
  panels = ((left, ("i2t_r1", "t2i_r1"), ("#264653", "#2a9d8f")), (right, ("rsum",), ("#e76f51",)))
  for ax, keys, colours in panels:
    width = 0.8 / len(keys)
    for j, (key, colour) in enumerate(zip(keys, colours)):
      pos = x - 0.4 + width * (j + 0.5)
      ax.bar(pos, [results[n]["mean"][key] for n in names], width, color=colour,
             yerr=[results[n]["std"][key] for n in names], capsize=4, label=LABELS[key])
      for p, n in zip(pos, names):
        seeds = [m[key] for m in results[n]["seeds"].values()]
        ax.plot([p] * len(seeds), seeds, "k.", markersize=4)
    ax.set_xticks(x, [results[n]["label"] for n in names], rotation=25, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
  left.set_ylabel("R@1 (%)")
  right.set_ylabel("rsum")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_reports(workdir, results: dict, meta: dict) -> list[pathlib.Path]:
  """DIR/ablation.json ({**meta, "variants": results}), DIR/ablation.md, DIR/ablation.png."""
  workdir = pathlib.Path(workdir)
  if not results:
    raise ValueError(f"{workdir}: no finished run to report")
  paths = [workdir / "ablation.json", workdir / "ablation.md", workdir / "ablation.png"]
  files.write_text(paths[0], json.dumps({**meta, "variants": results}, indent=2,
                                        sort_keys=True) + "\n")
  files.write_text(paths[1], markdown(results, meta))
  plot(results, paths[2], f"{meta['config']} ({meta['split']}): mean ± std over "
       f"{len(meta['seeds'])} seed(s)")
  return paths
