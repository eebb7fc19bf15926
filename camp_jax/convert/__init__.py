r"""Converts the authors' PyTorch CAMP checkpoints into camp_jax bundles.

  python -m camp_jax.convert --from_torch=model_best.pth.tar --out=BUNDLE \
      [--vocab=vocab/f30k_precomp_vocab.pkl]

The checkpoint is the release's `.pth.tar` (needs torch, `pip install 'camp_jax[torch]'`) or an `.npz`
holding the same arrays under `img_enc.*`, `txt_enc.*`, `sim.*` (optionally prefixed `param/`).
Every size and the model variant are inferred from the parameter shapes.

A `.pth.tar` is read as the release's train.py writes it: {'epoch', 'model', 'best_rsum', 'opt',
'Eiters'}, `model` the list of the [img_enc, txt_enc, sim] state dicts (keys prefixed `module.`,
tensors saved from CUDA, loaded on the CPU) and `opt` an easydict.EasyDict (or an
argparse.Namespace). It is unpickled with torch's weights_only loader: the options become plain
data in the bundle's model.json (`release_options`); easydict need not be installed, and any
other global (a function such as os.system) refuses the file without being called.
"""
import collections
import pathlib
import re

import jax
import numpy as np

from camp_jax import bundle, models
from camp_jax.data import vocab as vocab_lib
from camp_jax.models.camp import PROJECTIONS

STATE_PARTS = ("img_enc", "txt_enc", "sim")


def _torch_names() -> dict[str, tuple[tuple[str, ...], bool]]:
  """Torch name -> (flax parameter path, transpose?). Covers both variants."""
  names = {
      "img_enc.fc.weight": (("img_enc", "fc", "kernel"), True),
      "img_enc.fc.bias": (("img_enc", "fc", "bias"), False),
      "txt_enc.embed.weight": (("txt_enc", "embed", "embedding"), False),
  }
  for suffix, direction in (("", "forward"), ("_reverse", "backward")):
    names[f"txt_enc.rnn.weight_ih_l0{suffix}"] = (("txt_enc", direction, "input", "kernel"), True)
    names[f"txt_enc.rnn.bias_ih_l0{suffix}"] = (("txt_enc", direction, "input", "bias"), False)
    names[f"txt_enc.rnn.weight_hh_l0{suffix}"] = (("txt_enc", direction, "hidden_kernel"), True)
    names[f"txt_enc.rnn.bias_hh_l0{suffix}"] = (("txt_enc", direction, "hidden_bias"), False)
  for proj in PROJECTIONS:
    names[f"sim.{proj}.weight"] = (("fusion", proj, "kernel"), True)
  for fc in ("fc_1", "fc_2"):
    names[f"sim.{fc}.0.weight"] = (("fusion", fc, "kernel"), True)
  layers = {"fc_out.0": ("fc_out", "hidden"), "fc_out.3": ("fc_out", "out")}
  for pool in ("final_reduce_1", "final_reduce_2"):
    layers[f"{pool}.linear.0"] = (pool, "hidden")
    layers[f"{pool}.linear.2"] = (pool, "heads")
  for torch_layer, path in layers.items():
    names[f"sim.{torch_layer}.weight"] = (("fusion",) + path + ("kernel",), True)
    names[f"sim.{torch_layer}.bias"] = (("fusion",) + path + ("bias",), False)
  return names


TORCH_NAMES = _torch_names()


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message names the file and the problem."""


def read_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a `.pth.tar` or `.npz` checkpoint: ({"img_enc.fc.weight": array, ...}, metadata).

  The metadata holds what a `.pth.tar` carries besides the weights, as plain data:
  `release_options` (the training options) and `release_checkpoint` (epoch, best_rsum, Eiters).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f"{path}: no such checkpoint file")
  if path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/pickle errors of a file that is not an npz.
      raise ConversionError(f"{path}: not a readable .npz checkpoint ({e})") from e
    state = {k.removeprefix("param/"): v for k, v in arrays.items()
             if k.startswith("param/") or k.split(".")[0] in STATE_PARTS}
    if not state:
      raise ConversionError(f"{path}: no parameter arrays (keys img_enc.*, txt_enc.*, sim.*, "
                            f"optionally under param/); found {sorted(arrays)[:8]}")
    return state, {}
  return _read_torch(path)


# What the release's train.py saves: {'epoch', 'model': [img_enc, txt_enc, sim] state dicts,
# 'best_rsum', 'opt', 'Eiters'}, `opt` an easydict.EasyDict (older VSE-style code: a Namespace).
CHECKPOINT_KEYS = ("epoch", "model", "best_rsum", "opt", "Eiters")
OPTION_CLASSES = ("easydict.EasyDict", "argparse.Namespace")


class _PlainOptions:
  """Stands in for the option classes while unpickling: yields an OrderedDict, runs nothing.

  torch's weights_only unpickler fills only exact dicts/OrderedDicts (SETITEMS) and sets
  attributes (BUILD) on OrderedDicts, so an EasyDict (a dict subclass whose items are also
  attributes) and a Namespace (attributes only) both arrive as an OrderedDict whose items
  and `__dict__` hold the options. Neither class needs to be installed, nor is it imported.
  """

  def __new__(cls, *args, **kwargs):
    del args, kwargs  # Unpickled data, never used.
    return collections.OrderedDict()


def _read_torch(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(f"{path}: reading .pth.tar checkpoints needs torch "
                          "(pip install 'camp_jax[torch]'), or convert it to .npz") from e
  # weights_only: tensors, containers and the two option classes only; any other global
  # (os.system, ...) is refused before it is called. map_location: the release saved from CUDA.
  try:
    with torch.serialization.safe_globals([(_PlainOptions, n) for n in OPTION_CLASSES]):
      checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    found = re.search(r"GLOBAL (\S+)", str(e))
    if found:
      raise ConversionError(
          f"{path}: refusing global {found.group(1)} (nothing was run); a CAMP checkpoint "
          f"holds tensors, state dicts and options ({' or '.join(OPTION_CLASSES)}) only") from e
    lines = [l for l in str(e).splitlines() if "WeightsUnpickler error" in l] or [str(e)]
    raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({lines[0].strip()})") from e
  if not isinstance(checkpoint, dict) or "model" not in checkpoint:
    raise ConversionError(f"{path}: expected the release's checkpoint dict with keys "
                          f"{list(CHECKPOINT_KEYS)}, got {type(checkpoint).__name__}")
  unexpected = [k for k in checkpoint if k not in CHECKPOINT_KEYS]
  if unexpected:
    raise ConversionError(f"{path}: unexpected key {unexpected[0]!r} in the checkpoint (the "
                          f"release saves {list(CHECKPOINT_KEYS)})")
  model = checkpoint["model"]
  if (not isinstance(model, (list, tuple)) or len(model) != len(STATE_PARTS)
      or not all(isinstance(part, dict) for part in model)):
    raise ConversionError(f"{path}: expected checkpoint['model'] to be the list of "
                          f"{len(STATE_PARTS)} state dicts {list(STATE_PARTS)}")
  state = {}
  for part, part_state in zip(STATE_PARTS, model):
    for key, value in part_state.items():
      if not isinstance(key, str) or not isinstance(value, torch.Tensor):
        raise ConversionError(f"{path}: unexpected entry {key!r} in the {part} state dict "
                              f"(a {type(value).__name__}, not a tensor)")
      state[f"{part}.{key.removeprefix('module.')}"] = value.detach().cpu().float().numpy()
  meta = {"release_checkpoint": {k: _plain(checkpoint[k], f"checkpoint[{k!r}]", path)
                                 for k in ("epoch", "best_rsum", "Eiters") if k in checkpoint}}
  if checkpoint.get("opt") is not None:
    meta["release_options"] = _plain(checkpoint["opt"], "checkpoint['opt']", path)
  return state, meta


def _plain(value, where: str, path):
  """The options as JSON data: numbers, strings, lists and string-keyed dicts, else refused."""
  if value is None or isinstance(value, (str, bool, int, float)):
    return value
  if isinstance(value, (list, tuple)):
    return [_plain(v, f"{where}[{i}]", path) for i, v in enumerate(value)]
  if isinstance(value, dict):  # A plain dict, or an option object as _PlainOptions made it.
    items = {**getattr(value, "__dict__", {}), **value}
    for key in items:
      if not isinstance(key, str):
        raise ConversionError(f"{path}: {where} has a key {key!r} that is not a string")
    return {k: _plain(v, f"{where}[{k!r}]", path) for k, v in items.items()}
  raise ConversionError(f"{path}: {where} is a {type(value).__name__}, not plain data "
                        "(numbers, strings, lists, dicts)")


def _shape(state, key, path):
  if key not in state:
    raise ConversionError(f"{path}: missing parameter {key!r}")
  return state[key].shape


def infer_model_config(state: dict[str, np.ndarray], path="checkpoint") -> dict:
  """Reads every size and the variant from the parameter shapes."""
  embed_dim, img_dim = _shape(state, "img_enc.fc.weight", path)
  vocab_size, word_dim = _shape(state, "txt_enc.embed.weight", path)
  gate_fusion = any(k.startswith(("sim.fc_1.", "sim.fc_out.", "sim.final_reduce_"))
                    for k in state)
  config = {"name": "camp", "vocab_size": int(vocab_size), "word_dim": int(word_dim),
            "embed_dim": int(embed_dim), "img_dim": int(img_dim),
            "variant": "gate_fusion" if gate_fusion else "cross_attention"}
  if gate_fusion:
    config["pool_heads"] = int(_shape(state, "sim.final_reduce_1.linear.2.weight", path)[0])
  else:
    config["pad_words_to"] = 50  # The stage-1 scores depend on the original's 50 slots.
  return config


def convert_state(state: dict[str, np.ndarray], path="checkpoint") -> tuple[dict, dict]:
  """Maps torch arrays onto the flax parameter tree: (model_config, params)."""
  config = infer_model_config(state, path)
  model = models.build(config)
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            np.zeros((1, 1, config["img_dim"]), np.float32),
                            np.zeros((1, 1), np.int32), np.ones((1,), np.int32))["params"]
  expected = {tuple(p.key for p in k): v
              for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  unknown = sorted(k for k in state if k not in TORCH_NAMES)
  if unknown:
    raise ConversionError(f"{path}: unknown parameters {unknown} (not part of CAMP's "
                          f"{config['variant']} variant)")
  flat = {}
  for key, value in state.items():
    target, transpose = TORCH_NAMES[key]
    if target not in expected:
      raise ConversionError(f"{path}: parameter {key!r} does not belong to the "
                            f"{config['variant']} variant inferred from the other keys")
    value = np.asarray(value, np.float32)
    value = value.T if transpose else value
    if value.shape != expected[target].shape:
      raise ConversionError(f"{path}: {key!r} has shape {state[key].shape}, expected "
                            f"{expected[target].shape[::-1] if transpose else expected[target].shape} "
                            f"for img_dim={config['img_dim']}, d={config['embed_dim']}, "
                            f"word_dim={config['word_dim']}, vocab={config['vocab_size']}")
    flat["/".join(target)] = value
  torch_of = {v[0]: k for k, v in TORCH_NAMES.items()}
  missing = sorted(torch_of[t] for t in expected if "/".join(t) not in flat)
  if missing:
    raise ConversionError(f"{path}: missing parameters {missing}")
  return config, bundle.unflatten_params(flat)


def convert(checkpoint: str | pathlib.Path, out: str | pathlib.Path, vocab_path=None,
            overwrite: bool = False) -> pathlib.Path:
  """Reads a PyTorch checkpoint and writes a bundle; returns the bundle path."""
  state, meta = read_checkpoint(checkpoint)
  config, params = convert_state(state, checkpoint)
  vocab = None
  if vocab_path is not None:
    vocab = vocab_lib.load_vocab(vocab_path)
    if len(vocab) != config["vocab_size"]:
      raise ConversionError(f"{vocab_path}: vocabulary has {len(vocab)} words but the "
                            f"checkpoint's embedding has {config['vocab_size']} rows")
  return bundle.save(out, params, config, vocab, overwrite=overwrite,
                     extra={"source": str(pathlib.Path(checkpoint).name), **meta})
