"""The optimizer: the release's schedule, frozen parameters, frozen pretrained word rows."""
import jax
import ml_collections
import numpy as np
import pytest

from camp_jax import optimizer
from configs import default


def _params(vocab=6, dim=3):
  ones = lambda *shape: np.ones(shape, np.float32)
  return {"txt_enc": {"embed": {"embedding": ones(vocab, dim)}, "w": ones(3)},
          "fusion": {"fc_1": {"kernel": ones(2)}, "img_query_fc": {"kernel": ones(2)}}}


def test_frozen_parameters_get_no_update():
  params = _params()
  config = default.get_config()
  config.optimizer, config.trainable = "sgd", (r"fusion/fc_1/",)
  tx, _ = optimizer.create_optimizer(config, params, steps_per_epoch=10)
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(updates["fusion"]["fc_1"]["kernel"] != 0)
  assert not np.any(updates["txt_enc"]["w"])
  assert not np.any(updates["fusion"]["img_query_fc"]["kernel"])
  config.trainable = ("no_such_layer",)
  with pytest.raises(ValueError, match="match no parameter"):
    optimizer.create_optimizer(config, params, steps_per_epoch=10)


def test_learning_rate_follows_the_release_schedule():
  config = default.get_config()
  config.learning_rate, config.batch_size, config.lr_update = 0.002, 256, 2
  schedule = optimizer.learning_rate_schedule(config, steps_per_epoch=5)
  assert float(schedule(0)) == pytest.approx(0.001)          # 0.002 x 128 / 256
  assert float(schedule(9)) == pytest.approx(0.001)
  assert float(schedule(10)) == pytest.approx(0.0001)        # x0.1 after 2 epochs


@pytest.mark.parametrize("name", optimizer.OPTIMIZERS)
def test_frozen_word_rows_stay_bit_identical(tmp_path, name):
  """word_vectors.freeze: the rows the mask marks never move (weight decay included); the
  other rows and parameters train."""
  params = _params()
  mask = np.array([1, 0, 1, 0, 0, 1], bool)
  np.save(tmp_path / "vectors.npy", np.zeros((6, 3), np.float32))
  np.save(tmp_path / "mask.npy", mask)
  config = default.get_config()
  config.optimizer, config.weight_decay = name, 0.1
  config.word_vectors = ml_collections.ConfigDict(
      dict(path=str(tmp_path / "vectors.npy"), mask=str(tmp_path / "mask.npy"), freeze=True))
  tx, _ = optimizer.create_optimizer(config, params, steps_per_epoch=10)
  state, new = tx.init(params), params
  rng = np.random.default_rng(0)
  for _ in range(3):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, state = jax.jit(tx.update)(grads, state, new)
    new = jax.tree.map(lambda p, u: p + u, new, updates)
  before, after = params["txt_enc"]["embed"]["embedding"], np.asarray(
      new["txt_enc"]["embed"]["embedding"])
  np.testing.assert_array_equal(after[mask], before[mask])
  assert np.all(after[~mask] != before[~mask])
  assert np.all(np.asarray(new["fusion"]["fc_1"]["kernel"]) != 1.0)
  config.word_vectors.freeze = False                        # the same rows now train
  tx, _ = optimizer.create_optimizer(config, params, steps_per_epoch=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates["txt_enc"]["embed"]["embedding"]) != 0)
