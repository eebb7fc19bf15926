"""Tests for camp_jax.data.pipeline and camp_jax.data.streams."""
import gc
import json
import threading

import numpy as np
import pytest

from camp_jax.data import pipeline
from camp_jax.data import precomp
from camp_jax.data import streams
from camp_jax.data import synthetic
from camp_jax.data import tokenizer
from camp_jax.data import vocab as vocab_lib

BACKENDS = ["thread", pytest.param("tf", marks=pytest.mark.filterwarnings("ignore"))]


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


def _assert_same(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_visits_every_image_once(data, backend):
  split, vocab = data
  if backend == "tf":
    pytest.importorskip("tensorflow")
  with pipeline.train_batches(split, vocab, global_batch_size=8, seed=0, backend=backend) as it:
    assert it.steps_per_epoch == 6
    batches = _take(it, 6)
    assert it.get_state()["epoch"] == 1 and it.get_state()["step"] == 0
  ids = [i for b in batches for i in _image_ids(split, b["images"])]
  assert sorted(ids) == list(range(48))
  for b in batches:
    assert b["images"].shape == (8, 4, 6) and b["images"].dtype == np.float32
    assert b["tokens"].dtype == np.int32 and b["lengths"].dtype == np.int32
    assert b["tokens"].shape[1] == min(t for t in pipeline.LENGTH_BUCKETS
                                       if t >= b["lengths"].max())
    for row, length, image in zip(b["tokens"], b["lengths"], _image_ids(split, b["images"])):
      assert row[0] == tokenizer.START and row[length - 1] == tokenizer.END
      assert not row[length:].any()
      # The caption belongs to the image of the same row.
      own = [tokenizer.encode(c, vocab) for c in split.captions[5 * image:5 * image + 5]]
      assert any(np.array_equal(row[:length], o) for o in own)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_equals_the_batch_function(data, backend):
  """Whatever the backend and the number of workers, batch g is `batch(g)`."""
  split, vocab = data
  if backend == "tf":
    pytest.importorskip("tensorflow")
  kwargs = dict(global_batch_size=8, seed=3)
  plain = pipeline.train_batches(split, vocab, **kwargs)
  want = [plain.batch(g) for g in range(14)]
  for workers in (1, 4):
    with pipeline.train_batches(split, vocab, backend=backend, workers=workers, **kwargs) as it:
      _assert_same(_take(it, 14), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_stops_the_stream_and_next_resumes_at_the_same_batch(data, backend):
  split, vocab = data
  if backend == "tf":
    pytest.importorskip("tensorflow")
  kwargs = dict(global_batch_size=8, seed=3, backend=backend)
  with pipeline.train_batches(split, vocab, **kwargs) as it:
    reference = _take(it, 5)
  with pipeline.train_batches(split, vocab, **kwargs) as it:
    first = _take(it, 2)
    stream = it._stream  # pylint: disable=protected-access
    it.close()
    assert it._stream is None  # pylint: disable=protected-access
    if backend == "thread":
      assert not any(t.is_alive() for t in stream._threads)  # pylint: disable=protected-access
    else:
      assert stream.guard.active == 0 and stream.guard.stopped
      assert stream.guard(0)[0].size == 0  # Calls after close() do no work.
    assert stream not in streams._OPEN  # pylint: disable=protected-access
    rest = _take(it, 3)  # A new stream, from the step after the last batch returned.
  _assert_same(first + rest, reference)


def test_seeded_and_epochs_differ(data):
  split, vocab = data
  make = lambda seed: pipeline.train_batches(split, vocab, global_batch_size=16, seed=seed)
  with make(1) as x, make(1) as y, make(2) as z:
    a, b, c = _take(x, 6), _take(y, 6), _take(z, 6)
  _assert_same(a, b)
  assert not np.array_equal(a[0]["images"], c[0]["images"])
  assert not np.array_equal(a[0]["images"], a[3]["images"])  # Epoch 1 reshuffles.


@pytest.mark.parametrize("bounds", [(0, 8, 16), (0, 4, 8, 12, 16), (0, 5, 16)])
def test_hosts_share_the_global_batch(data, bounds):
  """Each host's host_rows part, concatenated, is the single-host batch."""
  split, vocab = data
  with pipeline.train_batches(split, vocab, global_batch_size=16, seed=5) as it:
    single = _take(it, 3)
  parts = []
  for rows in zip(bounds, bounds[1:]):
    with pipeline.train_batches(split, vocab, global_batch_size=16, seed=5,
                                host_rows=rows) as it:
      parts.append(_take(it, 3))
  seen = []
  for step in range(3):
    for key in single[step]:
      np.testing.assert_array_equal(
          np.concatenate([p[step][key] for p in parts]), single[step][key])
    for (start, stop), p in zip(zip(bounds, bounds[1:]), parts):
      assert p[step]["images"].shape[0] == stop - start
      seen.extend(_image_ids(split, p[step]["images"]))
  assert sorted(seen) == list(range(48))  # Disjoint and covering the split.


def test_state_round_trip(data):
  split, vocab = data
  kwargs = dict(global_batch_size=8, seed=3)
  with pipeline.train_batches(split, vocab, **kwargs) as it:
    reference = _take(it, 10)
  with pipeline.train_batches(split, vocab, **kwargs) as it:
    _take(it, 4)
    state = json.loads(json.dumps(it.get_state()))
  assert (state["epoch"], state["step"]) == (0, 4)
  with pipeline.train_batches(split, vocab, state=state, **kwargs) as it:
    _assert_same(_take(it, 6), reference[4:])
  with pytest.raises(ValueError, match="seed=3 but this pipeline has 4"):
    pipeline.train_batches(split, vocab, state=state, **dict(kwargs, seed=4))


def test_no_drop_remainder_pads_and_masks(data):
  split, vocab = data
  with pipeline.train_batches(split, vocab, global_batch_size=20, seed=0,
                              drop_remainder=False) as it:
    assert it.steps_per_epoch == 3
    batches = _take(it, 6)  # Two epochs: the padded rows of a reused buffer are zeroed again.
  assert [int(b["mask"].sum()) for b in batches] == [20, 20, 8] * 2
  for last in (batches[2], batches[5]):
    assert not last["images"][~last["mask"]].any()
    assert (last["lengths"][~last["mask"]] == 2).all()
  ids = [i for b in batches[:3] for i, m in zip(_image_ids(split, b["images"]), b["mask"]) if m]
  assert sorted(ids) == list(range(48))


def test_held_batches_are_never_overwritten_and_dropped_ones_are_reused(data):
  split, vocab = data
  with pipeline.train_batches(split, vocab, global_batch_size=8, seed=1, prefetch=1,
                              workers=1) as it:
    want = [it.batch(g) for g in range(30)]
    held = next(it)["images"]  # Kept: its buffer must not come back.
    view = next(it)["images"][2:]  # A view keeps its base alive too.
    addresses = set()
    for g in range(2, 30):
      batch = next(it)
      np.testing.assert_array_equal(batch["images"], want[g]["images"])
      addresses.add(batch["images"].ctypes.data)
      del batch
    np.testing.assert_array_equal(held, want[0]["images"])
    np.testing.assert_array_equal(view, want[1]["images"][2:])
  assert len(addresses) <= 4  # The pool (prefetch + workers + 2) came back, not 28 arrays.


def test_buffer_pool():
  pool = streams.BufferPool((2, 3), np.float32, size=2)
  a = pool.get()
  a_id = id(a)
  del a
  assert id(pool.get()) == a_id  # Nobody held it.
  a = pool.get()
  b = pool.get()
  assert a is not b
  c = pool.get()  # Both pooled buffers held: a fresh array, not kept.
  assert c is not a and c is not b
  view = b[1:]
  del a, b, c
  gc.collect()
  d = pool.get()
  assert id(d) == a_id  # b is still referenced through its view.
  assert pool.get() is not view.base


def test_thread_stream_raises_in_order_and_stops():
  calls = []
  lock = threading.Lock()

  def fn(g):
    with lock:
      calls.append(g)
    if g == 3:
      raise RuntimeError("bad row 3")
    return g

  stream = streams.ThreadStream(fn, 0, prefetch=2, workers=3)
  assert [next(stream) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(RuntimeError, match="bad row 3"):
    next(stream)
  stream.close()
  assert max(calls) <= 3 + 2 + 3  # Never more than prefetch + workers ahead.
  with pytest.raises(StopIteration):
    next(stream)


def test_bad_arguments(data):
  split, vocab = data
  for rows in ((0, 9), (4, 4), (-1, 3)):
    with pytest.raises(ValueError, match=r"host_rows .* outside the global batch \[0, 8\)"):
      pipeline.train_batches(split, vocab, global_batch_size=8, seed=0, host_rows=rows)
  with pytest.raises(ValueError, match="no full batch of 64"):
    pipeline.train_batches(split, vocab, global_batch_size=64, seed=0)
  with pytest.raises(ValueError, match="backend 'auto'"):
    pipeline.train_batches(split, vocab, global_batch_size=8, seed=0, backend="auto")


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
