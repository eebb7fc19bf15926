"""Compile-only analysis (python -m camp_jax.aot) for TPU slices and GPUs, without either.

TPU tests need libtpu (pip install -e '.[tpu]'), GPU tests the CUDA plugin
(pip install -e '.[cuda12]'); each is skipped, with that reason, where it is missing.
One tiny train-step compile per platform keeps the file near a minute.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from camp_jax import cli, memory, scoring
from camp_jax.aot import __main__ as aot_main
from camp_jax.aot import analysis, chips, hbm, programs, topology, workload
from configs import default
from tests.helpers import compiler_installed

TPU = pytest.mark.skipif(not compiler_installed("tpu"),
                         reason=f"libtpu is not installed ({topology.INSTALL['tpu']})")
GPU = pytest.mark.skipif(not compiler_installed("cuda"),
                         reason=f"the CUDA plugin is not installed ({topology.INSTALL['cuda']})")
TINY = "--config=configs/default.py:tiny"


def _cli_json(capsys, *args) -> tuple[int, dict | None, str]:
  code = cli.call(aot_main.main, list(args))
  out, err = capsys.readouterr()
  lines = out.strip().splitlines()
  return code, (json.loads(lines[-1]) if "--json" in args and lines else None), err


def test_topology_names():
  assert topology.parse("v5e:16x16").num_devices == 256
  assert topology.parse("v5p:8x8x8").num_devices == 512
  h100 = topology.parse("h100:16")
  assert (h100.num_devices, h100.shape, h100.platform) == (16, (2, 8), "cuda")
  assert [t.name for t in topology.parse_list(["v5e:2x2,h100:1", "a100-80g:8"])] == \
      ["v5e:2x2", "h100:1", "a100-80g:8"]
  for bad, says in [("v5e", "CHIP:SHAPE"), ("v9:2x2", "unknown chip"), ("h100:12", "whole"),
                    ("v5e:2xa", "shape")]:
    with pytest.raises(ValueError, match=says):
      topology.parse(bad)


def test_gpu_target_config_describes_the_chip():
  text = chips.get("h100").target_config()
  assert "core_count: 132" in text and "major: 9" in text
  assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text
  with pytest.raises(ValueError, match="TPU"):
    chips.get("v5e").target_config()


def test_missing_plugin_says_what_to_install(monkeypatch):
  monkeypatch.setattr(topology.importlib.util, "find_spec", lambda name: None)
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  with pytest.raises(RuntimeError, match=r"pip install -e '\.\[cuda12\]'"):
    topology.devices(topology.parse("h100:1"))
  with pytest.raises(RuntimeError, match=r"pip install -e '\.\[tpu\]'"):
    topology.devices(topology.parse("v5e:2x2"))


@TPU
def test_matmul_flops_match_the_count():
  """The analysis path on a program whose FLOPs are known: 2 m n k, split over 4 chips."""
  topo = topology.parse("v5e:2x2")
  mesh = jax.sharding.Mesh(np.array(topology.devices(topo)), ("x",))
  m, k, n = 1024, 512, 256
  args = (jax.ShapeDtypeStruct((m, k), jnp.float32, sharding=NamedSharding(mesh, P("x"))),
          jax.ShapeDtypeStruct((k, n), jnp.float32, sharding=NamedSharding(mesh, P())))
  program = analysis.Program("matmul", jax.jit(lambda a, b: a @ b), args, {}, {}, calls=10)
  r = analysis.analyze(program, topo, "float32")
  assert r["flops_per_chip"] == pytest.approx(2 * m * n * k / 4, rel=0.05)
  assert r["argument_bytes"] >= 4 * (m * k // 4 + k * n)
  assert r["output_bytes"] >= 4 * m * n // 4
  assert r["roofline_s"] == max(r["compute_s"], r["memory_s"]) > 0
  assert r["hours_per_epoch"] == pytest.approx(10 * r["roofline_s"] / 3600)


@TPU
def test_indivisible_mesh_is_a_clear_error():
  """What a pod would say at start, before anything compiles (config overrides cannot be
  parsed twice in one process, so the config is changed here, not on a command line)."""
  config = default.get_config("tiny")
  config.batch_size, config.mesh = 30, "4x1"
  devices = topology.devices(topology.parse("v5e:2x2"))
  with pytest.raises(ValueError, match="batch of 30 rows cannot be split over 4 image blocks"):
    programs.train_program(config, devices)
  config.mesh = "3x1"
  with pytest.raises(ValueError, match="does not cover the 4 devices"):
    programs.train_program(config, devices)


@TPU
def test_the_optimizer_state_is_split_over_the_chips():
  """ZeRO-1 (`sharding.state_sharding`): each chip keeps 1/n of every optimizer-state array
  with an axis that n divides; params, step and rng stay whole on every chip."""
  config = default.get_config("tiny")                       # Adam: two moments per param
  state = programs.train_program(config, topology.devices(topology.parse("v5e:2x2"))).args[0]
  split = lambda x: x.sharding.shard_shape(x.shape) != x.shape
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
  divisible = [any(n % 4 == 0 for n in x.shape) for x in moments]
  assert any(divisible) and [split(x) for x in moments] == divisible
  assert not any(split(x) for x in jax.tree.leaves((state.params, state.step, state.rng)))


def analytic_train_flops(d, batch, mesh_images, mesh_captions, regions, width, feature_dim,
                         word_dim, heads=4) -> float:
  """FLOPs per chip of the full CAMP's train step on the fast path with every pair
  differentiated (backward_pairs="all"), counted by hand.

  Multiply-adds, x2 for FLOPs; the backward pass of a product costs two more (x3 in all):
    per pair:    the pooling MLP on the fused rows (R + L) d^2, the score head 2 d^2, the
                 first attention's stack 3 R L d and the two messages 2 R L d, the pooling
                 heads and sums (R + L) d (H + 2), the second attention 4 R L^2 + 4 R^2 L;
    per image:   7 R d^2 + 2 R^2 d (the stack, the grams, fc_1 / fc_2 / pooling rows);
    per caption: 5 L d^2 + 2 L^2 d;   once: the two composed attention maps, 2 d^3;
    encoders:    R F d per image, the GRU's input products 2 x 3 L E d per caption and its
                 recurrent product 2 x 3 d^2, counted once (XLA counts a loop body once).
  The positives' gate statistics are a by-product of the scores: nothing to add.
  Each chip scores its (batch / images) x (batch / captions) block; it encodes, and computes
  the per-item features of, only its own rows (batch / images images and captions), and of
  those, the region FC, the features and the composed maps by 1 / captions of their columns
  (`sharding.column_split`); the GRU whole.
  """
  r, l = regions, width
  images, captions = batch // mesh_images, batch // mesh_captions
  pair = ((r + l) * d * d + 2 * d * d + 5 * r * l * d + (r + l) * d * (heads + 2)
          + 4 * r * l * l + 4 * r * r * l)
  item = images * (7 * r * d * d + 2 * r * r * d + 5 * l * d * d + 2 * l * l * d)
  encoders = images * (r * feature_dim * d / mesh_captions + 2 * 3 * l * word_dim * d
                       + 2 * 3 * d * d)
  return 2 * 3 * (images * captions * pair + (item + 2 * d ** 3) / mesh_captions + encoders)


@TPU
def test_cli_json_tiny_train_step(capsys):
  """The full CAMP's tiny step at d=256 (so the products dominate), compiled for v5e:2x2 on
  a 2x2 mesh, every pair differentiated: the JSON report, and its FLOPs against
  `analytic_train_flops` within 10%, per-item work split over "captions" (measured: 8%
  over, the rest being softmaxes, the loss and the optimizer; 16% over with the split
  undone, 2% on a 4x1 mesh)."""
  code, r, err = _cli_json(capsys, TINY, "--topology=v5e:2x2", "--json",
                           "--config.model.variant=gate_fusion", "--config.model.embed_dim=256",
                           "--config.shortlist_loss_weight=0", "--config.backward_pairs=all",
                           "--config.mesh=2x2")
  assert code == 0, err
  assert (r["topology"], r["chips"], r["device_kind"], r["batch_size"]) == \
      ("v5e:2x2", 4, "TPU v5 lite", 32)
  assert r["mesh"] == {"images": 2, "captions": 2}
  p = r["train_step"]
  assert p["flops_per_chip"] > 0 and p["hbm_bytes_per_chip"] > 0 and p["compile_s"] > 0
  assert min(p["argument_bytes"], p["output_bytes"]) > 0 and p["temp_bytes"] >= 0
  # The state is donated: its bytes alias the outputs and count once.
  assert 0 < p["alias_bytes"] <= min(p["argument_bytes"], p["output_bytes"])
  assert p["memory_per_chip_bytes"] == (p["argument_bytes"] + p["output_bytes"]
                                        - p["alias_bytes"] + p["temp_bytes"])
  assert p["fits"] and p["hbm_capacity_bytes"] == 16 << 30
  assert p["usable_bytes"] == int(memory.HEADROOM * (16 << 30))
  assert p["hours_per_epoch"] == pytest.approx(p["steps_per_epoch"] * p["roofline_s"] / 3600)
  tiny = default.get_config("tiny")
  expected = analytic_train_flops(256, 32, 2, 2, regions=tiny.data.synthetic.num_regions,
                                  width=p["caption_width"],
                                  feature_dim=tiny.data.synthetic.feature_dim,
                                  word_dim=tiny.model.word_dim)
  assert p["flops_per_chip"] == pytest.approx(expected, rel=0.10)
  # Where the bytes go: an estimate near XLA's total (measured: 0.62 of it for this step),
  # rows by off-chip bytes, named.
  assert p["traffic_estimate_bytes"] == pytest.approx(p["hbm_bytes_per_chip"], rel=0.45)
  assert 0 < p["off_chip_traffic_estimate_bytes"] <= p["traffic_estimate_bytes"]
  sizes = [row["off_chip_bytes"] for row in p["traffic_by_op"]]
  assert len(sizes) == analysis.TRAFFIC_ROWS and sizes == sorted(sizes, reverse=True)
  assert any(row["op"].startswith(("forward ", "backward ")) for row in p["traffic_by_op"])


@TPU
def test_cli_eval_tile_and_fit_chunk(capsys):
  """--program=eval: `scoring.score_tile` as `scoring.tile_plan` plans the test split;
  --fit_chunk: the tiny step fits v5e's HBM whole (chunk 0, one compile)."""
  code, r, err = _cli_json(capsys, TINY, "--topology=v5e:2x2", "--json", "--program=eval",
                           "--fit_chunk")
  assert code == 0, err
  p, wl = r["eval_tile"], workload.for_config(default.get_config("tiny"))
  plan = scoring.tile_plan(wl.eval_images, np.full(wl.eval_captions, p["caption_width"]),
                           wl.regions, p["embed_dim"], 4, scoring.default_tile_bytes("tpu"))
  assert (p["image_group"], p["groups"], p["tiles"]) == (plan.image_group, plan.groups,
                                                         plan.tiles)
  assert (p["caption_chunk"], p["caption_block"]) == (plan.chunks[0].size,
                                                      plan.chunks[0].block)
  assert p["image_group"] * p["groups"] >= wl.eval_images and p["fits"]
  assert p["memory_per_chip_bytes"] > 0 and p["flops_per_chip"] > 0
  fit = r["largest_fitting_chunk"]
  assert fit["chunk"] == 0 and [t["chunk"] for t in fit["tried"]] == [0]
  assert fit["tried"][0]["fits"] and fit["usable_bytes"] == int(memory.HEADROOM * (16 << 30))


def test_eval_program_on_cpu_devices_scores_a_planned_tile():
  """eval_program compiles for any devices; its info is the tile plan it scores."""
  devices = jax.devices("cpu")[:1]
  program = programs.eval_program(default.get_config("tiny"), devices)
  assert program.fn is scoring.score_tile and program.kwargs["block"] == \
      program.info["caption_block"]
  compiled, _ = analysis.compile_program(program)
  total = memory.program_bytes(compiled)["total"]
  assert total > 0 and program.calls == program.info["tiles"]
  img, cap = program.args[2], program.args[3]      # features: captions' once per chunk
  assert {x.shape[0] for x in jax.tree.leaves(img)} == {program.info["image_group"]}
  assert {x.shape[0] for x in jax.tree.leaves(cap)} == {program.info["caption_chunk"]}
  assert cap["t"].shape[1] == program.info["caption_width"]


def test_traffic_by_op_counts_operands_and_results_once_per_operation():
  text = """HloModule m

%fused (p0: f32[4,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  ROOT %e = f32[4,8]{1,0} exponential(%p0)
}

%body (s: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %s = (s32[], f32[4,8]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%s), index=1
  %y = f32[4,8]{1,0:S(1)} fusion(%x), calls=%fused, metadata={op_name="jit(f)/while/body/exp"}
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %y)
}

ENTRY %main (a: f32[4,8], b: f32[8,2]) -> f32[4,2] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %w = (s32[], f32[4,8]{1,0}) while(%init), condition=%cond, body=%body
  %cs = (f32[8,2]{1,0:S(1)}, f32[8,2]{1,0}, u32[]) copy-start(%b)
  %cd = f32[8,2]{1,0:S(1)} copy-done(%cs)
  %c = f32[4,2]{1,0} dot(%a, %cd), metadata={op_name="jit(f)/transpose(jvp())/mm/dot_general"}
  ROOT %d = bf16[4,2]{1,0} convert(%c)
}
"""
  total, rows = hbm.traffic_by_op(text)
  assert hbm.array_bytes("(f32[8,4]{1,0}, s32[])") == 132
  assert hbm.array_bytes("(f32[8,4]{1,0:S(1)}, s32[])", off_chip_only=True) == 4
  as_tuples = [(r["op"], r["hlo"], r["bytes"], r["off_chip_bytes"]) for r in rows]
  assert as_tuples == [                                      # the most off-chip bytes first
      ("backward mm/dot_general", "dot", 4 * (32 + 16 + 8), 4 * (32 + 8)),
      ("forward body/exp", "fusion", 4 * 64, 4 * 32),          # in the loop; result on chip
      ("(no JAX op)", "copy-start", 2 * 4 * 16, 4 * 16),       # read off chip, written on
      ("(no JAX op)", "convert", 4 * 8 + 2 * 8, 4 * 8 + 2 * 8)]
  assert total == {"bytes": sum(t[2] for t in as_tuples),
                   "off_chip_bytes": sum(t[3] for t in as_tuples)}


@GPU
@pytest.mark.parametrize("config", [TINY, "--config=configs/flickr30k.py:stage2"])
def test_train_steps_compile_for_1_and_8_h100_with_default_flags(config, capsys):
  """The Triton GEMM emitter used to refuse the pooling heads' backward (issue 16); minutes
  each where the CUDA plugin is installed."""
  if "triton" in os.environ.get("XLA_FLAGS", ""):
    pytest.skip("XLA_FLAGS changes the Triton GEMM setting; this test checks the defaults")
  code, r, err = _cli_json(capsys, config, "--topology=h100:1,h100:8", "--json")
  assert code == 0, err
  for report in r["reports"]:
    p = report["train_step"]
    assert report["device_kind"] == "NVIDIA H100 80GB HBM3" and p["fits"]
    assert 0 < p["memory_per_chip_bytes"] < p["usable_bytes"]
    assert p["hbm_capacity_bytes"] > 79e9
