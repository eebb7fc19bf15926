"""Unit tests of the model pieces: masking, GRU directions, losses and their gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camp_jax import losses, models
from camp_jax.models.encoders import GRU, reverse_within_length


TINY = dict(vocab_size=20, word_dim=6, embed_dim=8, img_dim=10)


def _init(model, n=3, regions=5, words=7):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(n, regions, TINY["img_dim"])).astype(np.float32)
  tokens = rng.integers(4, TINY["vocab_size"], size=(n, words)).astype(np.int32)
  lengths = np.array([words, 4, 2][:n], np.int32)
  tokens[np.arange(words)[None] >= lengths[:, None]] = 0
  params = model.init(jax.random.key(1), images, tokens, lengths)["params"]
  return params, images, tokens, lengths


@pytest.mark.parametrize("variant", ["gate_fusion", "cross_attention"])
def test_padding_never_changes_a_real_score(variant):
  model = models.build({**TINY, "variant": variant})
  params, images, tokens, lengths = _init(model)
  scores = model.apply({"params": params}, images, tokens, lengths)
  # More padding slots, filled with garbage ids: the real words and scores must not move.
  padded = np.concatenate([tokens, np.full((len(tokens), 5), 13, np.int32)], axis=1)
  padded[np.arange(padded.shape[1])[None] >= lengths[:, None]] = 13
  scores_padded = model.apply({"params": params}, images, padded, lengths)
  np.testing.assert_allclose(scores_padded, scores, atol=1e-6)
  # Each caption scored alone on its real length gives the same score.
  for j, length in enumerate(lengths):
    alone = model.apply({"params": params}, images, tokens[j:j + 1, :length], lengths[j:j + 1])
    np.testing.assert_allclose(alone[:, 0], scores[:, j], atol=1e-6)


def test_stage1_original_padding_option_changes_only_padded_average():
  base = {**TINY, "variant": "cross_attention"}
  params, images, tokens, lengths = _init(models.build(base))
  real = models.build(base).apply({"params": params}, images, tokens, lengths)
  slots = models.build({**base, "pad_words_to": 50}).apply({"params": params}, images, tokens,
                                                           lengths)
  # The 50-slot average also counts padded slots (the fixtures pin its exact value); it is a
  # slightly different function, close to the real-length one.
  diff = np.abs(np.asarray(real) - np.asarray(slots))
  assert 1e-7 < diff.max() < 1e-2


def test_gru_backward_direction_starts_at_last_real_token():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 3)), jnp.float32)
  lengths = jnp.array([6, 3])
  np.testing.assert_array_equal(reverse_within_length(x, lengths)[1, :3], x[1, 2::-1])
  np.testing.assert_array_equal(reverse_within_length(x, lengths)[1, 3:], x[1, 3:])
  twice = reverse_within_length(reverse_within_length(x, lengths), lengths)
  np.testing.assert_array_equal(twice, x)

  model = models.build({**TINY, "word_dim": 3})
  tokens = np.array([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0]], np.int32)
  params, *_ = _init(model)
  emb, mask = model.apply({"params": params}, tokens, lengths, method="encode_captions")
  short, _ = model.apply({"params": params}, tokens[1:, :3], lengths[1:], method="encode_captions")
  np.testing.assert_allclose(emb[1, :3], short[0], atol=1e-6)  # the padding is never read
  assert not np.asarray(emb[1, 3:]).any() and not np.asarray(mask[1, 3:]).any()


def test_gru_matches_pytorch_equations():
  h_dim, rng = 4, np.random.default_rng(3)
  x = rng.normal(size=(1, 3, 2)).astype(np.float32)
  gru = GRU(h_dim)
  p = gru.init(jax.random.key(0), x)["params"]
  w_i, b_i, w_h, b_h = (np.asarray(a) for a in (p["input"]["kernel"], p["input"]["bias"],
                                                 p["hidden_kernel"], p["hidden_bias"]))
  sig = lambda a: 1 / (1 + np.exp(-a))
  h, expected = np.zeros(h_dim), []
  for t in range(3):
    gi, gh = x[0, t] @ w_i + b_i, h @ w_h + b_h
    r, z = sig(gi[:4] + gh[:4]), sig(gi[4:8] + gh[4:8])
    n = np.tanh(gi[8:] + r * gh[8:])
    h = (1 - z) * n + z * h
    expected.append(h)
  np.testing.assert_allclose(gru.apply({"params": p}, x)[0], np.stack(expected), atol=1e-6)


def _finite_difference_check(loss_fn, scores, eps=1e-3):
  grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(scores)))
  for idx in np.ndindex(scores.shape):
    step = np.zeros_like(scores)
    step[idx] = eps
    numeric = (float(loss_fn(scores + step)) - float(loss_fn(scores - step))) / (2 * eps)
    np.testing.assert_allclose(grad[idx], numeric, rtol=2e-2, atol=2e-3)


def test_hardest_negative_bce_value_and_gradient():
  s = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.35, 0.05, 0.7]], np.float32)
  expected = -(2 * np.log(np.diag(s)).sum()
               + np.log(1 - np.array([0.4, 0.3, 0.35])).sum()
               + np.log(1 - np.array([0.35, 0.2, 0.4])).sum())
  np.testing.assert_allclose(losses.hardest_negative_bce(s), expected, rtol=1e-6)
  _finite_difference_check(losses.hardest_negative_bce, s)


def test_max_violation_hinge_value_and_gradient():
  s = np.array([[0.9, 0.75, 0.1], [0.2, 0.5, 0.45], [0.3, 0.1, 0.6]], np.float32)
  # Hardest caption per image: 0.75, 0.45, 0.3; hardest image per caption: 0.3, 0.75, 0.45.
  expected = (max(0, .2 + .75 - .9) + max(0, .2 + .45 - .5) + max(0, .2 + .3 - .6)
              + max(0, .2 + .3 - .9) + max(0, .2 + .75 - .5) + max(0, .2 + .45 - .6))
  np.testing.assert_allclose(losses.max_violation_hinge(s), expected, rtol=1e-6)
  _finite_difference_check(losses.max_violation_hinge, s)


def test_build_rejects_unknown_fields():
  with pytest.raises(ValueError, match="unknown fields"):
    models.build({**TINY, "embed_size": 3})
  with pytest.raises(ValueError, match="variant"):
    model = models.build({**TINY, "variant": "nope"})
    _init(model)


@pytest.mark.parametrize("gate,head", [("adaptive", "mlp"), ("open", "mlp"),
                                       ("adaptive", "cosine"), ("open", "cosine")])
def test_ablation_variants_fast_path_equals_transcription(gate, head):
  """model.gate / model.head: the hoisted path and explain_pair agree with score_matrix."""
  model = models.build({**TINY, "gate": gate, "head": head})
  params, images, tokens, lengths = _init(model)
  # Same parameter tree for every gate and head (checkpoints, init_from, trainable patterns).
  default_params, *_ = _init(models.build(TINY))
  assert jax.tree.structure(params) == jax.tree.structure(default_params)
  params = jax.tree.map(lambda p: 3.0 * p, params)                # scores that spread out
  apply = functools.partial(model.apply, {"params": params})
  img_emb = apply(images, method="encode_images")
  cap_emb, cap_mask = apply(tokens, lengths, method="encode_captions")
  ref = apply(img_emb, cap_emb, cap_mask, method="score_matrix")
  assert float(np.std(ref)) > 1e-2
  img = apply(img_emb, method="image_features")
  fast, gates = apply(img, apply(cap_emb, cap_mask, method="caption_features"), True,
                      method="pair_scores")
  np.testing.assert_allclose(fast, ref, atol=1e-5, rtol=0)
  explained = apply(img_emb[1], cap_emb[2], cap_mask[2], method="explain_pair")
  np.testing.assert_allclose(explained["score"], ref[1, 2], atol=1e-6)
  for key in ("region_gate", "word_gate"):
    np.testing.assert_allclose(gates[key][1, 2], explained[key], atol=1e-5)
    if gate == "open":
      np.testing.assert_array_equal(gates[key], 1.0)
      np.testing.assert_array_equal(explained[key], 1.0)
  if head == "cosine":
    assert -1.0 <= float(np.min(ref)) and float(np.max(ref)) <= 1.0


def test_ablation_switches_are_checked():
  with pytest.raises(ValueError, match=r"model.gate is 'shut'"):
    _init(models.build({**TINY, "gate": "shut"}))
  with pytest.raises(ValueError, match=r"model.head='cosine' applies to the full model only"):
    _init(models.build({**TINY, "variant": "cross_attention", "head": "cosine"}))
  assert models.GATES[0] == "adaptive" and models.HEADS[0] == "mlp"   # the release's
