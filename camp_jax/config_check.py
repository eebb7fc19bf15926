"""The run config's schema, checked once at start, before anything is built.

  check(config)               # raises ValueError: one line naming the field and what it takes
  check_file("configs/flickr30k.py:stage2") -> ConfigDict   # get_config(arg), checked

Fields with a fixed set of values (`CHOICES`) take them from the module that defines them;
then come the numbers, the mesh, the rules between fields and the word-vector section. Each
error names the field as the command line sets it, e.g.
`config.optimizer='adamw': expected one of ('adam', 'sgd')`.
"""
import importlib.util
import os
import re

from camp_jax import data, losses, memory, models, objective, optimizer, scoring

# Field -> allowed values; OPTIONAL_CHOICES may be absent (configs without those fields).
CHOICES = {
    "loss": tuple(losses.LOSSES),
    "optimizer": optimizer.OPTIMIZERS,
    "pooling_kernel": scoring.POOLING,
    "backward_pairs": objective.BACKWARD_PAIRS,
    "data.kind": data.SOURCES,
    "model.name": tuple(models.MODELS),
    "model.variant": models.VARIANTS,
    "model.dtype": models.DTYPES,
}
OPTIONAL_CHOICES = {"model.gate": models.GATES, "model.head": models.HEADS}

# config.mesh: "" (automatic) or "IxC", one of the sizes -1 (inferred from the device count).
_MESH = re.compile(r"(-?\d+)x(-?\d+)", re.IGNORECASE)
_MISSING = object()


def _get(config, path: str):
  node = config
  for key in path.split("."):
    if key not in node:
      return _MISSING
    node = node[key]
  return node


def _fail(path: str, value, expected: str):
  raise ValueError(f"config.{path}={value!r}: {expected}")


def _check_choices(config) -> None:
  for path, allowed in list(CHOICES.items()) + list(OPTIONAL_CHOICES.items()):
    value = _get(config, path)
    if value is _MISSING and path in OPTIONAL_CHOICES:
      continue
    if value is _MISSING:
      raise ValueError(f"config.{path} is missing: expected one of {allowed}")
    if value not in allowed:
      _fail(path, value, f"expected one of {allowed}")


def _check_mesh(config) -> None:
  spec = config.mesh
  if spec == "":
    return
  match = _MESH.fullmatch(spec) if isinstance(spec, str) else None
  sizes = [int(x) for x in match.groups()] if match else []
  if (not match or any(s == 0 or s < -1 for s in sizes) or sizes == [-1, -1]):
    _fail("mesh", spec, "expected '' (automatic) or 'IxC' (images x captions devices, one "
          "of them may be -1), e.g. '128x2' or '-1x2'")
  if sizes[0] > 0 and config.batch_size % sizes[0]:
    _fail("mesh", spec, f"the batch of {config.batch_size} rows cannot be split over "
          f"{sizes[0]} image blocks; pick an images size that divides config.batch_size")


def _check_numbers(config) -> None:
  if not isinstance(config.batch_size, int) or config.batch_size <= 0:
    _fail("batch_size", config.batch_size, "expected a positive number of rows")
  chunk = config.train_caption_chunk
  if not isinstance(chunk, int) or chunk < memory.AUTO:
    _fail("train_caption_chunk", chunk, f"expected {memory.AUTO} (the largest that fits), "
          "0 (all captions at once) or a positive number of captions")
  if config.data.get("dev_images", 0) < 0:
    _fail("data.dev_images", config.data.dev_images,
          "expected 0 (all) or a positive number of images")


def _check_rules(config) -> None:
  """The rules between fields."""
  if config.model.get("dropout_rate", 0.0) and config.fast_scoring:
    _fail("model.dropout_rate", config.model.dropout_rate,
          "needs --config.fast_scoring=False: the hoisted exact path has no dropout (the "
          "release trains without it)")
  if config.data.kind == "tfds" and not config.data.get("vocab"):
    _fail("data.vocab", config.data.get("vocab"),
          "TFDS data (config.data.kind='tfds') needs the vocabulary file")
  for i, pattern in enumerate(config.get("trainable", ())):
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      _fail(f"trainable[{i}]", pattern, f"expected a regular expression over parameter paths "
            f"({e})")


def _check_word_vectors(config) -> None:
  section = config.get("word_vectors")
  if section is None:
    raise ValueError("config.word_vectors is missing: expected a section "
                     "ConfigDict(path='', mask='', freeze=False)")
  unknown = sorted(set(section) - {"path", "mask", "freeze"})
  if unknown:
    raise ValueError(f"config.word_vectors has unknown fields {unknown}: expected path, "
                     "mask, freeze")
  if section.get("mask") and not section.get("path"):
    _fail("word_vectors.mask", section.mask,
          "needs config.word_vectors.path (the vectors whose rows it marks)")
  if section.get("freeze") and not section.get("path"):
    _fail("word_vectors.freeze", section.freeze,
          "needs config.word_vectors.path (the pretrained rows to keep fixed)")


def check(config) -> None:
  """Refuses a config the run cannot honour, with one line naming the field.

  Reads the config only: no device, file or model is touched.
  """
  _check_choices(config)
  _check_numbers(config)
  _check_mesh(config)
  _check_rules(config)
  _check_word_vectors(config)


def check_file(spec: str):
  """get_config(ARG) of "path/NAME.py[:ARG]" (as --config takes it), checked."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={spec}: no such file {path}")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  check(config)
  return config
