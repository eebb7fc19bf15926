r"""Text-to-image and image-to-text search over a precomp split: shortlist, then exact CAMP.

  python -m camp_jax.search --bundle=B --data_dir=DIR [--split=test] --query="a man riding a horse"
  python -m camp_jax.search --bundle=B --data_dir=DIR --image=17   # captions for an image
  python -m camp_jax.search --bundle=B --data_dir=DIR --evaluate_shortlist [--ks=10,20,50,100]

Stage 1 ranks the whole split by one matrix product of independent vectors (the model's
`image_vectors` / `caption_vectors`: pooled, L2-normalised encoder outputs, aligned in
training by the `shortlist_loss_weight` VSE++ term); stage 2 rescores the top K
(`--shortlist=K`) with the exact CAMP score and puts them first; the rest keep their
stage-1 order. The split's encoder outputs are cached (`camp_jax.gallery`).
"""
import dataclasses

import numpy as np

from camp_jax import gallery as gallery_lib
from camp_jax.data import tokenizer


@dataclasses.dataclass
class Hits:
  """Ranked results: split indices (top,), exact CAMP scores (NaN past the shortlist) and
  stage-1 cosines, plus the query's words that the vocabulary does not know."""
  indices: np.ndarray
  scores: np.ndarray
  shortlist_scores: np.ndarray
  unknown_words: list[str] = dataclasses.field(default_factory=list)


def encode_query(predictor, query: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
  """A sentence -> (word embeddings (1, L, d), mask (1, L), vector (1, d), unknown words)."""
  vocab = gallery_lib.require_vocab(predictor, "a text query")
  if not isinstance(query, str) or not tokenizer.tokenize(query):
    raise ValueError(f"empty query {query!r}: give a sentence with at least one word, "
                     "e.g. --query=\"a man riding a horse\"")
  ids = tokenizer.encode(query, vocab)
  emb, mask = predictor.encode_captions(ids[None], np.array([len(ids)], np.int32))
  return emb, mask, predictor.caption_vectors(emb, mask), tokenizer.unknown_words(query, vocab)


def _rerank(order: np.ndarray, shortlist_scores: np.ndarray, exact: np.ndarray, top: int) -> Hits:
  """Top-K by exact score first, then the rest of `order`; returns the first `top`."""
  k = len(exact)
  first = np.argsort(-exact, kind="stable")
  indices = np.concatenate([order[:k][first], order[k:]])[:top]
  scores = np.concatenate([exact[first], np.full(len(order) - k, np.nan, np.float32)])[:top]
  return Hits(indices, scores, shortlist_scores[indices])


def text_to_image(predictor, gallery: gallery_lib.Gallery, query: str, top: int = 10,
                  shortlist: int = 100) -> Hits:
  """The `top` images for a sentence: shortlist of `shortlist`, exact CAMP rescoring."""
  emb, mask, vec, unknown = encode_query(predictor, query)
  images = gallery.images()
  cosine = (images["vec"] @ vec[0]).astype(np.float32)                    # (N,)
  order = np.argsort(-cosine, kind="stable")
  k = max(1, min(shortlist, len(order)))
  exact = predictor.score_pairs(images["emb"], emb, mask, order[:k], np.zeros(k, int))
  hits = _rerank(order, cosine, exact, top)
  hits.unknown_words = unknown
  return hits


def image_to_text(predictor, gallery: gallery_lib.Gallery, image: int, top: int = 10,
                  shortlist: int = 100) -> Hits:
  """The `top` captions of the split for image `image`."""
  if not 0 <= image < gallery.num_images:
    raise IndexError(f"--image={image} is outside the split "
                     f"{gallery.data_dir}/{gallery.split_name} of {gallery.num_images} images")
  images, captions = gallery.images(), gallery.captions()
  cosine = (captions["vec"] @ images["vec"][image]).astype(np.float32)    # (M,)
  order = np.argsort(-cosine, kind="stable")
  k = max(1, min(shortlist, len(order)))
  exact = predictor.score_pairs(images["emb"], captions["emb"], captions["mask"],
                                np.full(k, image), order[:k])
  return _rerank(order, cosine, exact, top)
