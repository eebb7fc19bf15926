"""A built-in synthetic dataset in the precomp format, the default for every command.

Each image is a scene of 2-3 objects (16 kinds) with a colour (8), a size (2),
a material (4) and a horizontal slot (left/middle/right) on a background (6).
Region features are a FIXED random MLP (its seed is a constant, independent of
the data seed) of the one-hot codes of an object, its attributes and its slot,
plus noise. Five templated captions per image name every object with its colour
and its place (unary "on the left" or relational "to the left of"), sometimes
its size, material and the background.

The level of irrelevant information (a property of the task, fixed before any
result): every image has 12 regions, of which exactly 4 are CLUTTER: regions
that look like real objects (an object kind with a colour, size, material and a
place, drawn like a named object) but that no caption names; every caption
carries FILLER words that name no region: one filler phrase of 2-4 words ("in
this picture", "we can see", ...). The rest of the 12 regions are the named
objects, 2 background regions and a second view of each named object; what is
left over (images with 2 objects) shows unnamed clutter of its own kind.
`clutter_regions`, `filler_phrases` (per caption) and `num_regions` set the level.

Hard negatives: scenes come in families of `family_size` images with the same
objects, colours and clutter that differ only in which object has which colour
or which object is where. A pooled embedding sees nearly the same bag of regions
and words for a family; telling them apart needs region-word binding, as in
CAMP. No two families of a split share a caption-level description. Clutter
objects are of kinds the image's captions do not name.

Relevance (the truth to measure gates against), written for each split:
  {split}_region_relevance.npy  bool (N, R): the region shows an object the
      captions name (either view), or the background when any of the image's
      captions names it. Clutter and leftover regions are never relevant.
  {split}_word_relevance.npy    bool (5N, MAX_WORDS + 2): position t is token t
      of `tokenizer.encode(caption)` = [<start>, words..., <end>], padded with
      False. True for words naming an object, its colour, size, material or
      place ("left" in "on the left") and the background ("grass"); False for
      <start>/<end>, punctuation, function words ("a", "the", "of", "from left
      to right") and filler words.
  {split}_region_roles.npy, {split}_word_roles.npy  int8, same shapes: indices
      into REGION_ROLES and WORD_ROLES, the finer truth behind the two above.
"""
import json
import os

import numpy as np

from camp_jax.data import tokenizer
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
# Filler phrases name no region; the first four also end a caption, the rest only start one.
FILLERS = ("in this picture", "as you can see", "in this image", "as shown here", "we can see",
           "a photo of", "here we have", "we see")
_FILLERS_AT_END = 4
NUM_CLUTTER = 8  # Kinds of the leftover (unnamed, non-object) clutter code.
REGION_ROLES = ("object", "second_view", "background", "clutter", "leftover")
WORD_ROLES = ("none", "function", "filler", "content")  # none: pad, <start>, <end>, punctuation.
DEFAULTS = dict(num_train=10_000, num_dev=500, num_test=1_000, num_regions=12, feature_dim=64,
                seed=0, family_size=2, noise=0.3, clutter_regions=4, filler_phrases=1)
MAX_OBJECTS = 3
_MAP_SEED = 20190927  # Fixes the feature map for every data seed.
_MANIFEST = "synthetic.json"
_VERSION = 2
_FILES = dict(region_relevance="{split}_region_relevance.npy",
              word_relevance="{split}_word_relevance.npy",
              region_roles="{split}_region_roles.npy", word_roles="{split}_word_roles.npy")
_SHORT_IDS = 32  # Captions are kept within this many ids (a length bucket) where they can be.

# One-hot blocks of a region code: kind (object/background/clutter), object,
# colour, size, material, slot, background, clutter, then x/y jitter.
_BLOCKS = (3, len(OBJECTS), len(COLOURS), len(SIZES), len(MATERIALS), len(SLOTS),
           len(BACKGROUNDS), NUM_CLUTTER)
_OFFSETS = np.cumsum((0,) + _BLOCKS)
_CODE_DIM = int(_OFFSETS[-1]) + 2
_NONE, _FUNCTION, _FILLER, _CONTENT = range(4)
_OBJECT, _SECOND_VIEW, _BACKGROUND, _CLUTTER, _LEFTOVER = range(5)


def _feature_map(feature_dim: int):
  rng = np.random.default_rng(_MAP_SEED)
  hidden = 256
  w1 = rng.normal(0, 1.5 / np.sqrt(6), (_CODE_DIM, hidden))  # ~6 active inputs per code.
  b1 = rng.normal(0, 0.5, (hidden,))
  w2 = rng.normal(0, 1 / np.sqrt(hidden * 0.5), (hidden, feature_dim))
  w1, b1, w2 = (w.astype(np.float32) for w in (w1, b1, w2))
  return lambda codes: np.tanh(codes @ w1 + b1) @ w2


def _sample_scene(rng, clutter_regions: int) -> dict:
  n = rng.choice((2, 3), p=(0.4, 0.6))
  scene = dict(objects=rng.choice(len(OBJECTS), n, replace=False).tolist(),
               colours=rng.choice(len(COLOURS), n, replace=False).tolist(),
               sizes=rng.integers(len(SIZES), size=n).tolist(),
               materials=rng.integers(len(MATERIALS), size=n).tolist(),
               slots=(rng.permutation(3)[:n] if n == 3 else rng.permutation([0, 2])).tolist(),
               background=int(rng.integers(len(BACKGROUNDS))), clutter=None)
  if clutter_regions:  # Objects of kinds the captions do not name, anywhere.
    k = clutter_regions
    free = [o for o in range(len(OBJECTS)) if o not in scene["objects"]]
    scene["clutter"] = dict(objects=rng.choice(free, k, replace=k > len(free)).tolist(),
                            colours=rng.integers(len(COLOURS), size=k).tolist(),
                            sizes=rng.integers(len(SIZES), size=k).tolist(),
                            materials=rng.integers(len(MATERIALS), size=k).tolist(),
                            slots=rng.integers(len(SLOTS), size=k).tolist())
  return scene


def _sibling(scene: dict, rng, swap: str) -> dict:
  """The scene with the colours (or the slots) of two of its named objects exchanged."""
  i, j = rng.choice(len(scene["objects"]), 2, replace=False)
  key = "colours" if swap == "colour" else "slots"
  values = list(scene[key])
  values[i], values[j] = values[j], values[i]
  return dict(scene, **{key: values})


def _signature(scene: dict) -> tuple:
  """What every caption states: (object, colour, slot) of each object."""
  return tuple(sorted(zip(scene["objects"], scene["colours"], scene["slots"])))


def _region_codes(scene: dict, num_regions: int, rng) -> tuple[np.ndarray, np.ndarray]:
  """Codes (R, _CODE_DIM) and roles (R,) int8 of an image's regions, in random order."""
  codes = np.zeros((num_regions, _CODE_DIM), np.float32)
  roles = np.full((num_regions,), _LEFTOVER, np.int8)
  o = _OFFSETS
  n = len(scene["objects"])
  clutter = scene["clutter"]

  def put_object(r, attrs, i, role):
    codes[r, o[0]] = 1
    for block, key in enumerate(("objects", "colours", "sizes", "materials", "slots"), 1):
      codes[r, o[block] + attrs[key][i]] = 1
    codes[r, -2] = attrs["slots"][i] - 1 + rng.uniform(-0.3, 0.3)
    roles[r] = role

  for i in range(n):
    put_object(i, scene, i, _OBJECT)
  r = n
  for i in range(len(clutter["objects"]) if clutter else 0):  # Always fits (see `generate`).
    put_object(r, clutter, i, _CLUTTER)
    r += 1
  for _ in range(2):  # Background regions.
    if r < num_regions:
      codes[r, o[0] + 1] = 1
      codes[r, o[6] + scene["background"]] = 1
      codes[r, -2] = rng.uniform(-1, 1)
      roles[r] = _BACKGROUND
      r += 1
  for i in range(n):  # Second views of the objects.
    if r < num_regions:
      put_object(r, scene, i, _SECOND_VIEW)
      r += 1
  for r in range(r, num_regions):  # Leftover clutter of its own kind, no object.
    codes[r, o[0] + 2] = 1
    codes[r, o[7] + rng.integers(NUM_CLUTTER)] = 1
    codes[r, -2] = rng.uniform(-1, 1)
  codes[:, -1] = rng.uniform(-1, 1, num_regions)  # Vertical jitter.
  order = rng.permutation(num_regions)
  return codes[order], roles[order]


def _pick(rng, words: tuple[str, ...]) -> str:
  return words[int(rng.integers(len(words)))] if len(words) > 1 else words[0]


def _words(text: str, role: int) -> list[tuple[str, int]]:
  return [(w, role) for w in text.split()]


def _content(word: str) -> list[tuple[str, int]]:
  return [(word, _CONTENT)]


def _describe(scene: dict, i: int, rng) -> list[tuple[str, int]]:
  # At most one optional adjective, so captions fit the 32-id length bucket.
  extra, words = rng.random(), []
  if extra < 0.3:
    words.append(_pick(rng, SIZES[scene["sizes"][i]]))
  words.append(COLOURS[scene["colours"][i]])
  if 0.3 <= extra < 0.55:
    words.append(_pick(rng, MATERIALS[scene["materials"][i]]))
  words.append(_pick(rng, OBJECTS[scene["objects"][i]]))
  return _words("a", _FUNCTION) + [(w, _CONTENT) for w in words]


def _place(slot: int) -> list[tuple[str, int]]:
  """'on the left', 'in the middle' or 'on the right'."""
  return _words("in the" if slot == 1 else "on the", _FUNCTION) + _content(SLOTS[slot])


def _relation(side: str) -> list[tuple[str, int]]:
  """'to the left of' or 'to the right of'."""
  return _words("to the", _FUNCTION) + _content(side) + _words("of", _FUNCTION)


def _join(clauses: list) -> list[tuple[str, int]]:
  """'x, y and z'."""
  out = []
  for k, clause in enumerate(clauses):
    if k:
      out += [(",", _NONE)] if k < len(clauses) - 1 else _words("and", _FUNCTION)
    out += clause
  return out


def _body(scene: dict, rng) -> tuple[list, list]:
  """(tokens, background tokens) of one caption naming every object with its colour and place;
  tokens are (word, role) pairs, with None where the background phrase goes."""
  n = len(scene["objects"])
  order = sorted(range(n), key=lambda i: scene["slots"][i])  # Left to right.
  d = {i: _describe(scene, i, rng) for i in range(n)}
  bg_words = BACKGROUNDS[scene["background"]].split()
  bg = (_words(" ".join(bg_words[:-1]), _FUNCTION) + _content(bg_words[-1])
        if rng.random() < 0.5 else [])
  template = rng.integers(4)
  slot = lambda i: scene["slots"][i]
  if template == 0:  # Unary places, clauses in random order.
    return _join([d[i] + _place(slot(i)) for i in rng.permutation(n)]) + [None], bg
  if template == 1:  # Relational chain, left to right or right to left.
    rel, seq = ("left", order) if rng.random() < 0.5 else ("right", order[::-1])
    toks = d[seq[0]] + _words("is", _FUNCTION) + _relation(rel) + d[seq[1]]
    if n == 3:
      toks += [(",", _NONE)] + _words("which is", _FUNCTION) + _relation(rel) + d[seq[2]]
    return toks + [None], bg
  if template == 2:  # Listing.
    toks = _words("there is", _FUNCTION) + _join([d[i] for i in order])
    return toks + [None, (",", _NONE)] + _words("from left to right", _FUNCTION), bg
  # Definite descriptions.
  the = lambda i: _words("the", _FUNCTION) + d[i][1:] + _words("is", _FUNCTION)
  return _join([the(i) + _place(slot(i)) for i in rng.permutation(n)]) + [None], bg


def _caption(scene: dict, rng, filler_phrases: int) -> tuple[str, list[int], bool]:
  """(caption text, role of each of its tokens, whether it names the background)."""
  body, bg = _body(scene, rng)
  room = _SHORT_IDS - 3 - (len(body) - 1)  # Words left beside <start>, <end>, '.', the body.
  starts, ends = [], []
  for _ in range(filler_phrases):  # Phrases that keep the caption short where one can.
    at_end = rng.random() < 0.5
    pool = FILLERS[:_FILLERS_AT_END] if at_end else FILLERS
    pool = [p for p in pool if len(p.split()) <= room] or pool
    phrase = _words(pool[int(rng.integers(len(pool)))], _FILLER)
    (ends if at_end else starts).append(phrase)
    room -= len(phrase)
  if len(bg) > room:
    bg = []  # The background is optional; the short length bucket is kept.
  at = body.index(None)
  toks = sum(starts, []) + body[:at] + bg + body[at + 1:] + sum(ends, []) + [(".", _NONE)]
  text = " ".join(w for w, _ in toks).replace(" ,", ",").replace(" .", ".")
  return text[0].upper() + text[1:], [role for _, role in toks], bool(bg)


def _make_split(num_images: int, num_regions: int, rng, family_size: int, feature_map,
                noise: float, clutter_regions: int, filler_phrases: int) -> dict:
  scenes, seen = [], set()
  while len(scenes) < num_images:
    base = _sample_scene(rng, clutter_regions)
    swaps = ["colour", "slot"] if rng.random() < 0.5 else ["slot", "colour"]
    family = [base] + [_sibling(base, rng, swaps[k % 2]) for k in range(family_size - 1)]
    signatures = {_signature(s) for s in family}
    if len(signatures) < len(family) or signatures & seen:
      continue  # A description shared with another image: resample.
    seen |= signatures
    scenes.extend(family[:num_images - len(scenes)])
  codes, region_roles = map(np.stack, zip(*(_region_codes(s, num_regions, rng) for s in scenes)))
  feats = feature_map(codes.reshape(-1, _CODE_DIM)).reshape(num_images, num_regions, -1)
  feats += noise * rng.standard_normal(feats.shape, dtype=np.float32)
  captions = [_caption(s, rng, filler_phrases) for s in scenes for _ in range(5)]
  word_roles = np.zeros((len(captions), tokenizer.MAX_WORDS + 2), np.int8)
  for c, (_, roles, _) in enumerate(captions):  # Column 0 is <start>, then the words.
    roles = roles[:tokenizer.MAX_WORDS]
    word_roles[c, 1:len(roles) + 1] = roles
  names_bg = np.array([c[2] for c in captions]).reshape(num_images, 5).any(1)
  region_relevance = np.isin(region_roles, (_OBJECT, _SECOND_VIEW)) | (
      (region_roles == _BACKGROUND) & names_bg[:, None])
  return dict(ims=feats, caps=[c[0] for c in captions], region_roles=region_roles,
              word_roles=word_roles, region_relevance=region_relevance,
              word_relevance=word_roles == _CONTENT)


def generate(out_dir: str | os.PathLike, *, num_train: int = DEFAULTS["num_train"],
             num_dev: int = DEFAULTS["num_dev"], num_test: int = DEFAULTS["num_test"],
             num_regions: int = DEFAULTS["num_regions"],
             feature_dim: int = DEFAULTS["feature_dim"], seed: int = DEFAULTS["seed"],
             family_size: int = DEFAULTS["family_size"], noise: float = DEFAULTS["noise"],
             clutter_regions: int = DEFAULTS["clutter_regions"],
             filler_phrases: int = DEFAULTS["filler_phrases"]) -> str:
  """Writes {train,dev,test}_{ims.npy,caps.txt}, the relevance files (module docstring),
  vocab.json and a manifest; returns out_dir."""
  if clutter_regions < 0 or filler_phrases < 0:
    raise ValueError(f"clutter_regions and filler_phrases must be >= 0, got {clutter_regions} "
                     f"and {filler_phrases}")
  if num_regions < MAX_OBJECTS + clutter_regions:
    raise ValueError(f"num_regions={num_regions} cannot hold {MAX_OBJECTS} objects and "
                     f"clutter_regions={clutter_regions}; need num_regions >= "
                     f"{MAX_OBJECTS + clutter_regions} or fewer clutter regions")
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
    data = _make_split(n, num_regions, rng, family_size, feature_map, noise, clutter_regions,
                       filler_phrases)
    np.save(os.path.join(out_dir, f"{split}_ims.npy"), data["ims"])
    with open(os.path.join(out_dir, f"{split}_caps.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(data["caps"]) + "\n")
    for key, pattern in _FILES.items():
      np.save(os.path.join(out_dir, pattern.format(split=split)), data[key])
    if split == "train":
      train_captions = data["caps"]
  vocab_lib.build_vocab(train_captions, threshold=1).save_json(
      os.path.join(out_dir, "vocab.json"))
  with open(os.path.join(out_dir, _MANIFEST), "w") as f:  # Last: marks a complete set.
    json.dump(manifest, f, indent=1, sort_keys=True)
  return out_dir


def _manifest(args: dict) -> dict:
  return dict({k: args[k] for k in DEFAULTS}, version=_VERSION, files=_FILES)


def _read_pair(folder: str | os.PathLike, split: str, keys: tuple[str, str],
               dtype) -> tuple[np.ndarray, np.ndarray]:
  out = []
  for key in keys:
    path = os.path.join(os.fspath(folder), _FILES[key].format(split=split))
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no {key.replace('_', ' ')} for split {split!r} (only "
                              "the built-in synthetic data carries it)")
    array = np.load(path, allow_pickle=False)
    if array.dtype != dtype or array.ndim != 2:
      raise ValueError(f"{path}: expected a 2-D {np.dtype(dtype)} array, got {array.dtype} "
                       f"{array.shape}")
    out.append(array)
  if len(out[1]) != 5 * len(out[0]):
    raise ValueError(f"{folder}: {split} has {len(out[0])} images but {len(out[1])} caption "
                     f"rows in {_FILES[keys[1]].format(split=split)}; expected 5 per image")
  return out[0], out[1]


def read_relevance(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(region_relevant bool (N, R), word_relevant bool (5N, MAX_WORDS + 2)) of a split."""
  return _read_pair(folder, split, ("region_relevance", "word_relevance"), np.bool_)


def read_roles(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(region roles int8 (N, R) into REGION_ROLES, word roles int8 (5N, MAX_WORDS + 2) into
  WORD_ROLES) of a split."""
  return _read_pair(folder, split, ("region_roles", "word_roles"), np.int8)


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
