"""Tests for camp_jax.data.tokenizer."""
import numpy as np
import pytest

from camp_jax.data import tokenizer
from camp_jax.data import vocab as vocab_lib


@pytest.mark.parametrize("caption, expected", [
    ("A dog runs.", ["a", "dog", "runs", "."]),
    ("A man, who isn't tall, rides a horse. Then he stops.",
     ["a", "man", ",", "who", "is", "n't", "tall", ",", "rides", "a", "horse", ".", "then", "he",
      "stops", "."]),
    ("Two kids can't play; they're sad!", ["two", "kids", "ca", "n't", "play", ";", "they",
                                            "'re", "sad", "!"]),
    ("The dog's ball cannot fly", ["the", "dog", "'s", "ball", "can", "not", "fly"]),
    ("Mr. Smith wears a t-shirt.", ["mr.", "smith", "wears", "a", "t-shirt", "."]),
    ("  1,000 birds , on a wire .  ", ["1,000", "birds", ",", "on", "a", "wire", "."]),
    ("She said \"hi\" (twice)", ["she", "said", "``", "hi", "''", "(", "twice", ")"]),
    ("Café au lait.", ["café", "au", "lait", "."]),
])
def test_tokenize(caption, expected):
  assert tokenizer.tokenize(caption) == expected


def test_fast_path_matches_nltk():
  nltk_tok = tokenizer._word_tokenizer()
  captions = ["a red cube on the left, a blue ball on the right.", "two dogs , one cat .",
              "a t-shirt and 3 hats", "a ,b", "gonna go.", "a dog.", "a man cannot swim",
              "a  dog ,  a cat", "end .", "x,y z", "a 1,000 b"]
  for c in captions:
    fast = tokenizer._fast_tokenize(c)
    if fast is not None:
      assert fast == nltk_tok.tokenize(c), c
  assert tokenizer._fast_tokenize("a man cannot swim") is None


def test_tokenize_rejects_bytes():
  with pytest.raises(TypeError, match="decoded UTF-8"):
    tokenizer.tokenize(b"a dog")


def test_encode_truncates_and_marks_unknown():
  vocab = vocab_lib.Vocabulary(["a", "dog", "."])
  ids = tokenizer.encode("A dog. A zebra.", vocab)
  np.testing.assert_array_equal(ids, [1, 4, 5, 6, 4, 3, 6, 2])
  assert ids.dtype == np.int32
  long = " ".join(["dog"] * 60)
  ids = tokenizer.encode(long, vocab)
  assert len(ids) == tokenizer.MAX_WORDS + 2 and ids[0] == tokenizer.START
  assert ids[-1] == tokenizer.END
  assert len(tokenizer.encode(long, vocab, max_words=5)) == 7
  assert tokenizer.unknown_words("a zebra and a Yak", vocab) == ["zebra", "and", "yak"]


def test_encode_all_pads():
  vocab = vocab_lib.Vocabulary(["a", "dog"])
  tokens, lengths = tokenizer.encode_all(["a dog", "dog"], vocab, max_words=4)
  np.testing.assert_array_equal(tokens, [[1, 4, 5, 2, 0, 0], [1, 5, 2, 0, 0, 0]])
  np.testing.assert_array_equal(lengths, [4, 3])
