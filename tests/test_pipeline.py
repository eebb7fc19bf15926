"""Tests for camp_jax.data.pipeline, its tf.data graph (camp_jax.data.feed) and its bench."""
import importlib.util
import json

import numpy as np
import pytest

from camp_jax.data import pipeline
from camp_jax.data import precomp
from camp_jax.data import synthetic
from camp_jax.data import tokenizer
from camp_jax.data import vocab as vocab_lib

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("synth")
  synthetic.generate(folder, num_train=48, num_dev=10, num_test=7, num_regions=8,
                     feature_dim=6, seed=0)
  return precomp.read_split(folder, "train"), vocab_lib.load_vocab(folder / "vocab.json")


def _image_ids(split, images):
  """Index of each batch row's image, found by matching the features."""
  flat = np.asarray(split.images).reshape(split.num_images, -1)
  found = [np.flatnonzero((flat == row.reshape(1, -1)).all(1)) for row in images]
  return [int(f[0]) if len(f) else -1 for f in found]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_epochs_are_permutations_with_own_captions_padded_to_a_bucket(data):
  split, vocab = data
  assert len(set(map(bytes, np.asarray(split.images)))) == 48  # Rows identify images.
  with pipeline.train_batches(split, vocab, global_batch_size=8, seed=0) as it:
    assert it.steps_per_epoch == 6
    batches = _take(it, 12)
    assert it.get_state()["epoch"] == 2 and it.get_state()["step"] == 0
    max_width = it.max_width
  lengths = tokenizer.encode_all(split.captions, vocab)[1]
  assert max_width == min(b for b in pipeline.LENGTH_BUCKETS if b >= lengths.max())
  epochs = [[i for b in batches[e:e + 6] for i in _image_ids(split, b["images"])]
            for e in (0, 6)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(48))
  assert epochs[0] != epochs[1]  # Each epoch reshuffles.
  for b in batches:
    assert b.keys() == {"images", "tokens", "lengths"}
    assert b["images"].shape == (8, 8, 6) and b["images"].dtype == np.float32
    assert b["tokens"].dtype == np.int32 and b["lengths"].dtype == np.int32
    width = b["tokens"].shape[1]
    assert width == min(t for t in pipeline.LENGTH_BUCKETS if t >= b["lengths"].max())
    assert width <= max_width
    for row, length, image in zip(b["tokens"], b["lengths"], _image_ids(split, b["images"])):
      assert row[0] == tokenizer.START and row[length - 1] == tokenizer.END
      assert not row[length:].any()
      # The caption belongs to the image of the same row.
      own = [tokenizer.encode(c, vocab) for c in split.captions[5 * image:5 * image + 5]]
      assert any(np.array_equal(row[:length], o) for o in own)


def test_batch_k_depends_only_on_seed_and_k(data):
  """Resuming from a state, or after close(), continues the uninterrupted sequence."""
  split, vocab = data
  kwargs = dict(global_batch_size=8, seed=3)
  with pipeline.train_batches(split, vocab, **kwargs) as it:
    reference = _take(it, 10)
  with pipeline.train_batches(split, vocab, **kwargs) as it:
    first = _take(it, 2)
    it.close()
    first += _take(it, 2)  # A new dataset, from the step after the last batch returned.
    state = json.loads(json.dumps(it.get_state()))
  _assert_same(first, reference[:4])
  assert (state["epoch"], state["step"]) == (0, 4)
  with pipeline.train_batches(split, vocab, state=state, **kwargs) as it:
    _assert_same(_take(it, 6), reference[4:])
  state = dict(state, epoch=1, step=1)  # Batch 7 of the run.
  with pipeline.train_batches(split, vocab, state=state, **kwargs) as it:
    _assert_same(_take(it, 3), reference[7:])
  with pipeline.train_batches(split, vocab, global_batch_size=8, seed=4) as it:
    assert not np.array_equal(next(it)["images"], reference[0]["images"])


def test_a_state_of_another_order_or_seed_is_refused(data):
  split, vocab = data
  with pipeline.train_batches(split, vocab, global_batch_size=8, seed=3) as it:
    state = it.get_state()
  with pytest.raises(ValueError, match="seed=3 but this pipeline has 4"):
    pipeline.train_batches(split, vocab, global_batch_size=8, seed=4, state=state)
  old = {k: v for k, v in state.items() if k != "order"}  # The feed before tf.data.
  with pytest.raises(ValueError, match="order=None but this pipeline has 'index_shuffle'"):
    pipeline.train_batches(split, vocab, global_batch_size=8, seed=3, state=old)
  with pytest.raises(ValueError, match="outside 6 steps per epoch"):
    pipeline.train_batches(split, vocab, global_batch_size=8, seed=3, state=dict(state, step=6))


@pytest.mark.parametrize("bounds", [(0, 8, 16), (0, 5, 16)])
def test_processes_share_the_global_batch(data, bounds):
  """Each process's host_rows part, concatenated, is the single-process batch."""
  split, vocab = data
  with pipeline.train_batches(split, vocab, global_batch_size=16, seed=5) as it:
    single = _take(it, 3)
  parts = []
  for rows in zip(bounds, bounds[1:]):
    with pipeline.train_batches(split, vocab, global_batch_size=16, seed=5,
                                host_rows=rows) as it:
      parts.append(_take(it, 3))
  for step in range(3):
    for key in single[step]:
      np.testing.assert_array_equal(
          np.concatenate([p[step][key] for p in parts]), single[step][key])
    for (start, stop), p in zip(zip(bounds, bounds[1:]), parts):
      assert p[step]["images"].shape[0] == stop - start


def test_no_drop_remainder_pads_and_masks(data):
  split, vocab = data
  with pipeline.train_batches(split, vocab, global_batch_size=20, seed=0,
                              drop_remainder=False, host_rows=(4, 20)) as it:
    assert it.steps_per_epoch == 3
    batches = _take(it, 6)  # Two epochs.
  assert [int(b["mask"].sum()) for b in batches] == [16, 16, 4] * 2  # Rows 4..7 of 8 valid.
  for last in (batches[2], batches[5]):
    pad = ~last["mask"]
    assert not last["images"][pad].any() and (last["lengths"][pad] == 2).all()
    assert (last["tokens"][pad, :2] == (tokenizer.START, tokenizer.END)).all()
    assert not last["tokens"][pad, 2:].any()


def test_features_are_mapped_or_read_into_memory(data, tmp_path):
  """Memmap slices are mapped again, other arrays copied; tf kernels get aligned memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from camp_jax.data import feed  # pylint: disable=g-import-not-at-top
  split, _ = data
  np.save(tmp_path / "odd_ims.npy", np.arange(30, dtype=np.float32).reshape(10, 1, 3))
  odd = precomp.open_features(tmp_path / "odd_ims.npy")
  for images in (split.images[8:40], split.images[::3], odd[1:], odd[3:7]):
    tensor = feed.features_tensor(images)  # odd[1:] starts 12 bytes past an aligned row.
    np.testing.assert_array_equal(tf.gather(tensor, [2, 0]).numpy(), images[[2, 0]])


def test_bad_arguments(data):
  split, vocab = data
  for rows in ((0, 9), (4, 4), (-1, 3)):
    with pytest.raises(ValueError, match=r"host_rows .* outside the global batch \[0, 8\)"):
      pipeline.train_batches(split, vocab, global_batch_size=8, seed=0, host_rows=rows)
  with pytest.raises(ValueError, match="no full batch of 64"):
    pipeline.train_batches(split, vocab, global_batch_size=64, seed=0)
  with pytest.raises(ValueError, match="length buckets must be >= 3"):
    pipeline.train_batches(split, vocab, global_batch_size=8, seed=0, length_buckets=(2, 49))


def test_tfds_records_read_like_the_folder(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from camp_jax.data.tfds_builders import reader  # pylint: disable=g-import-not-at-top
  from camp_jax.data.tfds_builders import synthetic_builder  # pylint: disable=g-import-not-at-top
  builder = synthetic_builder.CampSynthetic(config="tiny", data_dir=tmp_path / "tfds")
  builder.download_and_prepare(file_format="array_record", download_dir=tmp_path / "dl")
  records = reader.read_tfds_split(f"camp_synthetic/tiny@{tmp_path / 'tfds'}", "train")
  folder = precomp.read_split(tmp_path / "dl" / "camp_synthetic" / "tiny", "train")
  assert records.captions == folder.captions
  np.testing.assert_array_equal(records.images[np.arange(64)], folder.images)
  vocab = vocab_lib.build_vocab(folder.captions, threshold=1)
  kwargs = dict(global_batch_size=16, seed=0)
  with pipeline.train_batches(records, vocab, **kwargs) as x, pipeline.train_batches(
      folder, vocab, **kwargs) as y:
    _assert_same(_take(x, 5), _take(y, 5))


def test_bench_times_the_feed_and_grain_beside_it():
  from camp_jax.bench import pipeline as bench  # pylint: disable=g-import-not-at-top
  feeds = ("tf", "grain") if importlib.util.find_spec("grain") else ("tf",)
  result = bench.run(regions=2, feature_dim=4, images=24, batch_size=8, steps=2, feeds=feeds,
                     warmup=1)
  assert tuple(result["feeds"]) == feeds and all(
      t["pairs_per_s"] > 0 for t in result["feeds"].values())
  assert "image-caption pairs/s" in bench.describe(result)
