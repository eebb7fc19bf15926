"""Training parity with the release: 20 steps of each stage of the Flickr30K recipe.

`tests/fixtures/torch_reference/train_stage{1,2,3}.npz` hold the authors' own
`CAMP.train_emb` run for 20 steps (its README lists the keys). Each stage starts from the
fixture's initial parameters (release names, read by `camp_jax.convert`) and runs the
`configs/flickr30k.py:stageN` step with only the sizes, the batch, the caption chunk and the
learning rate changed, on both scoring paths. Checked: the loss of every step, every final
parameter and how far each trained tensor moved, and that the parameters the release did not
train are bit-identical.
"""
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camp_jax import config_check, convert, models, optimizer, sharding, train
from configs import flickr30k

# The fixtures' sizes: img_dim 40, d 24, word_dim 12, vocab 37 (11 regions, batch 8 in the
# batches themselves).
SIZES = {"img_dim": 40, "embed_dim": 24, "word_dim": 12, "vocab_size": 37}
LOSS_RTOL = 1e-4
PARAM_ATOL = 1e-4
# What each trained tensor moved over the 20 steps, relative to its largest move. SGD moves
# some tensors by weight decay alone (the pooling heads' biases: a softmax over positions
# ignores them), by ~4e-5: where weight decay enters shows there, below PARAM_ATOL. Measured
# on CPU: <= 6e-4 here, >= 0.1 with weight decay after the momentum or inside the clip norm.
DISPLACEMENT_RTOL = 1e-2


def load_reference(directory, stage: int) -> dict[str, np.ndarray]:
  with np.load(directory / f"train_stage{stage}.npz") as z:
    return {k: z[k] for k in z.files}


def stage_config(stage: int, fast_scoring: bool, reference: dict):
  """configs/flickr30k.py:stageN with the fixture's sizes, batch and effective rate."""
  config = flickr30k.get_config(f"stage{stage}")
  config.model.update(embed_dim=SIZES["embed_dim"], word_dim=SIZES["word_dim"])
  config.batch_size = int(reference["meta/batch_size"])
  config.train_caption_chunk = 0
  config.fast_scoring = fast_scoring
  # The step scales the rate by 128 / batch_size (scale_lr_by_batch, as the release does):
  # configure the rate whose scaled value is the release's effective one.
  assert config.scale_lr_by_batch
  config.learning_rate = float(reference["meta/release_lr"]) * config.batch_size / 128
  return config


def torch_state(params) -> dict[str, np.ndarray]:
  """A flax parameter tree -> {release name: array in the release's layout}."""
  flat = flax.traverse_util.flatten_dict(params)
  return {name: np.asarray(flat[path]).T if transpose else np.asarray(flat[path])
          for name, (path, transpose) in convert.TORCH_NAMES.items() if path in flat}


def run_stage(reference: dict, stage: int, fast_scoring: bool) -> tuple[np.ndarray, dict]:
  """The 20 steps: (loss of each step before its update, final params by release name)."""
  initial = {k.removeprefix("param/"): v for k, v in reference.items()
             if k.startswith("param/")}
  inferred, params = convert.convert_state(initial, f"train_stage{stage}.npz")
  config = stage_config(stage, fast_scoring, reference)
  config_check.check(config)
  assert str(reference["meta/optimizer"]) == config.optimizer
  model_cfg = models.model_config(config, SIZES["vocab_size"], SIZES["img_dim"])
  assert {k: inferred[k] for k in SIZES} == SIZES
  assert inferred["variant"] == model_cfg["variant"]
  model = models.build(model_cfg)
  images, tokens, lengths = (reference[f"batch/{k}"] for k in ("images", "tokens", "lengths"))
  num_steps = len(images)
  # The rate decays every lr_update (>= 45) epochs: never within these steps.
  tx, schedule = optimizer.create_optimizer(config, params, steps_per_epoch=num_steps)
  mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)))
  state = jax.device_put(state, sharding.state_sharding(mesh, state))
  step = train.make_train_step(model, tx, schedule, config, mesh, state)
  losses = []
  # Every batch keeps the fixture's width (its widest caption): the release sees the first
  # max(lengths) columns of each; the columns past every caption's length are masked (and
  # stage 1 pads to 50 slots anyway), so they change nothing beyond float rounding. One
  # compilation for the 20 steps.
  for i in range(num_steps):
    batch = {"images": images[i], "tokens": tokens[i].astype(np.int32),
             "lengths": lengths[i].astype(np.int32)}
    state, aux = step(state, batch)
    losses.append(aux["loss"])
  return np.asarray(jax.device_get(losses)), torch_state(jax.device_get(state.params))


@pytest.fixture(scope="module", params=[(stage, fast) for stage in (1, 2, 3)
                                        for fast in (True, False)],
                ids=lambda p: f"stage{p[0]}-{'fast' if p[1] else 'expanded'}")
def trajectory(request, torch_fixture_dir):
  stage, fast_scoring = request.param
  reference = load_reference(torch_fixture_dir, stage)
  losses, final = run_stage(reference, stage, fast_scoring)
  worst_loss = np.max(np.abs(np.asarray(losses) - reference["output/losses"])
                      / np.abs(reference["output/losses"]))
  worst_param = max(np.max(np.abs(final[k.removeprefix("output/final/")] - v))
                    for k, v in reference.items() if k.startswith("output/final/"))
  # Shown with `pytest -s`: the figures the README quotes.
  print(f"\nstage {stage}, {'fast' if fast_scoring else 'reference'} path: 20 steps, largest "
        f"loss difference {worst_loss:.1e} (relative), largest parameter difference "
        f"{worst_param:.1e}")
  return reference, losses, final


def test_losses_match_release(trajectory):
  reference, losses, _ = trajectory
  np.testing.assert_allclose(losses, reference["output/losses"], rtol=LOSS_RTOL, atol=0)


def test_final_parameters_match_release(trajectory):
  reference, _, final = trajectory
  expected = {k.removeprefix("output/final/"): v for k, v in reference.items()
              if k.startswith("output/final/")}
  assert sorted(final) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(final[name], value, atol=PARAM_ATOL, rtol=0, err_msg=name)


def test_trained_displacements_match_release(trajectory):
  reference, _, final = trajectory
  for name in reference["output/trained"].tolist():
    initial = reference[f"param/{name}"]
    expected = reference[f"output/final/{name}"] - initial
    tolerance = DISPLACEMENT_RTOL * np.max(np.abs(expected))
    np.testing.assert_allclose(final[name] - initial, expected, atol=tolerance, rtol=0,
                               err_msg=name)


def test_untrained_parameters_bit_identical(trajectory):
  reference, _, final = trajectory
  trained = set(reference["output/trained"].tolist())
  frozen = [k for k in final if k not in trained]
  assert len(frozen) == len(final) - len(trained)
  for name in frozen:
    np.testing.assert_array_equal(final[name], reference[f"param/{name}"], err_msg=name)
