"""Caption tokenisation as in SCAN/VSE++/CAMP: lower-cased nltk Treebank words.

The original calls `nltk.word_tokenize(caption.lower())`, which first splits
sentences with the punkt model. Punkt data cannot be downloaded here, so
`tokenize` splits sentences itself after `.`, `!` or `?` followed by white
space unless the word is a known abbreviation or a single letter (the cases
where punkt keeps a period on its word), then runs nltk's `NLTKWordTokenizer`
(no data needed) on each sentence. Simple captions take a fast path that gives
the same tokens (tests check it against the nltk path).
"""
import functools
import re

import numpy as np
from nltk.tokenize import NLTKWordTokenizer

PAD, START, END, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")
MAX_WORDS = 47  # Words kept per caption; with <start>/<end> at most 49 ids.

# Common punkt abbreviations that keep their period when followed by a word.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc e.g i.e u.s u.k no prof mt ft ave inc co ltd".split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words the Treebank tokenizer splits although they are plain letters.
_SPLIT_WORDS = frozenset("cannot gimme gonna gotta lemme wanna whaddya whatcha".split())
# Words, numbers and hyphenations with commas before white space and a final
# period: the Treebank rules only split off those commas and that period.
_FAST_WORD = r"(?:[a-z0-9]+(?:-[a-z0-9]+)*,?|,)"
_FAST = re.compile(rf"\s*{_FAST_WORD}(?:\s+{_FAST_WORD})*(?:\s*\.)?\s*")


@functools.cache
def _word_tokenizer() -> NLTKWordTokenizer:
  return NLTKWordTokenizer()


def _split_sentences(text: str) -> list[str]:
  sentences, start = [], 0
  for m in _SENTENCE_END.finditer(text):
    last_word = text[start:m.start()].rsplit(None, 1)[-1].rstrip(".!?")
    if text[m.start() - 1] == "." and (
        last_word in _ABBREVIATIONS or len(last_word) == 1 or text[m.start() - 2] == "."):
      continue  # Abbreviation, initial or ellipsis: punkt keeps the sentence going.
    sentences.append(text[start:m.start()])
    start = m.end()
  sentences.append(text[start:])
  return sentences


def _fast_tokenize(text: str) -> list[str] | None:
  """Tokens of a caption that `_FAST` matches, else None."""
  if not _FAST.fullmatch(text):
    return None
  text = text.rstrip()
  if text.endswith("."):
    text = text[:-1] + " ."
  tokens = text.replace(",", " , ").split()
  return None if _SPLIT_WORDS.intersection(tokens) else tokens


def tokenize(caption: str) -> list[str]:
  """Lower-cased Treebank tokens of `caption`, e.g. 'A dog.' -> ['a', 'dog', '.']."""
  if not isinstance(caption, str):
    raise TypeError(f"caption must be str (decoded UTF-8), got {type(caption).__name__}: "
                    f"{caption!r:.80}")
  text = caption.lower()
  tokens = _fast_tokenize(text)
  if tokens is not None:
    return tokens
  tok = _word_tokenizer()
  return [t for sentence in _split_sentences(text.strip()) for t in tok.tokenize(sentence)]


def encode(caption: str, vocab, max_words: int = MAX_WORDS) -> np.ndarray:
  """Ids [<start>, w_1..w_k, <end>] with k <= max_words; int32 (k + 2,)."""
  words = tokenize(caption)[:max_words]
  return np.array([START, *(vocab(w) for w in words), END], np.int32)


def unknown_words(caption: str, vocab) -> list[str]:
  """The words of `caption` (in order, repeats kept) that map to <unk>."""
  return [w for w in tokenize(caption) if w not in vocab]


def encode_all(captions, vocab, max_words: int = MAX_WORDS) -> tuple[np.ndarray, np.ndarray]:
  """Encodes many captions: tokens int32 (C, max_words + 2) padded with PAD, lengths (C,)."""
  tokens = np.zeros((len(captions), max_words + 2), np.int32)
  lengths = np.zeros((len(captions),), np.int32)
  for i, caption in enumerate(captions):
    ids = encode(caption, vocab, max_words)
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return tokens, lengths
