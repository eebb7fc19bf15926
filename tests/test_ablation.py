"""The ablation command: its plan, its reports, and one small resumable run end to end."""
import io
import json
import shutil
import sys

import pytest

from camp_jax import ablation
from camp_jax.ablation import plan
from camp_jax.ablation import report
from tests import helpers


def _by_name(steps):
  return {s.name: s for s in steps}


def _flag(step, name):
  values = [a.split("=", 1)[1] for a in step.command if a.startswith(f"--{name}=")]
  return values[-1] if values else None


def test_plan_shares_stage1_and_chains_the_stages(tmp_path):
  steps = plan.steps(tmp_path, ablation.VARIANTS, (0, 1), "configs/flickr30k.py",
                        ("--config.data.dir=feats",), python="python")
  # Per seed: one shared stage-1 run, VSE++, 4 CAMP variants x 2 stages, 3 gate steps.
  assert len(steps) == 2 * (1 + 1 + 8 + 3)
  steps = _by_name(steps)
  shared = tmp_path.absolute() / "stage1" / "seed1" / "stage1"
  for variant in ("camp", "camp_open_gates", "camp_cosine_head", "camp_hinge"):
    stage2, stage3 = steps[f"{variant}/seed1/stage2"], steps[f"{variant}/seed1/stage3"]
    assert _flag(stage2, "config.init_from") == str(shared)
    assert _flag(stage3, "config.init_from") == str(tmp_path.absolute() / variant / "seed1"
                                                      / "stage2")
    assert _flag(stage3, "config") == "configs/flickr30k.py:stage3"
    assert _flag(stage3, "config.seed") == "1"
    assert stage3.done == tmp_path.absolute() / variant / "seed1" / "stage3" / "eval" / "test.json"
  assert _flag(steps["camp_open_gates/seed0/stage3"], "config.model.gate") == "open"
  assert _flag(steps["camp_cosine_head/seed0/stage2"], "config.model.head") == "cosine"
  assert _flag(steps["camp_hinge/seed0/stage2"], "config.loss") == "max_violation_hinge"
  vse = steps["vse/seed0/stage1"]
  assert _flag(vse, "config.model.name") == "vse" and _flag(vse, "config.init_from") is None
  # The user's overrides come first, so a variant's own switch always wins.
  cmd = steps["camp_hinge/seed0/stage2"].command
  assert cmd.index("--config.data.dir=feats") < cmd.index("--config.loss=max_violation_hinge")
  assert {n.rsplit("/", 1)[0] for n in steps if n.endswith("/gates")} == {
      f"{v}/seed{s}" for v in ("camp", "camp_cosine_head", "camp_hinge") for s in (0, 1)}
  assert plan.config_arg("configs/default.py:tiny", "stage2") == "configs/default.py:stage2,tiny"
  with pytest.raises(ValueError, match="unknown.*'nope'"):
    ablation.variants_named(["camp", "nope"])


def _fake_result(workdir, variant, seed, i2t, t2i, gates=False):
  run = plan.final_run(workdir, plan.BY_NAME[variant], seed) / "eval"
  run.mkdir(parents=True)
  (run / "test.json").write_text(json.dumps({"i2t_r1": i2t, "t2i_r1": t2i, "rsum": i2t + t2i}))
  if gates:
    summary = {g: {k: 0.5 for k in ("relevant", "irrelevant", "matched", "hardest_negative")}
               for g in ("region_gate", "word_gate")}
    (run / "test_gates.json").write_text(json.dumps(summary))


def test_report_mean_std_tables_and_plot(tmp_path):
  for seed, (a, b) in enumerate([(50.0, 40.0), (54.0, 44.0)]):
    _fake_result(tmp_path, "stage1", seed, a, b)
    _fake_result(tmp_path, "camp", seed, a + 2, b + 2, gates=True)
  variants = ablation.variants_named(["stage1", "camp", "vse"])
  results = report.collect(tmp_path, variants, (0, 1))
  assert list(results) == ["stage1", "camp"]                       # vse: nothing finished
  assert results["stage1"]["mean"]["i2t_r1"] == 52.0
  assert results["stage1"]["std"]["i2t_r1"] == pytest.approx(2.0 ** 1.5)   # ddof=1
  assert results["camp"]["gates"]["mean"]["region_gate/relevant"] == 0.5
  meta = dict(config="c.py", seeds=[0, 1], split="test", gate_images=200)
  paths = report.write_reports(tmp_path, results, meta)
  assert json.loads(paths[0].read_text())["variants"]["camp"]["seeds"]["1"]["rsum"] == 102.0
  md = paths[1].read_text()
  assert "| CAMP (3 stages) | 54.0 ± 2.8 | 44.0 ± 2.8 | 98.0 ± 5.7 | 2 |" in md
  assert "## Gates" in md and paths[2].stat().st_size > 10_000


def test_importing_the_packages_defines_no_flag(tmp_path):
  program = ("from absl import flags; import jax, ml_collections, orbax.checkpoint; "
             "before = set(flags.FLAGS); "
             "import camp_jax.ablation, camp_jax.gate_diagnostics; "
             "print(sorted(set(flags.FLAGS) - before))")
  proc = helpers.run([sys.executable, "-c", program], tmp_path / "logs" / "import", timeout=300)
  assert proc.stdout.strip() == "[]"


def test_ablation_runs_resumes_and_reports(tmp_path, tiny_run, tiny_data_dir):
  """Stage 1 + CAMP with the cosine head on the tiny config, one seed; the stage-1 run is
  the session's tiny run (seed 0), so the command starts by skipping it."""
  workdir = tmp_path / "ablation"
  shutil.copytree(tiny_run[0], workdir / "stage1" / "seed0" / "stage1")
  args = ["--config=configs/default.py:tiny", "--seeds=1", "--variants=stage1,camp_cosine_head",
          f"--override=--config.data.dir={tiny_data_dir}", "--override=--config.num_epochs=1",
          "--gate_images=16"]
  proc = helpers.run([sys.executable, "-m", "camp_jax.ablation", f"--workdir={workdir}", *args],
                     tmp_path / "logs" / "ablation", timeout=600)
  assert "1 of 4 steps already finished (skipped)" in proc.stdout
  assert "[3/3] camp_cosine_head/seed0/gates: done" in proc.stdout
  log = (workdir / "camp_cosine_head" / "seed0" / "stage2.log").read_text()
  assert "--config.model.head=cosine" in log.splitlines()[0]
  result = json.loads((workdir / "ablation.json").read_text())
  camp = result["variants"]["camp_cosine_head"]
  assert set(camp["seeds"]) == {"0"} and camp["std"]["rsum"] == 0.0
  gates = camp["gates"]["mean"]
  assert all(0.0 < gates[f"{g}_gate/{k}"] < 1.0 for g in ("region", "word") for k in (
      "relevant", "irrelevant", "matched", "hardest_negative"))
  assert (workdir / "ablation.png").is_file()
  assert "## Gates" in (workdir / "ablation.md").read_text()
  # Everything is finished now: a second call trains nothing and writes the same table.
  out = io.StringIO()
  again = ablation.run(workdir, config="configs/default.py:tiny", seeds=(0,),
                       variants=("stage1", "camp_cosine_head"),
                       overrides=(f"--config.data.dir={tiny_data_dir}",), gate_images=16, out=out)
  assert "4 of 4 steps already finished" in out.getvalue()
  assert again["variants"]["camp_cosine_head"]["mean"] == camp["mean"]
