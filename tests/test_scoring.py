"""The fast scoring path computes the reference's scores and gradients."""
import functools
import os
import pathlib
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camp_jax import batching, losses, models, scoring
from tests import helpers

TINY = dict(vocab_size=30, word_dim=6, embed_dim=16, img_dim=10)
REGIONS, WORDS = 5, 20
CASES = {"gate_fusion": dict(variant="gate_fusion"),
         "cross_attention": dict(variant="cross_attention"),
         "stage1_padded": dict(variant="cross_attention", pad_words_to=24)}


def _setup(case, n_img=7, n_cap=13, seed=0, dtype="float32"):
  """A model with scaled-up random params (scores spread out) and its embeddings."""
  model = models.build({**TINY, **CASES[case], "dtype": dtype})
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n_img, REGIONS, TINY["img_dim"])).astype(np.float32)
  lengths = rng.integers(1, WORDS + 1, size=n_cap).astype(np.int32)
  lengths[0] = WORDS                                                # one full-width caption
  tokens = rng.integers(4, TINY["vocab_size"], size=(n_cap, WORDS)).astype(np.int32)
  params = models.init_params(model, jax.random.key(seed))
  params = jax.tree.map(lambda x: 3.0 * x, params)
  apply = lambda *a, method: model.apply({"params": params}, *a, method=method)
  img_emb = np.asarray(apply(images, method="encode_images"))
  cap_emb, cap_mask = (np.asarray(a) for a in apply(tokens, lengths, method="encode_captions"))
  return model, params, img_emb, cap_emb, cap_mask


@functools.partial(jax.jit, static_argnums=0)
def _reference(model, params, img_emb, cap_emb, cap_mask):
  return model.apply({"params": params}, img_emb, cap_emb, cap_mask, method="score_matrix")


@functools.partial(jax.jit, static_argnums=0)
def _fast(model, params, img_emb, cap_emb, cap_mask):
  return model.apply({"params": params}, img_emb, cap_emb, cap_mask, method="fast_score_matrix")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_score_matrix_matches_reference(case):
  model, params, img_emb, cap_emb, cap_mask = _setup(case)
  ref = _reference(model, params, img_emb, cap_emb, cap_mask)
  assert ref.std() > 1e-2                                           # scores are spread out
  fast = _fast(model, params, img_emb, cap_emb, cap_mask)
  np.testing.assert_allclose(fast, ref, atol=1e-5, rtol=0)
  # Trimming the word axis to the longest real caption changes nothing, padding included.
  width = int(cap_mask.sum(1).max())
  trimmed = _fast(model, params, img_emb[:2], cap_emb[1:, :width],
                                      cap_mask[1:, :width])
  np.testing.assert_allclose(trimmed, ref[:2, 1:], atol=1e-5, rtol=0)


def test_the_driver_computes_each_items_features_once(monkeypatch):
  """Caption features once per chunk and image features once per group, not once per tile
  (group x chunk): what matters on COCO 5K, where every chunk meets many image groups."""
  model, params, img_emb, cap_emb, cap_mask = _setup("gate_fusion")
  calls = {}

  def counted(name):
    fn = getattr(scoring, name)
    def wrapper(*args, **kwargs):
      calls[name] = calls.get(name, 0) + 1
      return fn(*args, **kwargs)
    monkeypatch.setattr(scoring, name, wrapper)
  for name in ("caption_features_gathered", "image_features_split", "score_tile"):
    counted(name)
  got = scoring.score_matrix(model, params, img_emb, cap_emb, cap_mask, buckets=(8,),
                             max_tile_bytes=7 * scoring.pair_bytes(REGIONS, WORDS, 16),
                             image_tile=3, caption_chunk=3, progress=None)
  np.testing.assert_allclose(got, _reference(model, params, img_emb, cap_emb, cap_mask),
                             atol=1e-5, rtol=0)
  groups, chunks = calls["image_features_split"], calls["caption_features_gathered"]
  assert groups > 1 and chunks > 1 and calls["score_tile"] == groups * chunks


@pytest.mark.parametrize("case", ["gate_fusion", "stage1_padded"])
def test_driver_buckets_odd_tiles_single_caption(case):
  model, params, img_emb, cap_emb, cap_mask = _setup(case)
  ref = np.asarray(_reference(model, params, img_emb, cap_emb, cap_mask))
  before = scoring.score_tile._cache_size()
  buckets = (8,)                                                    # + the full width, 20
  seen = []
  got = scoring.score_matrix(model, params, img_emb, cap_emb, cap_mask, buckets=buckets,
                             max_tile_bytes=7 * scoring.pair_bytes(REGIONS, WORDS, 16),
                             image_tile=3, caption_chunk=3, progress_every_s=0.0,
                             progress=lambda *a: seen.append(a))
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
  assert seen and seen[-1][1] == ref.size
  widths = set(scoring.bucket_widths_for(cap_mask.sum(1), WORDS, buckets))
  assert scoring.score_tile._cache_size() - before <= len(widths)  # one compile per width
  one = scoring.score_matrix(model, params, img_emb, cap_emb[3:4], cap_mask[3:4], progress=None)
  np.testing.assert_allclose(one, ref[:, 3:4], atol=1e-5, rtol=0)
  # Embeddings left on the devices, rows padded (as evaluation encodes a split).
  on_devices = [jax.device_put(batching.pad_rows(x, 16)) for x in (img_emb, cap_emb, cap_mask)]
  got = scoring.score_matrix(model, params, *on_devices, buckets=buckets, image_tile=3,
                             caption_chunk=3, progress=None, num_images=len(img_emb),
                             num_captions=len(cap_emb))
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_tile_plan_covers_every_caption_once_within_the_tile_bytes():
  widths = np.array([8] * 5 + [20] * 9 + [12] * 2)
  most = 7 * scoring.pair_bytes(REGIONS, 20, 16)
  plan = scoring.tile_plan(11, widths, REGIONS, 16, n_dev=2, max_tile_bytes=most,
                           image_tile=3, caption_chunk=4)
  assert plan.image_group == 2 * plan.images_per_device <= 2 * 3
  assert plan.groups * plan.image_group >= 11 > (plan.groups - 1) * plan.image_group
  assert plan.tiles == plan.groups * len(plan.chunks)
  columns = np.concatenate([c.columns for c in plan.chunks])
  np.testing.assert_array_equal(np.sort(columns), np.arange(len(widths)))
  for c in plan.chunks:
    assert set(widths[c.columns]) == {c.width} and len(c.columns) <= c.size <= 4
    assert c.size % c.block == 0
    assert plan.images_per_device * c.block * scoring.pair_bytes(REGIONS, c.width, 16) <= most


def test_bfloat16_close_to_float32():
  model, params, img_emb, cap_emb, cap_mask = _setup("gate_fusion")
  f32 = _fast(model, params, img_emb, cap_emb, cap_mask)
  bf16_model = models.build({**TINY, **CASES["gate_fusion"], "dtype": "bfloat16"})
  bf16 = _fast(bf16_model, params, img_emb, cap_emb, cap_mask)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, f32, atol=3e-2, rtol=0)


@pytest.mark.parametrize("case", ["gate_fusion", "stage1_padded"])
def test_loss_gradients_match_reference(case):
  model, params, img_emb, cap_emb, cap_mask = _setup(case, n_img=6, n_cap=6)

  # Stage-1 scores are cosines; map them into (0, 1) for the BCE loss.
  squash = (lambda s: 0.5 + 0.4 * s) if case == "stage1_padded" else (lambda s: s)

  def loss(score_fn, params, img_emb, cap_emb):
    return losses.hardest_negative_bce(squash(score_fn(params, img_emb, cap_emb, cap_mask)))

  ref_fn = lambda p, i, c, m: model.apply({"params": p}, i, c, m, method="score_matrix")
  fast_fn = lambda p, i, c, m: model.apply({"params": p}, i, c, m, method="fast_score_matrix")
  grad = lambda fn: jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2)))(
      params, img_emb, cap_emb)
  ref, fast = grad(ref_fn), grad(fast_fn)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref))
  for path, (r, f) in zip(jax.tree_util.tree_leaves_with_path(ref),
                          zip(jax.tree.leaves(ref), jax.tree.leaves(fast))):
    np.testing.assert_allclose(f, r, atol=1e-5 * scale, rtol=1e-4, err_msg=str(path[0]))


def test_eight_simulated_devices(tmp_path):
  code = textwrap.dedent(f"""
      import jax, numpy as np
      assert jax.device_count() == 8, jax.devices()
      sys_path = {str(pathlib.Path(__file__).parent)!r}
      import sys; sys.path.insert(0, sys_path)
      from test_scoring import _setup, _reference
      from camp_jax import scoring
      mesh_2d = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
      for case, mesh in (("gate_fusion", mesh_2d), ("stage1_padded", None)):
        model, params, img_emb, cap_emb, cap_mask = _setup(case, n_img=11, n_cap=9)
        ref = _reference(model, params, img_emb, cap_emb, cap_mask)
        got = scoring.score_matrix(model, params, img_emb, cap_emb, cap_mask, buckets=(8,),
                                   image_tile=1, caption_chunk=4, mesh=mesh, progress=None)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
      print("ok")
      """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = helpers.run([sys.executable, "-c", code], tmp_path / "logs" / "eight_devices", env=env,
                     timeout=300)
  assert "ok" in proc.stdout, proc.failure("the 8-device check printed no 'ok'")
