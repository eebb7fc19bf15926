r"""What each part of CAMP adds: variants trained with several seeds, one table and one plot.

  python -m camp_jax.ablation --workdir=DIR [--seeds=3] [--config=configs/default.py] \
      [--variants=camp,camp_open_gates] [--override=--config.data.dir=...] [--stream]

Variants (`plan.VARIANTS`), each a chain of `python -m camp_jax.main` runs on the config
file's stages (`CONFIG:stage1|stage2|stage3`), seeds by --config.seed:
  vse               VSE++: stage 1's recipe with configs/vse.py's model and hinge loss
  stage1            the cross-attention model (mean pooling, cosine): stage 1 alone
  camp              the full CAMP: stage 2 (fusion and head) and stage 3 (everything)
                    from the seed's stage-1 run
  camp_open_gates   the same with the fusion gates held at 1 (model.gate=open)
  camp_cosine_head  the same scored by the cosine of the pooled fused vectors (model.head)
  camp_hinge        the same trained with the VSE++ max-violation hinge (config.loss)
Stage-1 runs are shared by every CAMP variant of a seed. Finished runs are skipped and an
interrupted one resumes from its checkpoints, so the command can be run again until it
ends. It writes DIR/ablation.json, DIR/ablation.md and DIR/ablation.png (`report`); the
gated CAMP variants also get gate diagnostics (`camp_jax.gate_diagnostics`), in the table.

  results = ablation.run(workdir, config="configs/default.py", seeds=(0, 1, 2))
"""
import pathlib
import sys
import time

from camp_jax.ablation import plan, report, runner
from camp_jax.ablation.plan import VARIANTS, Variant, variants_named


def run(workdir, *, config: str = "configs/default.py", seeds=(0, 1, 2), variants=(),
        overrides=(), split: str = "test", gate_images: int = 200, stream: bool = False,
        dry_run: bool = False, out=sys.stdout) -> dict:
  """Trains what is missing of `variants` (names; all when empty) x `seeds`, then writes the
  reports; returns ablation.json's content. `dry_run` prints the commands and runs none."""
  workdir = pathlib.Path(workdir).absolute()
  chosen = variants_named(variants)
  steps = plan.steps(workdir, chosen, seeds, config, tuple(overrides), split, gate_images)
  if dry_run:
    for step in steps:
      state = "done" if step.done.is_file() else "todo"
      print(f"{state}  {step.name}: {' '.join(step.command)}", file=out)
    return {}
  start = time.time()
  times = runner.execute(steps, workdir, stream, out)
  results = report.collect(workdir, chosen, seeds, split)
  meta = {"config": config, "overrides": list(overrides), "seeds": list(seeds), "split": split,
          "gate_images": gate_images, "wall_seconds_this_call": round(time.time() - start, 1),
          "step_seconds": times}
  paths = report.write_reports(workdir, results, meta)
  print(report.markdown(results, meta), file=out)
  print(f"wrote {', '.join(map(str, paths))} in {time.time() - start:.0f} s", file=out)
  return {**meta, "variants": results}


__all__ = ["VARIANTS", "Variant", "plan", "report", "run", "runner", "variants_named"]
