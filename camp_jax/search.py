r"""Text-to-image and image-to-text search over a precomp gallery: shortlist, then exact CAMP.

  python -m camp_jax.search --bundle BUNDLE --gallery DIR [--split test] --query "a man riding a horse" [--top 10]
  python -m camp_jax.search --bundle BUNDLE --gallery DIR --image 17         # image -> captions
  python -m camp_jax.search --bundle BUNDLE --gallery DIR --evaluate-shortlist [--ks 10,20,50,100]

Stage 1 ranks the whole gallery by one matrix product of independent joint embeddings
(`CAMP.shortlist_embeddings`: pooled, L2-normalised encoder outputs, aligned in training by
the `shortlist_loss_weight` VSE++ term); stage 2 rescores the top K (`--shortlist K`) with
the exact CAMP score and puts them first, the rest keep their stage-1 order.

The gallery's encoder outputs are computed once and cached in DIR/.camp_cache/ (or
`--cache-dir`), keyed by a hash of the bundle's params and vocabulary and the split, and
checked against the size and mtime of the split's files.
"""
import argparse
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from camp_jax import evaluate, inference, scoring
from camp_jax.data import precomp, tokenizer
from camp_jax.models.vse import pooled_caption, pooled_image

CACHE_DIR = ".camp_cache"
_CACHE_VERSION = 1
_IMAGE_BATCH = 128
_CAPTION_BATCH = 512
_PAIR_TILE = 512


# ---------------------------------------------------------------------------------------------
# Encoding and the gallery cache.


def predictor_hash(predictor: inference.Predictor) -> str:
  """A short hash of the params, model config and vocabulary: what the cached outputs depend on."""
  h = hashlib.sha256(json.dumps(predictor.model_config, sort_keys=True, default=str).encode())
  for name, value in sorted(_flat(predictor.params).items()):
    value = np.ascontiguousarray(value)
    h.update(f"{name}:{value.dtype}:{value.shape}".encode())
    h.update(value.tobytes())
  if predictor.vocab is not None:
    h.update(json.dumps(predictor.vocab.word2idx, sort_keys=True).encode())
  return h.hexdigest()[:16]


def _flat(params) -> dict:
  from camp_jax import bundle  # pylint: disable=g-import-not-at-top
  return bundle.flatten_params(params)


def _pad_to(x: np.ndarray, rows: int) -> np.ndarray:
  if len(x) == rows:
    return x
  return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


@functools.lru_cache(maxsize=None)
def _shortlist_fn(model, side: str):
  """Jitted (variables, emb[, mask]) -> L2-normalised vectors of one side."""
  if not hasattr(model, "shortlist_embeddings"):  # VSE: its score is the pooled cosine.
    fn = pooled_image if side == "images" else pooled_caption
    return jax.jit(lambda variables, *args: fn(*args))

  def vectors(variables, *args):
    d = model.embed_dim
    if side == "images":  # The other side is a dummy: each side is independent of the other.
      img, cap, mask = args[0], jnp.zeros((1, 1, d), args[0].dtype), jnp.ones((1, 1), bool)
    else:
      img, (cap, mask) = jnp.zeros((1, 1, d), args[0].dtype), args
    out = model.apply(variables, img, cap, mask, method="shortlist_embeddings")
    return out[0] if side == "images" else out[1]

  return jax.jit(vectors)


def encode_images(predictor, features: np.ndarray,
                  batch: int = _IMAGE_BATCH) -> tuple[np.ndarray, np.ndarray]:
  """(N, R, img_dim) -> region embeddings (N, R, d), shortlist vectors (N, d), in batches."""
  n = len(features)
  batch = min(batch, n)
  embs, vecs = [], []
  for start in range(0, n, batch):
    chunk = _pad_to(np.asarray(features[start:start + batch], np.float32), batch)
    emb = predictor.encode_images(chunk)
    vec = _shortlist_fn(predictor.model, "images")(predictor.variables, emb)
    stop = min(batch, n - start)
    embs.append(emb[:stop])
    vecs.append(np.asarray(vec)[:stop])
  return np.concatenate(embs), np.concatenate(vecs)


def encode_captions(predictor, tokens: np.ndarray, lengths: np.ndarray,
                    batch: int = _CAPTION_BATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(M, T), (M,) -> word embeddings (M, L, d), mask (M, L), shortlist vectors (M, d).

  L is the longest caption unless the model pads to a fixed number of slots (its scores
  then depend on them), so exact scores come out as from the untrimmed embeddings.
  """
  m = len(tokens)
  batch = min(batch, m)
  embs, masks, vecs = [], [], []
  for start in range(0, m, batch):
    stop = min(batch, m - start)
    tok = _pad_to(tokens[start:start + batch], batch)
    lens = _pad_to(lengths[start:start + batch], batch)
    lens[stop:] = 1
    emb, mask = predictor.encode_captions(tok, lens)
    vec = _shortlist_fn(predictor.model, "captions")(predictor.variables, emb, mask)
    embs.append(emb[:stop])
    masks.append(mask[:stop])
    vecs.append(np.asarray(vec)[:stop])
  emb, mask = np.concatenate(embs), np.concatenate(masks)
  if predictor.model_config.get("pad_words_to") is None:
    longest = int(lengths.max())
    emb, mask = emb[:, :longest], mask[:, :longest]
  return emb, mask, np.concatenate(vecs)


def _require_vocab(predictor, what: str):
  if predictor.vocab is None:
    raise ValueError(f"the bundle has no vocab.json; {what} needs the vocabulary the model "
                     "was trained with (export or convert it with one)")
  return predictor.vocab


class Gallery:
  """One split of a precomp folder with its encoder outputs, encoded once and cached.

  Attributes:
    split: the `PrecompSplit` (features memory-mapped).
    encoded: the sides ("images", "captions") this object had to encode (cache misses).
  """

  def __init__(self, predictor: inference.Predictor, data_dir: str | os.PathLike,
               split: str = "test", cache_dir: str | os.PathLike | None = None,
               log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)):
    self.predictor, self.log = predictor, log
    self.data_dir, self.split_name = pathlib.Path(data_dir), split
    self.ims_path = self.data_dir / f"{split}_ims.npy"
    self.caps_path = self.data_dir / f"{split}_caps.txt"
    check_feature_size(self.ims_path, predictor.model_config["img_dim"])
    self.split = precomp.read_split(self.data_dir, split, check_finite=False)
    self.cache_dir = pathlib.Path(cache_dir) if cache_dir else self.data_dir / CACHE_DIR
    self.encoded: list[str] = []
    self._key = None
    self._sides = {}

  @property
  def num_images(self) -> int:
    return self.split.num_images

  def _stamp(self) -> dict:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in (self.ims_path,
                                                                       self.caps_path)}

  def _cache_file(self, side: str) -> pathlib.Path:
    if self._key is None:
      self._key = predictor_hash(self.predictor)
    return self.cache_dir / f"{self._key}-{self.split_name}-{side}.npz"

  def _load_or_encode(self, side: str, encode: Callable[[], dict]) -> dict:
    if side in self._sides:
      return self._sides[side]
    path, stamp = self._cache_file(side), json.dumps(self._stamp(), sort_keys=True)
    arrays = None
    if path.is_file():
      try:
        with np.load(path) as z:
          if str(z["stamp"]) == stamp and int(z["version"]) == _CACHE_VERSION:
            arrays = {k: z[k] for k in z.files if k not in ("stamp", "version")}
      except (OSError, ValueError, KeyError) as e:
        self.log(f"warning: ignoring unreadable cache {path} ({e})")
    if arrays is None:
      start = time.perf_counter()
      arrays = encode()
      self.encoded.append(side)
      self.log(f"encoded {side} of {self.data_dir}/{self.split_name} in "
               f"{time.perf_counter() - start:.1f} s")
      try:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, stamp=stamp, version=_CACHE_VERSION, **arrays)
        os.replace(tmp, path)
      except OSError as e:
        self.log(f"warning: could not write the cache {path} ({e}); continuing without it")
    self._sides[side] = arrays
    return arrays

  def images(self) -> dict:
    """{"emb": (N, R, d), "vec": (N, d)}."""
    def encode():
      precomp.assert_finite(self.split.images, str(self.ims_path))
      emb, vec = encode_images(self.predictor, self.split.images)
      return {"emb": emb, "vec": vec}
    return self._load_or_encode("images", encode)

  def captions(self) -> dict:
    """{"emb": (M, L, d), "mask": (M, L), "vec": (M, d)}."""
    def encode():
      vocab = _require_vocab(self.predictor, f"encoding {self.caps_path}")
      tokens, lengths = tokenizer.encode_all(self.split.captions, vocab)
      emb, mask, vec = encode_captions(self.predictor, tokens, lengths)
      return {"emb": emb, "mask": mask, "vec": vec}
    return self._load_or_encode("captions", encode)


def check_feature_size(ims_path: str | os.PathLike, img_dim: int) -> None:
  """Reads only the .npy header; raises if the region features are not (N, R, img_dim)."""
  ims_path = pathlib.Path(ims_path)
  if not ims_path.is_file():
    raise FileNotFoundError(f"{ims_path}: no such gallery feature file (expected a precomp "
                            "folder with {split}_ims.npy and {split}_caps.txt)")
  shape = np.load(ims_path, mmap_mode="r", allow_pickle=False).shape
  if len(shape) != 3 or shape[-1] != img_dim:
    raise ValueError(f"{ims_path}: region features have shape {shape}, but the bundle's model "
                     f"expects (images, regions, {img_dim}) (model img_dim={img_dim})")


# ---------------------------------------------------------------------------------------------
# Queries.


@dataclasses.dataclass
class Hits:
  """Ranked results: gallery indices (top,), exact CAMP scores (NaN past the shortlist) and
  stage-1 cosines, plus the query's words that the vocabulary does not know."""
  indices: np.ndarray
  scores: np.ndarray
  shortlist_scores: np.ndarray
  unknown_words: list[str] = dataclasses.field(default_factory=list)


def encode_query(predictor, query: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
  """A sentence -> (word embeddings (1, L, d), mask (1, L), vector (1, d), unknown words)."""
  vocab = _require_vocab(predictor, "a text query")
  if not isinstance(query, str) or not tokenizer.tokenize(query):
    raise ValueError(f"empty query {query!r}: give a sentence with at least one word, "
                     "e.g. --query \"a man riding a horse\"")
  unknown = tokenizer.unknown_words(query, vocab)
  ids = tokenizer.encode(query, vocab)
  emb, mask, vec = encode_captions(predictor, ids[None], np.array([len(ids)], np.int32))
  return emb, mask, vec, unknown


def _rerank(order: np.ndarray, shortlist_scores: np.ndarray, exact: np.ndarray, top: int) -> Hits:
  """Top-K by exact score first, then the rest of `order`; returns the first `top`."""
  k = len(exact)
  first = np.argsort(-exact, kind="stable")
  indices = np.concatenate([order[:k][first], order[k:]])[:top]
  scores = np.concatenate([exact[first], np.full(len(order) - k, np.nan, np.float32)])[:top]
  return Hits(indices, scores, shortlist_scores[indices])


def text_to_image(predictor, gallery: Gallery, query: str, top: int = 10,
                  shortlist: int = 100) -> Hits:
  """The `top` images for a sentence: shortlist of `shortlist`, exact CAMP rescoring."""
  emb, mask, vec, unknown = encode_query(predictor, query)
  images = gallery.images()
  cosine = (images["vec"] @ vec[0]).astype(np.float32)                    # (N,)
  order = np.argsort(-cosine, kind="stable")
  k = max(1, min(shortlist, len(order)))
  exact = score_pairs(predictor, images["emb"], emb, mask, order[:k], np.zeros(k, int))
  hits = _rerank(order, cosine, exact, top)
  hits.unknown_words = unknown
  return hits


def image_to_text(predictor, gallery: Gallery, image: int, top: int = 10,
                  shortlist: int = 100) -> Hits:
  """The `top` captions of the split for image `image`."""
  if not 0 <= image < gallery.num_images:
    raise IndexError(f"--image {image} is outside the split "
                     f"{gallery.data_dir}/{gallery.split_name} of {gallery.num_images} images")
  images, captions = gallery.images(), gallery.captions()
  cosine = (captions["vec"] @ images["vec"][image]).astype(np.float32)    # (M,)
  order = np.argsort(-cosine, kind="stable")
  k = max(1, min(shortlist, len(order)))
  exact = score_pairs(predictor, images["emb"], captions["emb"], captions["mask"],
                      np.full(k, image), order[:k])
  return _rerank(order, cosine, exact, top)


# ---------------------------------------------------------------------------------------------
# Shortlist + rerank against exhaustive scoring.


@functools.lru_cache(maxsize=None)
def _reference_pair_fn(model):
  """Jitted exact scores of P given pairs: (P, R, d), (P, L, d), (P, L) -> (P,)."""
  def one(variables, regions, words, mask):
    return model.apply(variables, regions[None], words[None], mask[None],
                       method="score_matrix")[0, 0]
  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


def _fast_config(model) -> tuple[str, int | None] | None:
  """(variant, stage-1 slot count) when `camp_jax.scoring`'s hoisted path applies, else None."""
  if not all(hasattr(scoring, f) for f in ("image_features", "caption_features",
                                           "pair_scores")):
    return None
  variant = getattr(model, "variant", None)
  if variant is None:
    return None
  return variant, model.pad_words_to if variant == "cross_attention" else None


@functools.lru_cache(maxsize=None)
def _features_fn(side: str, variant: str):
  if side == "images":
    return jax.jit(lambda fp, emb: scoring.image_features(fp, emb, variant))
  return jax.jit(lambda fp, emb, mask: scoring.caption_features(fp, emb, mask, variant))


@functools.lru_cache(maxsize=None)
def _fast_pair_fn(variant: str, pad: int | None):
  """Jitted scores of pairs (i[p], c[p]) from per-item features of the fast path: (P,)."""
  def one(fp, img, cap):
    img, cap = (jax.tree.map(lambda x: x[None], f) for f in (img, cap))
    return scoring.pair_scores(fp, img, cap, variant, pad)[0, 0]

  def fn(fp, img_feats, cap_feats, i, c):
    img = jax.tree.map(lambda x: x[i], img_feats)
    cap = jax.tree.map(lambda x: x[c], cap_feats)
    return jax.vmap(one, in_axes=(None, 0, 0))(fp, img, cap)

  return jax.jit(fn)


def _bucket(n: int, most: int) -> int:
  """A tile size for n items: the next power of two (at least 16), at most `most`."""
  return min(most, 1 << max(4, (n - 1).bit_length()))


def _features(side, variant, fp, *arrays):
  """Per-item fast-path features in fixed-size chunks (few compilations), as device arrays."""
  n = len(arrays[0])
  chunk = _bucket(n, _PAIR_TILE)
  parts = [_features_fn(side, variant)(fp, *(_pad_to(a[s:s + chunk], chunk) for a in arrays))
           for s in range(0, n, chunk)]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:n], *parts)


def score_pairs(predictor, img_emb, cap_emb, cap_mask, img_index, cap_index,
                tile: int = _PAIR_TILE) -> np.ndarray:
  """Exact CAMP scores of the pairs (img_index[p], cap_index[p]): (P,).

  Reranking has no image x caption grid to share work across, so pairs are scored directly:
  for CAMP through `camp_jax.scoring`'s hoisted path (per-image and per-caption features
  computed once for the items involved, then only the per-pair part per pair), otherwise
  through the model's own score. Tiles have power-of-two sizes, so few shapes compile.
  """
  img_index, cap_index = np.asarray(img_index), np.asarray(cap_index)
  out = np.empty(len(img_index), np.float32)
  if not len(out):
    return out
  tile = _bucket(len(img_index), tile)
  fast = _fast_config(predictor.model)
  if fast is None:
    fn = _reference_pair_fn(predictor.model)
    for start in range(0, len(out), tile):
      i = _pad_to(img_index[start:start + tile], tile)
      c = _pad_to(cap_index[start:start + tile], tile)
      scores = fn(predictor.variables, img_emb[i], cap_emb[c], cap_mask[c])
      out[start:start + tile] = np.asarray(scores)[:len(out) - start]
    return out
  variant, pad = fast
  fp = predictor.variables["params"]["fusion"]
  images, img_local = np.unique(img_index, return_inverse=True)
  captions, cap_local = np.unique(cap_index, return_inverse=True)
  img_feats = _features("images", variant, fp, np.asarray(img_emb[images], np.float32))
  cap_feats = _features("captions", variant, fp, np.asarray(cap_emb[captions], np.float32),
                        np.asarray(cap_mask[captions], bool))
  fn = _fast_pair_fn(variant, pad)
  for start in range(0, len(out), tile):
    i = _pad_to(img_local[start:start + tile], tile)
    c = _pad_to(cap_local[start:start + tile], tile)
    out[start:start + tile] = np.asarray(fn(fp, img_feats, cap_feats, i, c))[:len(out) - start]
  return out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k best of each row, best first: (Q, n) -> (Q, k)."""
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
      np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
  rows = np.arange(len(scores))[:, None]
  return part[rows, np.argsort(-scores[rows, part], axis=1, kind="stable")]


def _reranked_ranks(short: np.ndarray, top: np.ndarray, exact: np.ndarray,
                    own: np.ndarray) -> np.ndarray:
  """0-based rank of each query's best ground truth after reranking (ties count against it).

  Args:
    short: (Q, n) stage-1 scores.
    top: (Q, K) shortlisted indices.
    exact: (Q, K) exact scores of the shortlisted items.
    own: (Q, n) bool, the ground truths of each query.
  """
  rows = np.arange(len(short))[:, None]
  own_top = own[rows, top]                                                  # (Q, K)
  best_top = np.where(own_top, exact, -np.inf).max(axis=1)                  # (Q,)
  in_top = own_top.any(axis=1)
  rank_top = np.sum(~own_top & (exact >= best_top[:, None]), axis=1)
  best_short = np.where(own, short, -np.inf).max(axis=1)
  rank_short = np.sum(~own & (short >= best_short[:, None]), axis=1)
  # A ground truth outside the shortlist comes after all K shortlisted items.
  return np.where(in_top, rank_top, np.maximum(rank_short, top.shape[1] - own_top.sum(1)))


def _recalls(ranks: np.ndarray) -> dict:
  return {f"r{k}": 100.0 * float(np.mean(ranks < k)) for k in (1, 5, 10)}


def shortlist_rerank_recall(predictor, split: precomp.PrecompSplit,
                            ks=(5, 10, 20, 50, 100), *, gallery: Gallery | None = None,
                            exhaustive: np.ndarray | None = None,
                            log: Callable[[str], None] = lambda s: None) -> list[dict]:
  """Recall of shortlist + exact rerank against exhaustive CAMP scoring, per K.

  Args:
    predictor: an `inference.Predictor` with a vocabulary.
    split: the precomp split; caption j belongs to image j // captions_per_image.
    ks: shortlist sizes (clipped to the number of candidates per direction).
    gallery: optional `Gallery` of that split (reuses its cached encoder outputs).
    exhaustive: optional precomputed exact (N, M) score matrix.
    log: progress messages.

  Returns:
    Rows {"k", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", ..., "i2t_pairs", "t2i_pairs"
    (fraction of the N x M pairs scored), "i2t_seconds", "t2i_seconds", "i2t_speedup",
    "t2i_speedup"}: first "exhaustive" (k = None), then "shortlist only" (k = 0), then one
    per K. Seconds exclude encoding, which both paths share, and compilation (the exhaustive
    matrix is computed twice, the second time timed).
  """
  cpi = split.captions_per_image
  if gallery is not None:
    img, cap = gallery.images(), gallery.captions()
    img_emb, img_vec = img["emb"], img["vec"]
    cap_emb, cap_mask, cap_vec = cap["emb"], cap["mask"], cap["vec"]
  else:
    vocab = _require_vocab(predictor, "evaluating captions")
    img_emb, img_vec = encode_images(predictor, split.images)
    cap_emb, cap_mask, cap_vec = encode_captions(predictor,
                                                 *tokenizer.encode_all(split.captions, vocab))
  n, m = len(img_emb), len(cap_emb)
  if exhaustive is None:  # The first run also compiles every tile shape; the second is timed.
    exhaustive = predictor.score_matrix(img_emb, cap_emb, cap_mask)
  start = time.perf_counter()
  predictor.score_matrix(img_emb, cap_emb, cap_mask)
  exhaustive_s = time.perf_counter() - start
  log(f"exhaustive {n} x {m} scores in {exhaustive_s:.2f} s")
  full = evaluate.recall_metrics(exhaustive, cpi)
  rows = [{"k": None, **{f"{d}_r{k}": full[f"{d}_r{k}"] for d in ("i2t", "t2i")
                         for k in (1, 5, 10)},
           "i2t_pairs": 1.0, "t2i_pairs": 1.0, "i2t_seconds": exhaustive_s,
           "t2i_seconds": exhaustive_s, "i2t_speedup": 1.0, "t2i_speedup": 1.0}]

  start = time.perf_counter()
  short = img_vec @ cap_vec.T                                               # (N, M)
  short_s = time.perf_counter() - start
  own_i2t = (np.arange(m)[None] // cpi) == np.arange(n)[:, None]            # (N, M)
  stage1 = evaluate.recall_metrics(short, cpi)
  rows.append({"k": 0, **{f"{d}_r{k}": stage1[f"{d}_r{k}"] for d in ("i2t", "t2i")
                          for k in (1, 5, 10)},
               "i2t_pairs": 0.0, "t2i_pairs": 0.0, "i2t_seconds": short_s,
               "t2i_seconds": short_s, "i2t_speedup": exhaustive_s / max(short_s, 1e-9),
               "t2i_speedup": exhaustive_s / max(short_s, 1e-9)})

  for k in ks:
    row = {"k": int(k)}
    for direction, queries, candidates, own in (("i2t", n, m, own_i2t),
                                                ("t2i", m, n, own_i2t.T)):
      kk = max(1, min(int(k), candidates))
      s = short if direction == "i2t" else short.T

      def shortlist_and_rerank(s=s, kk=kk, queries=queries, direction=direction):
        top = _top_k(s, kk)                                                 # (Q, K)
        q = np.repeat(np.arange(queries), kk)
        i, c = (q, top.ravel()) if direction == "i2t" else (top.ravel(), q)
        return top, score_pairs(predictor, img_emb, cap_emb, cap_mask, i, c).reshape(-1, kk)

      shortlist_and_rerank()  # Compiles this K's shapes; the second run is timed.
      start = time.perf_counter()
      top, exact = shortlist_and_rerank()
      seconds = short_s + time.perf_counter() - start
      ranks = _reranked_ranks(s, top, exact, own)
      row.update({f"{direction}_{key}": v for key, v in _recalls(ranks).items()})
      row[f"{direction}_pairs"] = kk / candidates
      row[f"{direction}_seconds"] = seconds
      row[f"{direction}_speedup"] = exhaustive_s / max(seconds, 1e-9)
    log(f"K={k}: i2t R@1 {row['i2t_r1']:.1f}, t2i R@1 {row['t2i_r1']:.1f}")
    rows.append(row)
  return rows


def format_recall_table(rows: list[dict]) -> str:
  """A text table of `shortlist_rerank_recall` rows; R@1 also as % of the exhaustive R@1."""
  base = rows[0]
  head = (f"{'K':>10} | {'i2t R@1':>7} {'R@5':>5} {'R@10':>5} {'%exh':>6} {'pairs':>6} "
          f"{'speed':>6} | {'t2i R@1':>7} {'R@5':>5} {'R@10':>5} {'%exh':>6} {'pairs':>6} "
          f"{'speed':>6}")
  lines = [head, "-" * len(head)]
  for row in rows:
    name = "exhaustive" if row["k"] is None else "stage 1" if row["k"] == 0 else str(row["k"])
    cells = []
    for d in ("i2t", "t2i"):
      rel = 100.0 * row[f"{d}_r1"] / base[f"{d}_r1"] if base[f"{d}_r1"] else float("nan")
      cells.append(f"{row[f'{d}_r1']:7.1f} {row[f'{d}_r5']:5.1f} {row[f'{d}_r10']:5.1f} "
                   f"{rel:5.1f}% {100 * row[f'{d}_pairs']:5.1f}% {row[f'{d}_speedup']:5.1f}x")
    lines.append(f"{name:>10} | {cells[0]} | {cells[1]}")
  lines.append("%exh: R@1 as a percentage of exhaustive R@1; pairs: fraction of image-caption "
               "pairs scored exactly; speed: exhaustive seconds / (stage 1 + rerank) seconds.")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.


def _print_hits(hits: Hits, describe: Callable[[int], str]) -> None:
  print(f"{'rank':>4}  {'index':>6}  {'CAMP':>7}  {'stage 1':>7}  ")
  for rank, (i, s, c) in enumerate(zip(hits.indices, hits.scores, hits.shortlist_scores), 1):
    camp = "      -" if np.isnan(s) else f"{s:7.4f}"
    print(f"{rank:>4}  {int(i):>6}  {camp}  {c:7.4f}  {describe(int(i))}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m camp_jax.search", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--bundle", required=True, help="inference bundle folder")
  parser.add_argument("--gallery", required=True, metavar="DIR", help="precomp folder")
  parser.add_argument("--split", default="test", help="split of the gallery (default: test)")
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--query", help="sentence to search images for")
  mode.add_argument("--image", type=int, metavar="INDEX", help="image to search captions for")
  mode.add_argument("--evaluate-shortlist", action="store_true",
                    help="print recall of shortlist + rerank vs exhaustive scoring per K")
  parser.add_argument("--top", type=int, default=10, help="results to print")
  parser.add_argument("--shortlist", type=int, default=100, metavar="K",
                      help="candidates rescored with the exact CAMP score")
  parser.add_argument("--ks", default="5,10,20,50,100",
                      help="shortlist sizes for --evaluate-shortlist, comma-separated")
  parser.add_argument("--cache-dir", help=f"cache folder (default: DIR/{CACHE_DIR})")
  args = parser.parse_args(argv)
  if args.top < 1 or args.shortlist < 1:
    parser.error("--top and --shortlist must be positive")
  try:
    ks = tuple(int(k) for k in args.ks.split(","))
  except ValueError:
    parser.error(f"--ks is {args.ks!r}, expected comma-separated integers such as 10,50,100")
  if args.query is not None and not args.query.strip():
    parser.error("--query is empty: give a sentence, e.g. --query \"a man riding a horse\"")
  try:
    predictor = inference.load(args.bundle)
    gallery = Gallery(predictor, args.gallery, args.split, args.cache_dir)
    where = f"{args.gallery}/{args.split}"
    if args.query is not None:
      hits = text_to_image(predictor, gallery, args.query, args.top, args.shortlist)
      if hits.unknown_words:
        print(f"warning: unknown words mapped to <unk>: {', '.join(hits.unknown_words)}",
              file=sys.stderr)
      print(f"text -> image in {where} ({gallery.num_images} images, shortlist "
            f"{min(args.shortlist, gallery.num_images)}): {args.query!r}")
      _print_hits(hits, lambda i: f"image {i}")
    elif args.image is not None:
      hits = image_to_text(predictor, gallery, args.image, args.top, args.shortlist)
      cpi = gallery.split.captions_per_image
      print(f"image -> text in {where} for image {args.image} ({gallery.split.num_captions} "
            f"captions, shortlist {min(args.shortlist, gallery.split.num_captions)}; "
            "* = its own caption)")
      _print_hits(hits, lambda j: ("* " if j // cpi == args.image else "  ")
                  + gallery.split.captions[j])
    else:
      rows = shortlist_rerank_recall(predictor, gallery.split, ks, gallery=gallery,
                                     log=lambda s: print(s, file=sys.stderr))
      print(f"shortlist + rerank vs exhaustive CAMP on {where} ({gallery.num_images} images, "
            f"{gallery.split.num_captions} captions)")
      print(format_recall_table(rows))
  except (FileNotFoundError, ValueError, IndexError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
