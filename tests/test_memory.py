"""What fits on a device: the candidates, the headroom, and a run picking aot's chunk."""
import jax
import pytest

from camp_jax import memory, models, sharding, train
from camp_jax.aot import analysis, chunk, programs, workload
from configs import default


def test_largest_fitting_chunk_keeps_the_headroom():
  assert memory.candidates(64) == [0, 32, 16, 8, 4, 2]
  assert memory.candidates(8, most=10) == [0, 4, 2, 1]
  need = {0: 100, 32: 60, 16: 40, 8: 30}
  assert memory.largest_fitting_chunk(need.get, 200, 64)["chunk"] == 0  # no chunking first
  found = memory.largest_fitting_chunk(need.get, 50, 64)                # 40 <= 0.9 x 50 < 60
  assert found["chunk"] == 16 and [t["chunk"] for t in found["tried"]] == [0, 32, 16]
  assert memory.resolved_chunk(found) == 16
  refused = memory.largest_fitting_chunk({0: None, 32: 44}.get, 50, 64)  # a refused compile
  assert refused["chunk"] == 32 and refused["tried"][0]["memory_per_chip_bytes"] is None
  with pytest.raises(ValueError, match="no chunk fits 90% of"):
    memory.resolved_chunk(memory.largest_fitting_chunk(lambda c: 1000, 50, 64))


def test_chip_capacity_is_what_a_run_gets(monkeypatch):
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  assert memory.chip_capacity(1000, "tpu") == 1000
  assert memory.chip_capacity(1000, "cuda") == 750                  # jax's default share
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  assert memory.chip_capacity(1000, "cuda") == 500
  assert memory.fits(450, 500) and not memory.fits(451, 500)


def test_a_run_resolves_the_chunk_aot_picks(monkeypatch):
  """The same devices (one CPU device, given a capacity between the needs of no chunking and
  of chunks of 16): `train.resolve_caption_chunk` on the real step and `aot.chunk` on the
  compile-only program pick the same chunk."""
  config = default.get_config("tiny")
  config.model.variant, config.backward_pairs = "gate_fusion", "all"
  devices = jax.devices("cpu")[:1]
  need = {c: memory.compiled_total(lambda c=c: analysis.compile_program(
      programs.train_program(memory.with_chunk(config, c), devices))[0]) for c in (0, 16)}
  assert need[16] < need[0], need
  capacity = int((need[0] + need[16]) / 2 / memory.HEADROOM)
  config.train_caption_chunk = memory.AUTO
  assert chunk.largest_fitting(config, devices, capacity)["chunk"] == 16

  wl = workload.for_config(config)
  model_cfg = models.model_config(config, wl.vocab_size, wl.img_dim)
  model, mesh = models.build(model_cfg), sharding.make_mesh((1, 1), devices)
  state, tx, schedule = train.create_train_state(config, model, model_cfg, 8, mesh)
  monkeypatch.setattr(memory, "device_memory_bytes", lambda device: capacity)
  shape = {"images": (wl.batch_size, wl.regions, wl.img_dim),
           "tokens": (wl.batch_size, wl.caption_width), "lengths": (wl.batch_size,)}
  resolved = train.resolve_caption_chunk(config, model, tx, schedule, mesh, state, shape)
  assert resolved.train_caption_chunk == 16
