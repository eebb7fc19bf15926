"""What the ablation trains: its variants, and the steps (one command each) behind them.

Every training step is `python -m camp_jax.main` on a stage of the recipe the config file
names (`CONFIG:stage1`, `:stage2`, `:stage3`), so the same variants run on any config that
takes those arguments (configs/default.py, configs/flickr30k.py with real features). Layout:

  DIR/stage1/seed<S>/stage1/          the cross-attention run every CAMP variant of seed S
                                      starts from (also the "stage1" variant)
  DIR/<variant>/seed<S>/<stage>/      the variant's own runs; its result is the last one's
                                      eval/<split>.json (gate numbers: eval/<split>_gates.json)
  DIR/<variant>/seed<S>/<stage>.log   each command's output
"""
import dataclasses
import pathlib
import sys

# The loss, model and shortlist term of configs/vse.py, as overrides of a stage-1 config.
VSE_OVERRIDES = ("--config.model.name=vse", "--config.loss=max_violation_hinge",
                 "--config.shortlist_loss_weight=0.0")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of the table: the stages it trains itself, with `overrides` on each."""
  name: str
  label: str
  stages: tuple[str, ...]
  overrides: tuple[str, ...] = ()
  from_stage1: bool = True    # its first stage starts from the seed's shared stage-1 run
  gated: bool = False         # adaptive gates: its last run gets gate diagnostics


VARIANTS = (
    Variant("vse", "VSE++", ("stage1",), VSE_OVERRIDES, from_stage1=False),
    Variant("stage1", "stage 1 (cross-attention, cosine)", ("stage1",), from_stage1=False),
    Variant("camp", "CAMP (3 stages)", ("stage2", "stage3"), gated=True),
    Variant("camp_open_gates", "CAMP, gates held open", ("stage2", "stage3"),
            ("--config.model.gate=open",)),
    Variant("camp_cosine_head", "CAMP, cosine head", ("stage2", "stage3"),
            ("--config.model.head=cosine",), gated=True),
    Variant("camp_hinge", "CAMP, VSE++ hinge", ("stage2", "stage3"),
            ("--config.loss=max_violation_hinge",), gated=True),
)
BY_NAME = {v.name: v for v in VARIANTS}
SHARED = BY_NAME["stage1"]


@dataclasses.dataclass(frozen=True)
class Step:
  """One command; it is finished when `done` exists (then a later call skips it)."""
  name: str
  command: tuple[str, ...]
  done: pathlib.Path
  log: pathlib.Path


def variants_named(names) -> tuple[Variant, ...]:
  """The variants `names` lists (all when empty), in the table's order."""
  names = [n for n in (names or ()) if n]
  unknown = sorted(set(names) - set(BY_NAME))
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; expected some of {list(BY_NAME)}")
  return tuple(v for v in VARIANTS if not names or v.name in names)


def config_arg(config: str, stage: str) -> str:
  """The config argument of a stage: FILE -> FILE:stage, FILE:EXTRA -> FILE:stage,EXTRA."""
  path, _, extra = config.partition(":")
  return f"{path}:{stage},{extra}" if extra else f"{path}:{stage}"


def run_dir(workdir, variant: Variant, seed: int, stage: str) -> pathlib.Path:
  return pathlib.Path(workdir) / variant.name / f"seed{seed}" / stage


def final_run(workdir, variant: Variant, seed: int) -> pathlib.Path:
  """The run whose test results are the variant's."""
  return run_dir(workdir, variant, seed, variant.stages[-1])


def steps(workdir, variants, seeds, config: str, overrides=(), split: str = "test",
         gate_images: int = 200, python: str = sys.executable) -> list[Step]:
  """The steps of `variants` x `seeds`, seed by seed, each after the runs it starts from.

  Args:
    workdir: the ablation folder DIR.
    variants: `Variant`s; seeds: ints (--config.seed).
    config: the config file, "FILE" or "FILE:EXTRA" (EXTRA follows the stage: stage2,EXTRA).
    overrides: --config.FIELD=VALUE for every command (a variant's own come after them).
    split: the split whose eval/<split>.json holds the results (in config.eval_splits).
    gate_images: images of `split` the gate diagnostics use.
  """
  workdir = pathlib.Path(workdir).absolute()
  steps, planned = [], set()
  for seed in seeds:
    for variant in variants:
      chain = [(SHARED, "stage1")] if variant.from_stage1 else []
      chain += [(variant, stage) for stage in variant.stages]
      before = None
      for owner, stage in chain:
        folder = run_dir(workdir, owner, seed, stage)
        if folder not in planned:
          planned.add(folder)
          command = [python, "-m", "camp_jax.main", f"--config={config_arg(config, stage)}",
                     f"--workdir={folder}", *overrides, *owner.overrides,
                     f"--config.seed={seed}"]
          if before is not None:
            command.append(f"--config.init_from={before}")
          steps.append(Step(f"{owner.name}/seed{seed}/{stage}", tuple(command),
                            folder / "eval" / f"{split}.json", folder.with_suffix(".log")))
        before = folder
      if variant.gated:
        steps.append(Step(
            f"{variant.name}/seed{seed}/gates",
            (python, "-m", "camp_jax.gate_diagnostics", f"--workdir={before}",
             f"--config={config_arg(config, variant.stages[-1])}", *overrides,
             f"--split={split}", f"--images={gate_images}"),
            before / "eval" / f"{split}_gates.json", before.with_name("gates.log")))
  return steps
