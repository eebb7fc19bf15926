"""The Pallas pooling kernel: the XLA chain's scores in Pallas's interpreter, and a TPU compile.

TPU compiles need libtpu (pip install -e '.[tpu]'); that test is skipped where it is missing.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camp_jax import models, scoring, sharding
from camp_jax.aot import topology
from camp_jax.models import pooling_kernel
from tests import helpers

D, R = 128, 36


def _model_and_features(dtype="float32", images=3, lengths=(12, 7, 3, 12, 9, 1), **variant):
  cfg = dict(vocab_size=50, word_dim=16, embed_dim=D, img_dim=64, variant="gate_fusion",
             dtype=dtype, **variant)
  model = models.build(cfg)
  params = model.init(jax.random.key(0), np.zeros((1, R, 64), np.float32),
                      np.ones((1, 2), np.int32), np.array([2], np.int32))["params"]
  params = jax.tree.map(lambda p: 3.0 * p, params)       # Scores that spread out.
  rng = np.random.default_rng(0)
  mask = np.arange(max(lengths))[None] < np.array(lengths)[:, None]
  cap_emb = rng.normal(size=mask.shape + (D,)).astype(np.float32) * mask[..., None]
  img_emb = rng.normal(size=(images, R, D)).astype(np.float32)
  return model, params, img_emb, cap_emb, mask


@pytest.mark.parametrize("dtype,variant", [("float32", {}), ("bfloat16", {}),
                                           ("float32", dict(gate="open", head="cosine"))])
def test_kernel_gives_the_xla_chains_scores_and_gates(dtype, variant):
  """Also for the ablation's switches (open gates: a column of ones; cosine head)."""
  model, params, img_emb, cap_emb, mask = _model_and_features(dtype, **variant)
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
  img = apply(img_emb, method="image_features")
  cap = apply(cap_emb, mask, method="caption_features")
  want, want_gates = apply(img, cap, True, "xla", method="pair_scores")
  got, got_gates = apply(img, cap, True, "interpret", method="pair_scores")
  assert float(np.std(want)) > 0.01
  np.testing.assert_allclose(got, want, atol=1e-6 if dtype == "float32" else 2e-3)
  jax.tree.map(np.testing.assert_array_equal, got_gates, want_gates)


def test_other_blocks_divide_and_cover_every_pair():
  assert [pooling_kernel.other_block(n) for n in (1, 6, 8, 12, 13, 128)] == [1, 6, 8, 6, 1, 8]
  rng = np.random.default_rng(1)
  n_own, n_other, n, k, d = 2, 12, 5, 4, 128
  mix = np.concatenate([rng.random((n_own, n_other, n, k)), rng.random((n_own, n_other, n, 2)),
                        np.ones((n_own, n_other, n, 1))], -1).astype(np.float32)
  own = tuple(rng.normal(size=(n_own, n, d)).astype(np.float32) for _ in range(3))
  other = rng.normal(size=(n_other, k, d)).astype(np.float32)
  head = {"hidden": {"kernel": rng.normal(size=(d, d)).astype(np.float32) / 10},
          "heads": {"kernel": rng.normal(size=(d, 4)).astype(np.float32),
                    "bias": rng.normal(size=4).astype(np.float32)}}
  blocks = [pooling_kernel.pooled(mix, own, other, head, interpret=True, block=b)
            for b in (1, 4, 12)]
  for out in blocks[1:]:
    np.testing.assert_allclose(out, blocks[0], rtol=1e-6, atol=1e-6)
  assert blocks[0].shape == (n_own, n_other, d) and np.all(np.isfinite(blocks[0]))


def test_score_matrix_with_the_kernel_equals_xla():
  model, params, img_emb, cap_emb, mask = _model_and_features(images=5)
  run = lambda pooling: scoring.score_matrix(model, params, img_emb, cap_emb, mask,
                                             progress=None, pooling=pooling)
  np.testing.assert_allclose(run("interpret"), run("xla"), atol=1e-6)
  with pytest.raises(ValueError, match="pooling='mosaic'"):
    run("mosaic")


@pytest.mark.skipif(not helpers.compiler_installed("tpu"),
                    reason=f"libtpu is not installed ({topology.INSTALL['tpu']})")
def test_kernel_compiles_for_tpu_and_reports_its_cost():
  """`pair_scores` with pooling="auto" on a TPU mesh lowers the kernel, and Mosaic compiles it."""
  model, params, img_emb, cap_emb, mask = _model_and_features(images=8, lengths=(12,) * 16)
  devices = topology.devices(topology.parse("v5e:2x2"))
  mesh = sharding.make_mesh((1, 1), devices[:1])
  assert scoring.pooling_for(mesh) == "pallas"
  on_tpu = jax.sharding.SingleDeviceSharding(devices[0])
  spec = lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype, sharding=on_tpu)

  def scores(params, img_emb, cap_emb, mask, pooling):
    apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
    return apply(apply(img_emb, method="image_features"),
                 apply(cap_emb, mask, method="caption_features"), False, pooling,
                 method="pair_scores")

  args = jax.tree.map(spec, (params, img_emb, cap_emb, mask))
  compiled = {p: jax.jit(scores, static_argnums=4).lower(*args, p).compile()
              for p in ("xla", "pallas")}
  assert "tpu_custom_call" in compiled["pallas"].as_text()
  cost = {p: c.cost_analysis() for p, c in compiled.items()}
  cost = {p: c[0] if isinstance(c, list) else c for p, c in cost.items()}
  # The kernel declares its FLOPs: the program's count stays that of the XLA chain's.
  assert cost["pallas"]["flops"] == pytest.approx(cost["xla"]["flops"], rel=0.2)
