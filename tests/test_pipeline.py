"""Tests for camp_jax.data.pipeline (and reading TFDS-built records through it)."""
import json
import weakref

import numpy as np
import pytest

from camp_jax.data import pipeline
from camp_jax.data import precomp
from camp_jax.data import synthetic
from camp_jax.data import tokenizer
from camp_jax.data import vocab as vocab_lib


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("synth")
  synthetic.generate(folder, num_train=48, num_dev=10, num_test=7, num_regions=4,
                     feature_dim=6, seed=0)
  return precomp.read_split(folder, "train"), vocab_lib.load_vocab(folder / "vocab.json")


def _image_ids(split, images):
  """Index of each batch row's image, found by matching the features."""
  flat = np.asarray(split.images).reshape(split.num_images, -1)
  found = [np.flatnonzero((flat == row.reshape(1, -1)).all(1)) for row in images]
  return [int(f[0]) if len(f) else -1 for f in found]


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("backend", ["tf", "thread"])
def test_epoch_visits_every_image_once(data, backend):
  split, vocab = data
  it = pipeline.train_batches(split, vocab, global_batch_size=8, seed=0, process_index=0,
                              process_count=1, backend=backend)
  assert it.steps_per_epoch == 6
  batches = _take(it, 6)
  ids = [i for b in batches for i in _image_ids(split, b["images"])]
  assert sorted(ids) == list(range(48))
  for b in batches:
    assert b["images"].shape == (8, 4, 6) and b["images"].dtype == np.float32
    assert b["tokens"].dtype == np.int32 and b["lengths"].dtype == np.int32
    assert b["tokens"].shape[1] in pipeline.LENGTH_BUCKETS
    assert b["tokens"].shape[1] == min(t for t in pipeline.LENGTH_BUCKETS
                                       if t >= b["lengths"].max())
    for row, length, image in zip(b["tokens"], b["lengths"], _image_ids(split, b["images"])):
      assert row[0] == tokenizer.START and row[length - 1] == tokenizer.END
      assert not row[length:].any()
      # The caption belongs to the image of the same row.
      own = [tokenizer.encode(c, vocab) for c in split.captions[5 * image:5 * image + 5]]
      assert any(np.array_equal(row[:length], o) for o in own)
  assert it.get_state()["epoch"] == 1 and it.get_state()["step"] == 0


@pytest.mark.parametrize("backend", ["tf", "thread"])
def test_close_stops_the_stream_and_next_resumes_at_the_same_batch(data, backend):
  split, vocab = data
  kwargs = dict(global_batch_size=8, seed=3, process_index=0, process_count=1, backend=backend)
  reference = _take(pipeline.train_batches(split, vocab, **kwargs), 5)
  with pipeline.train_batches(split, vocab, **kwargs) as it:
    first = _take(it, 2)
    guard, stream = it._guard, weakref.ref(it._stream)  # pylint: disable=protected-access
    it.close()
    assert stream() is None, "close() left the stream alive"
    assert guard._active == 0  # pylint: disable=protected-access
    assert guard.stopped and guard(0)[0].size == 0  # Calls after close() do no work.
    rest = _take(it, 3)  # A new stream, from the step after the last batch returned.
  assert it._stream is None  # pylint: disable=protected-access
  for got, want in zip(first + rest, reference):
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["tokens"], want["tokens"])


def test_seeded_and_epochs_differ(data):
  split, vocab = data
  make = lambda seed: pipeline.train_batches(split, vocab, global_batch_size=16, seed=seed,
                                             process_index=0, process_count=1)
  a, b, c = _take(make(1), 6), _take(make(1), 6), _take(make(2), 6)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["images"], c[0]["images"])
  assert not np.array_equal(a[0]["images"], a[3]["images"])  # Epoch 1 reshuffles.


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_share_the_global_batch(data, hosts):
  split, vocab = data
  single = _take(pipeline.train_batches(split, vocab, global_batch_size=16, seed=5,
                                        process_index=0, process_count=1), 3)
  parts = [_take(pipeline.train_batches(split, vocab, global_batch_size=16, seed=5,
                                        process_index=h, process_count=hosts), 3)
           for h in range(hosts)]
  seen = []
  for step in range(3):
    for key in single[step]:
      np.testing.assert_array_equal(
          np.concatenate([p[step][key] for p in parts]), single[step][key])
    for p in parts:
      assert p[step]["images"].shape[0] == 16 // hosts
      seen.append(_image_ids(split, p[step]["images"]))
  flat = [i for s in seen for i in s]
  assert sorted(flat) == list(range(48))  # Disjoint and covering the split.


def test_state_round_trip(data):
  split, vocab = data
  kwargs = dict(global_batch_size=8, seed=3, process_index=0, process_count=1)
  reference = _take(pipeline.train_batches(split, vocab, **kwargs), 10)
  it = pipeline.train_batches(split, vocab, **kwargs)
  _take(it, 4)
  state = json.loads(json.dumps(it.get_state()))
  assert (state["epoch"], state["step"]) == (0, 4)
  resumed = _take(pipeline.train_batches(split, vocab, state=state, **kwargs), 6)
  for x, y in zip(reference[4:], resumed):
    np.testing.assert_array_equal(x["images"], y["images"])
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  with pytest.raises(ValueError, match="seed=3 but this pipeline has 4"):
    pipeline.train_batches(split, vocab, state=state, **dict(kwargs, seed=4))


def test_no_drop_remainder_pads_and_masks(data):
  split, vocab = data
  it = pipeline.train_batches(split, vocab, global_batch_size=20, seed=0, process_index=0,
                              process_count=1, drop_remainder=False)
  assert it.steps_per_epoch == 3
  batches = _take(it, 3)
  assert [int(b["mask"].sum()) for b in batches] == [20, 20, 8]
  last = batches[-1]
  assert not last["images"][~last["mask"]].any() and (last["lengths"][~last["mask"]] == 2).all()
  ids = [i for b in batches for i, m in zip(_image_ids(split, b["images"]), b["mask"]) if m]
  assert sorted(ids) == list(range(48))


def test_bad_arguments(data):
  split, vocab = data
  with pytest.raises(ValueError, match="not divisible by process_count 3"):
    pipeline.train_batches(split, vocab, global_batch_size=8, seed=0, process_index=0,
                           process_count=3)
  with pytest.raises(ValueError, match="no full batch of 64"):
    pipeline.train_batches(split, vocab, global_batch_size=64, seed=0, process_index=0,
                           process_count=1)


def test_eval_arrays_and_batches(data):
  split, vocab = data
  arrays = pipeline.eval_arrays(split, vocab)
  assert arrays["images"] is split.images
  longest = int(arrays["lengths"].max())
  assert arrays["tokens"].shape == (240, 16 if longest <= 16 else 32 if longest <= 32 else 49)
  assert arrays["lengths"].shape == (240,)
  np.testing.assert_array_equal(arrays["caption_image"][:7], [0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(arrays["tokens"][3, :arrays["lengths"][3]],
                                tokenizer.encode(split.captions[3], vocab))
  for side, key, n in (("images", "images", 48), ("captions", "tokens", 240)):
    parts = [list(pipeline.eval_batches(arrays, side, batch_size=20, process_index=h,
                                        process_count=2)) for h in range(2)]
    assert len(parts[0]) == len(parts[1]) == -(-n // 20)
    rows = np.concatenate([np.concatenate([p[i][key] for p in parts])
                           for i in range(len(parts[0]))])
    mask = np.concatenate([np.concatenate([p[i]["mask"] for p in parts])
                           for i in range(len(parts[0]))])
    assert mask.sum() == n and all(b[key].shape[0] == 10 for p in parts for b in p)
    np.testing.assert_array_equal(rows[mask], np.asarray(arrays[key]))


def test_tfds_records_read_like_the_folder(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from camp_jax.data.tfds_builders import synthetic_builder  # pylint: disable=g-import-not-at-top
  builder = synthetic_builder.CampSynthetic(config="tiny", data_dir=tmp_path / "tfds")
  builder.download_and_prepare(file_format="array_record", download_dir=tmp_path / "dl")
  records = pipeline.load_split(f"tfds:camp_synthetic/tiny@{tmp_path / 'tfds'}", "train")
  folder = pipeline.load_split(tmp_path / "dl" / "camp_synthetic" / "tiny", "train")
  assert records.captions == folder.captions
  np.testing.assert_array_equal(records.images[np.arange(64)], folder.images)
  vocab = vocab_lib.build_vocab(folder.captions, threshold=1)
  kwargs = dict(global_batch_size=16, seed=0, process_index=0, process_count=1)
  for x, y in zip(_take(pipeline.train_batches(records, vocab, **kwargs), 5),
                  _take(pipeline.train_batches(folder, vocab, **kwargs), 5)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  del tfds
