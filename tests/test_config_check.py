"""Tests for camp_jax.config_check: every shipped config passes, each wrong value is one line."""
import pathlib

import pytest

from camp_jax import config_check, data, losses, models, optimizer, scoring
from configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = ["default.py", "default.py:stage2", "default.py:stage3", "default.py:tiny",
           "default.py:stage3,tiny", "vse.py", "vse.py:tiny",
           "flickr30k.py:stage1", "flickr30k.py:stage2", "flickr30k.py:stage3",
           "flickr30k.py:stage2,synthetic", "coco.py:stage1", "coco.py:stage2", "coco.py:stage3"]


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_configs_pass(spec):
  config = config_check.check_file(str(REPO / "configs" / spec))
  assert config.word_vectors.to_dict() == {"path": "", "mask": "", "freeze": False}
  assert "word_vectors" not in config.model and "word_vectors_mask" not in config.model


def _set(config, path, value):
  *parents, key = path.split(".")
  for parent in parents:
    config = config[parent]
  config[key] = value


# (field, wrong value, what the one line must also say)
WRONG = [
    ("loss", "triplet", "('hardest_negative_bce', 'max_violation_hinge')"),
    ("optimizer", "adamw", "('adam', 'sgd')"),
    ("pooling_kernel", "triton", "('auto', 'xla', 'pallas', 'interpret')"),
    ("backward_pairs", "some", "('hardest', 'all')"),
    ("data.kind", "csv", "('synthetic', 'precomp', 'tfds')"),
    ("model.name", "clip", "('camp', 'vse')"),
    ("model.variant", "gate_fusion_new", "('gate_fusion', 'cross_attention')"),
    ("model.dtype", "float16", "('float32', 'bfloat16')"),
    ("model.gate", "closed", "('adaptive', 'open')"),
    ("model.head", "dot", "('mlp', 'cosine')"),
    ("mesh", "4y2", "'IxC'"),
    ("mesh", "0x2", "'IxC'"),
    ("mesh", "-1x-1", "'IxC'"),
    ("mesh", "3x1", "batch of 32 rows cannot be split over 3 image blocks"),
    ("batch_size", 0, "positive"),
    ("train_caption_chunk", -2, "-1 (the largest that fits)"),
    ("data.dev_images", -1, "0 (all)"),
    ("model.dropout_rate", 0.1, "needs --config.fast_scoring=False"),
    ("trainable", ("fusion/(",), "regular expression"),
    ("word_vectors.freeze", True, "needs config.word_vectors.path"),
    ("word_vectors.mask", "m.npy", "needs config.word_vectors.path"),
]


@pytest.mark.parametrize("field, value, expected", WRONG, ids=[f"{f}={v}" for f, v, _ in WRONG])
def test_a_wrong_value_stops_with_one_line_naming_the_field(field, value, expected):
  config = default.get_config()
  _set(config, field, value)
  with pytest.raises(ValueError) as error:
    config_check.check(config)
  message = str(error.value)
  assert "\n" not in message
  name = "trainable[0]" if field == "trainable" else field
  assert message.startswith(f"config.{name}={value[0] if field == 'trainable' else value!r}")
  assert expected in message


def test_allowed_values_come_from_their_modules():
  assert config_check.CHOICES["loss"] == tuple(losses.LOSSES)
  assert config_check.CHOICES["pooling_kernel"] is scoring.POOLING
  assert config_check.CHOICES["data.kind"] is data.SOURCES
  assert config_check.CHOICES["model.name"] == tuple(models.MODELS)
  assert config_check.CHOICES["model.variant"] is models.VARIANTS
  assert config_check.CHOICES["optimizer"] is optimizer.OPTIMIZERS
  assert config_check.OPTIONAL_CHOICES == {"model.gate": models.GATES,
                                           "model.head": models.HEADS}


def test_other_rules():
  config = default.get_config()
  config.model.dropout_rate, config.fast_scoring = 0.1, False  # the transcription has dropout
  config.mesh, config.train_caption_chunk = "-1x2", -1
  config.word_vectors.update(path="w.npy", mask="m.npy", freeze=True)
  config_check.check(config)
  config.data.kind = "tfds"
  with pytest.raises(ValueError, match=r"^config.data.vocab='': TFDS data .* needs the voc"):
    config_check.check(config)
  del config.model["dtype"]
  with pytest.raises(ValueError, match=r"^config.model.dtype is missing: expected one of"):
    config_check.check(config)
  with pytest.raises(FileNotFoundError, match="no such file"):
    config_check.check_file(str(REPO / "configs" / "nope.py"))
