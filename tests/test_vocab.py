"""Tests for camp_jax.data.vocab: build, JSON round trip, community file import."""
import json
import pickle
import sys
import types

import pytest

from camp_jax.data import vocab as vocab_lib


def test_build_vocab_threshold_and_order():
  vocab = vocab_lib.build_vocab(["A dog runs.", "a dog sits", "a cat"], threshold=2)
  assert vocab.idx2word == {0: "<pad>", 1: "<start>", 2: "<end>", 3: "<unk>", 4: "a", 5: "dog"}
  assert vocab("dog") == 5 and vocab("cat") == 3 and "cat" not in vocab and "a" in vocab
  assert len(vocab) == 6


def test_json_round_trip(tmp_path):
  vocab = vocab_lib.build_vocab(["a dog", "a café"], threshold=1)
  path = tmp_path / "vocab.json"
  vocab.save_json(path)
  fields = json.loads(path.read_text(encoding="utf-8"))
  assert set(fields) == {"word2idx", "idx2word", "idx"}
  assert fields["idx2word"]["6"] == "café" and fields["idx"] == 7
  assert vocab_lib.load_vocab(path) == vocab


def test_scan_json_keeps_ids(tmp_path):
  words = ["<pad>", "<start>", "<end>", "<unk>", "zebra", "apple"]
  path = tmp_path / "f30k_precomp_vocab.json"
  path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                              "idx2word": {str(i): w for i, w in enumerate(words)},
                              "idx": 6}))
  vocab = vocab_lib.load_vocab(path)
  assert vocab("zebra") == 4 and vocab("apple") == 5 and vocab.idx2word[5] == "apple"


def _pickle_vocab(path, word2idx, protocol=2, **extra):
  module = types.ModuleType("vocab")

  class Vocabulary:  # The SCAN class, as the original pickles it.
    def __init__(self):
      self.word2idx = dict(word2idx)
      self.idx2word = {i: w for w, i in word2idx.items()}
      self.idx = len(word2idx)
      self.__dict__.update(extra)

  Vocabulary.__module__, Vocabulary.__qualname__ = "vocab", "Vocabulary"
  module.Vocabulary = Vocabulary
  sys.modules["vocab"] = module
  try:
    with open(path, "wb") as f:
      pickle.dump(Vocabulary(), f, protocol=protocol)
  finally:
    del sys.modules["vocab"]


@pytest.mark.parametrize("protocol", [0, 2])
def test_pickled_vocabulary(tmp_path, protocol):
  words = ["<pad>", "<start>", "<end>", "<unk>", "man", "horse", "ñandú"]
  path = tmp_path / "f30k_precomp_vocab.pkl"
  _pickle_vocab(path, {w: i for i, w in enumerate(words)}, protocol=protocol)
  assert b"vocab" in path.read_bytes()[:40]
  vocab = vocab_lib.load_vocab(path)
  assert [vocab.idx2word[i] for i in range(len(words))] == words
  assert vocab("ñandú") == 6 and "vocab" not in sys.modules


class Evil:
  def __reduce__(self):
    return (print, ("pwned",))


def test_pickle_refuses_other_globals(tmp_path, capsys):
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(Evil(), protocol=2))
  with pytest.raises(ValueError, match=r"evil.pkl.*refusing global (__builtin__|builtins).print"):
    vocab_lib.load_vocab(path)
  assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("content, match", [
    (b"hello", "unknown vocabulary format"),
    (b"{not json", "invalid JSON"),
    (json.dumps({"word2idx": {"<pad>": 0, "a": 2}}).encode(), "without gaps"),
    (json.dumps({"word2idx": {"a": 0, "<start>": 1, "<end>": 2, "<unk>": 3}}).encode(),
     "'<pad>' to have id 0"),
    (json.dumps({"idx2word": {}}).encode(), "'word2idx' must map"),
])
def test_bad_vocab_files(tmp_path, content, match):
  path = tmp_path / "v.bin"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=match) as e:
    vocab_lib.load_vocab(path)
  assert "v.bin" in str(e.value)


def test_pickle_with_inconsistent_idx2word(tmp_path):
  path = tmp_path / "v.pkl"
  _pickle_vocab(path, {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}, idx=7)
  with pytest.raises(ValueError, match="field 'idx' is 7"):
    vocab_lib.load_vocab(path)
