"""Word vocabulary: build from captions, save as JSON, import community files.

Files read by `load_vocab`:
  * SCAN-style JSON `{"word2idx": {w: i}, "idx2word": {"i": w}, "idx": n}`;
  * pickled `vocab.Vocabulary` objects (SCAN/VSE++/CAMP releases, protocol 2,
    attributes `word2idx`, `idx2word`, `idx`). They are read with an
    Unpickler that maps that one class to a plain stand-in and refuses every
    other global, so no code from the file runs.
Ids come out exactly as stored, so embedding rows of imported checkpoints line up.
"""
import collections
import json
import os
import pathlib
import pickle
from typing import Iterable, Mapping

from camp_jax.data import tokenizer


class Vocabulary:
  """word <-> id map with <pad>=0, <start>=1, <end>=2, <unk>=3.

  `path`: the file `load_vocab` read it from (None if built in memory).
  """
  path: pathlib.Path | None = None

  def __init__(self, words: Iterable[str] = ()):
    self.word2idx: dict[str, int] = {}
    self.idx2word: dict[int, str] = {}
    for word in (*tokenizer.SPECIAL_TOKENS, *words):
      self.add_word(word)

  @classmethod
  def from_word2idx(cls, word2idx: Mapping[str, int], source: str = "<memory>") -> "Vocabulary":
    """Keeps the given ids; they must be 0..n-1 with the special tokens first."""
    ids = sorted(word2idx.values())
    if ids != list(range(len(ids))):
      missing = sorted(set(range(len(ids))) - set(ids))[:5]
      raise ValueError(f"{source}: ids must be 0..{len(ids) - 1} without gaps or repeats; "
                       f"missing e.g. {missing}")
    for expected_id, word in enumerate(tokenizer.SPECIAL_TOKENS):
      if word2idx.get(word) != expected_id:
        raise ValueError(f"{source}: expected {word!r} to have id {expected_id}, "
                         f"got {word2idx.get(word)}")
    vocab = cls.__new__(cls)
    vocab.word2idx = dict(word2idx)
    vocab.idx2word = {i: w for w, i in vocab.word2idx.items()}
    return vocab

  @property
  def idx(self) -> int:
    return len(self.word2idx)

  def add_word(self, word: str) -> None:
    if word not in self.word2idx:
      self.idx2word[len(self.word2idx)] = word
      self.word2idx[word] = len(self.word2idx)

  def __call__(self, word: str) -> int:
    return self.word2idx.get(word, tokenizer.UNK)

  def __contains__(self, word: str) -> bool:
    return word in self.word2idx

  def __len__(self) -> int:
    return len(self.word2idx)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.word2idx == other.word2idx

  def __repr__(self) -> str:
    return f"Vocabulary({len(self)} words)"

  def to_json_dict(self) -> dict:
    return {"word2idx": self.word2idx,
            "idx2word": {str(i): w for i, w in self.idx2word.items()},
            "idx": self.idx}

  def save_json(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_json_dict(), f, ensure_ascii=False)


def build_vocab(captions: Iterable[str], threshold: int = 4) -> Vocabulary:
  """Words seen at least `threshold` times, in order of first appearance (as SCAN)."""
  counter = collections.Counter()
  for caption in captions:
    counter.update(tokenizer.tokenize(caption))
  return Vocabulary(w for w, count in counter.items() if count >= threshold)


class _PickledVocabulary:
  """Stand-in for `vocab.Vocabulary`: receives the pickled attributes, nothing else."""

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise pickle.UnpicklingError(f"expected a dict of attributes, got {type(state).__name__}")
    self.state = state


def _reconstruct(cls, base, state):  # copyreg._reconstructor of protocols 0/1.
  if cls is not _PickledVocabulary or base is not object or state is not None:
    raise pickle.UnpicklingError("unexpected copyreg._reconstructor call")
  return _PickledVocabulary()


class _VocabUnpickler(pickle.Unpickler):
  _ALLOWED = {("vocab", "Vocabulary"): _PickledVocabulary,
              ("__main__", "Vocabulary"): _PickledVocabulary,
              ("copy_reg", "_reconstructor"): _reconstruct,
              ("copyreg", "_reconstructor"): _reconstruct,
              ("__builtin__", "object"): object,
              ("builtins", "object"): object}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f"refusing global {module}.{name}: only vocab.Vocabulary "
                                 "objects are read")


def _from_pickle(path: str) -> Vocabulary:
  with open(path, "rb") as f:
    try:
      # Python 2 `str` words arrive as bytes strings; decode them as UTF-8.
      obj = _VocabUnpickler(f, encoding="utf-8").load()
    except (pickle.UnpicklingError, UnicodeDecodeError, EOFError, ValueError) as e:
      raise ValueError(f"{path}: not a pickled vocab.Vocabulary ({e})") from e
  if not isinstance(obj, _PickledVocabulary):
    raise ValueError(f"{path}: expected a pickled vocab.Vocabulary, got {type(obj).__name__}")
  return _from_fields(obj.state, path)


def _from_fields(fields: Mapping, path: str) -> Vocabulary:
  word2idx = fields.get("word2idx")
  if not isinstance(word2idx, dict) or not all(
      isinstance(w, str) and isinstance(i, int) for w, i in word2idx.items()):
    raise ValueError(f"{path}: field 'word2idx' must map str -> int")
  vocab = Vocabulary.from_word2idx(word2idx, source=path)
  idx2word = fields.get("idx2word")
  if idx2word is not None:
    pairs = enumerate(idx2word) if isinstance(idx2word, list) else idx2word.items()
    for i, word in pairs:
      if vocab.idx2word.get(int(i)) != word:
        raise ValueError(f"{path}: idx2word[{i!r}] = {word!r} but word2idx gives "
                         f"{vocab.idx2word.get(int(i))!r}")
    if len(idx2word) != len(vocab):
      raise ValueError(f"{path}: idx2word has {len(idx2word)} entries, word2idx {len(vocab)}")
  if "idx" in fields and fields["idx"] != len(vocab):
    raise ValueError(f"{path}: field 'idx' is {fields['idx']}, expected {len(vocab)}")
  return vocab


def load_vocab(path: str | os.PathLike) -> Vocabulary:
  """Reads a SCAN-style JSON or a pickled `vocab.Vocabulary`, detected by content."""
  vocab = _read(os.fspath(path))
  vocab.path = pathlib.Path(path)
  return vocab


def _read(path: str) -> Vocabulary:
  with open(path, "rb") as f:
    head = f.read(64)
  if head[:1] == b"\x80" or head[:1] in (b"c", b"("):  # Pickle PROTO opcode or protocol 0.
    return _from_pickle(path)
  if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
    with open(path, encoding="utf-8-sig") as f:
      try:
        fields = json.load(f)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON vocabulary ({e})") from e
    return _from_fields(fields, path)
  raise ValueError(f"{path}: unknown vocabulary format (starts with {head[:8]!r}); expected a "
                   "JSON object {'word2idx', 'idx2word', 'idx'} or a pickled vocab.Vocabulary")
