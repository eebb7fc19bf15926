"""Gate diagnostics: the groups of gate values, hardest negatives, the summary and the figure.

The command itself runs in tests/test_ablation.py (the ablation's gate step).
"""
import jax
import ml_collections
import numpy as np
import pytest

from camp_jax import data, gate_diagnostics, models
from camp_jax.data import tokenizer

IMAGES = 8


def test_hardest_negative_pairs_skip_each_items_own():
  scores = np.array([[0.9, 0.8, 0.7, 0.1],     # captions 0, 1 are image 0's
                     [0.95, 0.2, 0.3, 0.6]])   # captions 2, 3 are image 1's
  images, captions = gate_diagnostics.hardest_negative_pairs(scores, captions_per_image=2)
  # Per image its best wrong caption, then per caption its best wrong image.
  np.testing.assert_array_equal(images, [0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(captions, [2, 0, 0, 1, 2, 3])


@pytest.fixture(scope="module")
def tiny_inputs(tiny_data_dir):
  config = ml_collections.ConfigDict(dict(kind="precomp", dir=str(tiny_data_dir), vocab=""))
  split = data.load_split(config, "test").slice_images(0, IMAGES)
  vocab = data.load_vocab(config)
  tokens, lengths = tokenizer.encode_all(split.captions, vocab)
  region, word = data.load_relevance(config, "test")
  relevance = (region[:IMAGES], word[:5 * IMAGES])
  model_cfg = dict(vocab_size=len(vocab), img_dim=split.feature_dim, embed_dim=16, word_dim=16,
                   variant="gate_fusion")
  return model_cfg, np.asarray(split.images), tokens, lengths, relevance


@pytest.mark.parametrize("gate", ["adaptive", "open"])
def test_gate_values_by_group(tiny_inputs, gate):
  model_cfg, images, tokens, lengths, relevance = tiny_inputs
  model_cfg = dict(model_cfg, gate=gate)
  params = models.init_params(models.build(model_cfg), jax.random.key(0))
  values = gate_diagnostics.gate_values(model_cfg, params, images, tokens, lengths, relevance)
  region_relevant, word_relevant = relevance
  counts = gate_diagnostics.summarize(values)["counts"]
  real_words = int(lengths.sum())
  # Matched pairs: every region of each caption's image and every real word of each caption.
  assert counts["region_gate"]["matched"] == 5 * images.shape[0] * images.shape[1]
  assert counts["region_gate"]["relevant"] == 5 * int(region_relevant.sum())
  assert counts["word_gate"]["matched"] == real_words
  assert counts["word_gate"]["relevant"] == int(word_relevant.sum()) > 0
  assert counts["word_gate"]["relevant"] + counts["word_gate"]["irrelevant"] == real_words
  assert counts["region_gate"]["hardest_negative"] == 6 * IMAGES * images.shape[1]
  flat = np.concatenate([v for g in values.values() for v in g.values()])
  if gate == "open":
    np.testing.assert_array_equal(flat, 1.0)
  else:
    assert 0.0 < flat.min() and flat.max() < 1.0 and flat.std() > 1e-3


def test_summary_table_figure_and_refusals(tiny_inputs, tmp_path):
  values = {g: {"matched": np.array([0.8, 0.6]), "hardest_negative": np.array([0.2])}
            for g in gate_diagnostics.GATES}
  summary = dict(gate_diagnostics.summarize(values), split="test", images=2, captions=10,
                 relevance="no truth here")
  assert summary["region_gate"] == {"relevant": None, "irrelevant": None, "matched": 0.7,
                                    "hardest_negative": 0.2}
  table = gate_diagnostics.format_table(summary)
  assert "0.700" in table and "no relevance truth: no truth here" in table
  assert gate_diagnostics.plot(values, tmp_path / "g.png").stat().st_size > 10_000
  model_cfg, images, tokens, lengths, _ = tiny_inputs
  with pytest.raises(ValueError, match="need the full CAMP"):
    gate_diagnostics.gate_values(dict(model_cfg, variant="cross_attention"), {}, images,
                                 tokens, lengths)
