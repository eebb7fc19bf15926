"""The training objective: one aux for every model, the fast path's statistics, caption
blocks and the hardest-pairs backward against the transcription and the all-pairs one."""
import jax
import numpy as np
import pytest

from camp_jax import data, losses, models, objective, sharding, train
from camp_jax.data import pipeline
from configs import default

TINY = dict(vocab_size=12, word_dim=4, embed_dim=8, img_dim=6)


def _batch():
  rng = np.random.default_rng(0)
  return {"images": rng.normal(size=(4, 3, 6)).astype(np.float32),
          "tokens": rng.integers(4, 12, size=(4, 5)).astype(np.int32),
          "lengths": np.array([5, 3, 4, 2], np.int32)}


@pytest.mark.parametrize("model_cfg,weight", [(dict(name="vse"), 1.0),
                                              (dict(variant="cross_attention"), 0.0),
                                              (dict(variant="gate_fusion", pool_heads=2), 1.0)])
def test_aux_has_the_same_keys_for_every_model(model_cfg, weight):
  """VSE, stage 1 and the full CAMP: the same statistics, NaN where one does not apply."""
  config = default.get_config()
  config.shortlist_loss_weight = weight
  model, mesh = models.build({**TINY, **model_cfg}), sharding.make_mesh()
  params = models.init_params(model, jax.random.key(0))
  value, aux = jax.jit(lambda p: objective.loss(model, p, _batch(), mesh, config,
                                                jax.random.key(0)))(params)
  assert sorted(aux) == sorted(objective.AUX_KEYS)
  assert np.isfinite(float(value)) and float(aux["loss"]) > 0
  assert np.isnan(float(aux["shortlist_loss"])) == (weight == 0)
  assert np.isnan(float(aux["region_gate"])) == (not model.has_gates)
  assert np.isnan(float(aux["word_gate"])) == (not model.has_gates)
  expected = float(aux["loss"]) + (weight and weight * float(aux["shortlist_loss"]))
  assert float(value) == pytest.approx(expected, rel=1e-6)


def test_fast_path_gate_statistics_equal_the_transcriptions():
  """The positives' gates come from the fast path's scores (rematerialised blocks
  included) and equal `explain_pair`'s, which the reference path still uses."""
  config = default.get_config()
  config.model.variant, config.shortlist_loss_weight = "gate_fusion", 0.0
  cfg = dict(name="camp", **TINY, pool_heads=2)
  model, mesh = models.build(cfg), sharding.make_mesh()
  params = models.init_params(model, jax.random.key(1))
  batch = _batch()
  aux = {}
  for fast, chunk in ((False, 0), (True, 0), (True, 2)):
    config.fast_scoring, config.train_caption_chunk = fast, chunk
    loss = jax.jit(lambda p, b: objective.loss(model, p, b, mesh, config, jax.random.key(0)))
    _, aux[fast, chunk] = loss(params, batch)
  for key in ("loss", "region_gate", "word_gate"):
    ref = float(aux[False, 0][key])
    assert 0.0 < ref and (key == "loss" or ref < 1.0)
    for got in (aux[True, 0], aux[True, 2]):
      assert float(got[key]) == pytest.approx(ref, abs=1e-6), key


def test_caption_chunked_loss_matches_whole_batch_scores_and_gradients():
  model = models.build(TINY)
  batch = _batch()
  images, tokens, lengths = batch["images"], batch["tokens"], batch["lengths"]
  params = models.init_params(model, jax.random.key(0))
  img_emb = model.apply({"params": params}, images, method="encode_images")
  cap_emb, cap_mask = model.apply({"params": params}, tokens, lengths, method="encode_captions")

  def loss(p, chunk):
    fn = lambda img, cap: model.apply({"params": p}, img, cap["emb"], cap["mask"],
                                      method="fast_score_matrix")
    return losses.hardest_negative_bce(objective.caption_chunked(
        fn, img_emb, {"emb": cap_emb, "mask": cap_mask}, chunk))

  whole, grads_whole = jax.value_and_grad(loss)(params, 0)
  chunked, grads_chunked = jax.value_and_grad(loss)(params, 2)
  np.testing.assert_allclose(chunked, whole, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads_chunked, grads_whole)
  with pytest.raises(ValueError, match="does not divide"):
    loss(params, 3)


@pytest.mark.parametrize("variant,loss", [("gate_fusion", "hardest_negative_bce"),
                                          ("cross_attention", "max_violation_hinge")])
def test_backward_through_the_hardest_pairs_only_gives_the_same_loss_and_gradients(
    tiny_data_dir, variant, loss):
  """backward_pairs="hardest" (3B pairs differentiated) against "all" (every pair)."""
  config = default.get_config("tiny")
  config.data.dir, config.model.variant, config.loss = str(tiny_data_dir), variant, loss
  vocab, split = data.load_vocab(config.data), data.load_split(config.data, "train")
  cfg = models.model_config(config, len(vocab), split.feature_dim)
  model, mesh = models.build(cfg), sharding.make_mesh()
  with pipeline.train_batches(split, vocab, global_batch_size=config.batch_size, seed=0) as it:
    batch = sharding.global_batch(next(it), mesh, config.batch_size)
  params = train.create_train_state(config, model, cfg, 8, mesh)[0].params
  if variant == "cross_attention":  # Stage-1 cosines would leave few hinge terms active.
    params = jax.tree.map(lambda p: 3.0 * p, params)

  def value_and_grad(backward_pairs, pooling="auto"):
    c = config.copy_and_resolve_references()
    c.backward_pairs, c.pooling_kernel = backward_pairs, pooling
    fn = lambda p: objective.loss(model, p, batch, mesh, c, jax.random.key(0))
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

  (loss_all, aux_all), grads_all = value_and_grad("all")
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_all))
  assert scale > 0
  # With the full model, the all-pairs pass also runs through the Pallas pooling kernel
  # (interpreted): it is not differentiated, so gradients must not change either.
  for pooling in ["xla"] + (["interpret"] if variant == "gate_fusion" else []):
    (loss_hard, aux_hard), grads_hard = value_and_grad("hardest", pooling)
    np.testing.assert_allclose(loss_hard, loss_all, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), aux_hard, aux_all)
    for path, g in jax.tree_util.tree_leaves_with_path(grads_all):
      np.testing.assert_allclose(_leaf(grads_hard, path), g, rtol=1e-5, atol=1e-6 * scale,
                                 err_msg=f"{pooling} {jax.tree_util.keystr(path)}")


def _leaf(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


