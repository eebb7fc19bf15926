"""The pooling kernel checks itself against XLA before first use, and a mismatch falls back."""
import functools
import logging

import jax
import ml_collections
import pytest

from camp_jax import kernel_check, models, sharding


@pytest.fixture(scope="module")
def tiny_camp():
  model = models.build(dict(vocab_size=50, word_dim=16, embed_dim=16, img_dim=16,
                            variant="gate_fusion"))
  return model, models.init_params(model, jax.random.key(0))


def _config(pooling: str):
  return ml_collections.ConfigDict({"pooling_kernel": pooling})


def test_the_interpreted_kernel_passes_its_check(tiny_camp):
  result = kernel_check.check_pooling(*tiny_camp, "interpret")
  assert result["ok"] and result["used"] == "interpret" and result["kernel"] == "interpret"
  assert 0.0 <= result["max_abs_diff"] < result["tolerance"] == 1e-4


def test_a_planted_fault_fails_the_check_and_falls_back_to_xla(tiny_camp, caplog):
  faulty = functools.partial(kernel_check.check_pooling, fault=0.01)
  with caplog.at_level(logging.WARNING):
    pooling, result = kernel_check.resolve_pooling(_config("interpret"), *tiny_camp,
                                                   sharding.make_mesh(), check=faulty)
  assert pooling == "xla" and not result["ok"] and result["used"] == "xla"
  assert result["max_abs_diff"] == pytest.approx(0.01, abs=1e-4)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, warnings
  assert "'interpret' differs from XLA by 1.0" in warnings[0] and "'xla'" in warnings[0]


def test_no_check_where_the_kernel_does_not_apply(tiny_camp):
  def refuse(*args, **kwargs):
    raise AssertionError("checked where no kernel runs")
  mesh = sharding.make_mesh()
  for choice in ("auto", "xla"):   # "auto" is XLA on the CPU
    assert kernel_check.resolve_pooling(_config(choice), *tiny_camp, mesh,
                                        check=refuse) == (choice, None)
  stage1 = models.build(dict(vocab_size=50, word_dim=16, embed_dim=16, img_dim=16,
                             variant="cross_attention"))
  assert kernel_check.resolve_pooling(_config("interpret"), stage1, tiny_camp[1], mesh,
                                      check=refuse) == ("interpret", None)
