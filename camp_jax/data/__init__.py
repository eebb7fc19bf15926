"""Data: tokenizer, vocabulary, precomp reader, synthetic set, TFDS builders, pipeline.

Importing this package is cheap; tensorflow is imported only by `pipeline`
(when a training iterator is built), `benchmark` and `tfds_builders`.
"""
# TEMPORARY (lead): the flat API over inputs.py until the data branch lands.
def load_split(data_config, name):
  from camp_jax.data import inputs  # pylint: disable=g-import-not-at-top
  return inputs.load(data_config).split(name)


def load_vocab(data_config):
  from camp_jax.data import inputs  # pylint: disable=g-import-not-at-top
  loaded = inputs.load(data_config)
  loaded.vocab.path = loaded.vocab_path
  return loaded.vocab
