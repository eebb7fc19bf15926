"""A built-in synthetic dataset in the precomp format, the default for every command.

Each image is a scene of 2-3 objects (16 kinds) with a colour (8), a size (2),
a material (4) and a horizontal slot (left/middle/right) on a background (6).
Region features are a FIXED random MLP (its seed is a constant, independent of
the data seed) of the one-hot codes of an object, its attributes and its slot,
plus noise; further regions are second views of objects, the background and
unnamed clutter, in random order. Five templated captions per image name every
object with its colour and its place (unary "on the left" or relational "to
the left of"), sometimes its size, material and the background.

Hard negatives: scenes come in families of `family_size` images with the same
objects and colours that differ only in which object has which colour or which
object is where. A pooled embedding sees nearly the same bag of regions and
words for a family; telling them apart needs region-word binding, as in CAMP.
No two families of a split share a caption-level description, so every caption
matches exactly its own image.
"""
import json
import os

import numpy as np

from camp_jax.data import vocab as vocab_lib

OBJECTS = (("cube", "block"), ("ball", "sphere"), ("cone",), ("cylinder", "tube"), ("ring",),
           ("star",), ("pyramid",), ("disk", "plate"), ("cup", "mug"), ("bottle",), ("chair",),
           ("lamp",), ("book",), ("hat", "cap"), ("vase",), ("shoe", "boot"))
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
SIZES = (("small", "little", "tiny"), ("large", "big"))
MATERIALS = (("metal", "metallic"), ("wooden",), ("rubber",), ("glass",))
SLOTS = ("left", "middle", "right")
BACKGROUNDS = ("on a table", "on the floor", "on the grass", "in the sand", "in the snow",
               "on a carpet")
NUM_CLUTTER = 8
DEFAULTS = dict(num_train=10_000, num_dev=500, num_test=1_000, num_regions=12, feature_dim=64,
                seed=0, family_size=2, noise=0.3)
_MAP_SEED = 20190927  # Fixes the feature map for every data seed.
_MANIFEST = "synthetic.json"
_VERSION = 1

# One-hot blocks of a region code: kind (object/background/clutter), object,
# colour, size, material, slot, background, clutter, then x/y jitter.
_BLOCKS = (3, len(OBJECTS), len(COLOURS), len(SIZES), len(MATERIALS), len(SLOTS),
           len(BACKGROUNDS), NUM_CLUTTER)
_OFFSETS = np.cumsum((0,) + _BLOCKS)
_CODE_DIM = int(_OFFSETS[-1]) + 2


def _feature_map(feature_dim: int):
  rng = np.random.default_rng(_MAP_SEED)
  hidden = 256
  w1 = rng.normal(0, 1.5 / np.sqrt(6), (_CODE_DIM, hidden))  # ~6 active inputs per code.
  b1 = rng.normal(0, 0.5, (hidden,))
  w2 = rng.normal(0, 1 / np.sqrt(hidden * 0.5), (hidden, feature_dim))
  w1, b1, w2 = (w.astype(np.float32) for w in (w1, b1, w2))
  return lambda codes: np.tanh(codes @ w1 + b1) @ w2


def _sample_scene(rng) -> dict:
  n = rng.choice((2, 3), p=(0.4, 0.6))
  return dict(objects=rng.choice(len(OBJECTS), n, replace=False).tolist(),
              colours=rng.choice(len(COLOURS), n, replace=False).tolist(),
              sizes=rng.integers(len(SIZES), size=n).tolist(),
              materials=rng.integers(len(MATERIALS), size=n).tolist(),
              slots=(rng.permutation(3)[:n] if n == 3 else rng.permutation([0, 2])).tolist(),
              background=int(rng.integers(len(BACKGROUNDS))))


def _sibling(scene: dict, rng, swap: str) -> dict:
  """The scene with the colours (or the slots) of two of its objects exchanged."""
  new = {k: list(v) if isinstance(v, list) else v for k, v in scene.items()}
  i, j = rng.choice(len(scene["objects"]), 2, replace=False)
  key = "colours" if swap == "colour" else "slots"
  new[key][i], new[key][j] = new[key][j], new[key][i]
  return new


def _signature(scene: dict) -> tuple:
  """What every caption states: (object, colour, slot) of each object."""
  return tuple(sorted(zip(scene["objects"], scene["colours"], scene["slots"])))


def _region_codes(scene: dict, num_regions: int, rng) -> np.ndarray:
  codes = np.zeros((num_regions, _CODE_DIM), np.float32)
  o = _OFFSETS
  n = len(scene["objects"])

  def put_object(r, i):
    codes[r, o[0]] = 1
    for block, value in ((1, scene["objects"][i]), (2, scene["colours"][i]),
                         (3, scene["sizes"][i]), (4, scene["materials"][i]),
                         (5, scene["slots"][i])):
      codes[r, o[block] + value] = 1
    codes[r, -2] = scene["slots"][i] - 1 + rng.uniform(-0.3, 0.3)

  for i in range(n):
    put_object(i, i)
  r = n
  for _ in range(2):  # Background regions.
    if r < num_regions:
      codes[r, o[0] + 1] = 1
      codes[r, o[6] + scene["background"]] = 1
      codes[r, -2] = rng.uniform(-1, 1)
      r += 1
  for i in range(n):  # Second views of the objects.
    if r < num_regions:
      put_object(r, i)
      r += 1
  for r in range(r, num_regions):  # Clutter no caption mentions.
    codes[r, o[0] + 2] = 1
    codes[r, o[7] + rng.integers(NUM_CLUTTER)] = 1
    codes[r, -2] = rng.uniform(-1, 1)
  codes[:, -1] = rng.uniform(-1, 1, num_regions)  # Vertical jitter.
  return codes[rng.permutation(num_regions)]


def _pick(rng, words: tuple[str, ...]) -> str:
  return words[int(rng.integers(len(words)))] if len(words) > 1 else words[0]


def _describe(scene: dict, i: int, rng) -> str:
  # At most one optional adjective, so every caption fits the 32-id length bucket.
  extra, words = rng.random(), []
  if extra < 0.3:
    words.append(_pick(rng, SIZES[scene["sizes"][i]]))
  words.append(COLOURS[scene["colours"][i]])
  if 0.3 <= extra < 0.55:
    words.append(_pick(rng, MATERIALS[scene["materials"][i]]))
  words.append(_pick(rng, OBJECTS[scene["objects"][i]]))
  return " ".join(words)


def _caption(scene: dict, rng) -> str:
  """One caption naming every object with its colour and place."""
  n = len(scene["objects"])
  order = sorted(range(n), key=lambda i: scene["slots"][i])  # Left to right.
  d = {i: _describe(scene, i, rng) for i in range(n)}
  where = {0: "on the left", 1: "in the middle", 2: "on the right"}
  bg = " " + BACKGROUNDS[scene["background"]] if rng.random() < 0.5 else ""
  template = rng.integers(4)
  if template == 0:  # Unary places, clauses in random order.
    parts = [f"a {d[i]} {where[scene['slots'][i]]}" for i in rng.permutation(n)]
    text = ", ".join(parts[:-1]) + " and " + parts[-1] + bg
  elif template == 1:  # Relational chain, left to right or right to left.
    rel, seq = ("left", order) if rng.random() < 0.5 else ("right", order[::-1])
    text = f"a {d[seq[0]]} is to the {rel} of a {d[seq[1]]}"
    if n == 3:
      text += f", which is to the {rel} of a {d[seq[2]]}"
    text += bg
  elif template == 2:  # Listing.
    listed = ", ".join(f"a {d[i]}" for i in order[:-1]) + f" and a {d[order[-1]]}"
    text = f"there is {listed}{bg}, from left to right"
  else:  # Definite descriptions.
    parts = [f"the {d[i]} is {where[scene['slots'][i]]}" for i in rng.permutation(n)]
    text = ", ".join(parts[:-1]) + " and " + parts[-1] + bg
  return text[0].upper() + text[1:] + "."


def _make_split(num_images: int, num_regions: int, rng, family_size: int, feature_map,
                noise: float) -> tuple[np.ndarray, list[str]]:
  scenes, seen = [], set()
  while len(scenes) < num_images:
    base = _sample_scene(rng)
    swaps = ["colour", "slot"] if rng.random() < 0.5 else ["slot", "colour"]
    family = [base] + [_sibling(base, rng, swaps[k % 2]) for k in range(family_size - 1)]
    signatures = {_signature(s) for s in family}
    if len(signatures) < len(family) or signatures & seen:
      continue  # A description shared with another image: resample.
    seen |= signatures
    scenes.extend(family[:num_images - len(scenes)])
  codes = np.stack([_region_codes(s, num_regions, rng) for s in scenes])
  feats = feature_map(codes.reshape(-1, _CODE_DIM)).reshape(num_images, num_regions, -1)
  feats += noise * rng.standard_normal(feats.shape, dtype=np.float32)
  captions = [_caption(s, rng) for s in scenes for _ in range(5)]
  return feats, captions


def generate(out_dir: str | os.PathLike, *, num_train: int = DEFAULTS["num_train"],
             num_dev: int = DEFAULTS["num_dev"], num_test: int = DEFAULTS["num_test"],
             num_regions: int = DEFAULTS["num_regions"],
             feature_dim: int = DEFAULTS["feature_dim"], seed: int = DEFAULTS["seed"],
             family_size: int = DEFAULTS["family_size"],
             noise: float = DEFAULTS["noise"]) -> str:
  """Writes {train,dev,test}_{ims.npy,caps.txt}, vocab.json and a manifest; returns out_dir."""
  if num_regions < 3:
    raise ValueError(f"num_regions must be >= 3 (one per object), got {num_regions}")
  if not 1 <= family_size <= 3:
    raise ValueError(f"family_size must be 1, 2 or 3, got {family_size}")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  manifest = _manifest(locals())
  feature_map = _feature_map(feature_dim)
  train_captions = None
  for index, (split, n) in enumerate((("train", num_train), ("dev", num_dev),
                                      ("test", num_test))):
    rng = np.random.default_rng([seed, index])  # A split does not depend on the others' sizes.
    feats, captions = _make_split(n, num_regions, rng, family_size, feature_map, noise)
    np.save(os.path.join(out_dir, f"{split}_ims.npy"), feats)
    with open(os.path.join(out_dir, f"{split}_caps.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(captions) + "\n")
    if split == "train":
      train_captions = captions
  vocab_lib.build_vocab(train_captions, threshold=1).save_json(
      os.path.join(out_dir, "vocab.json"))
  with open(os.path.join(out_dir, _MANIFEST), "w") as f:  # Last: marks a complete set.
    json.dump(manifest, f, indent=1, sort_keys=True)
  return out_dir


def _manifest(args: dict) -> dict:
  return dict({k: args[k] for k in DEFAULTS}, version=_VERSION)


def ensure_synthetic(data_dir: str | os.PathLike, **sizes) -> str:
  """Generates into `data_dir` unless a complete set with the same settings is there."""
  unknown = set(sizes) - set(DEFAULTS)
  if unknown:
    raise TypeError(f"unknown synthetic settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
  wanted = _manifest(dict(DEFAULTS, **sizes))
  path = os.path.join(os.fspath(data_dir), _MANIFEST)
  if os.path.isfile(path):
    with open(path) as f:
      if json.load(f) == wanted:
        return os.fspath(data_dir)
    os.remove(path)  # Settings changed: regenerate all files.
  return generate(data_dir, **dict(DEFAULTS, **sizes))
