"""Data: tokenizer, vocabulary, precomp reader, synthetic set, TFDS builders, pipeline.

Importing this package is cheap; tensorflow is imported only by `pipeline`
(when a training iterator is built), `benchmark` and `tfds_builders`.
"""
