"""SyncPoint: a SIGTERM to one of two processes stops both at the same step; one process alone.

The two-process test runs a tiny jitted loop (an all-reduce over one CPU device per process,
gloo collectives, as tests/test_multiprocess.py), not the trainer: about 10 s.
"""
import os
import pathlib
import re
import signal
import socket
import sys
import time

import pytest

from camp_jax import preemption
from tests.helpers import LoggedProcess

MAX_STEPS = 2000     # 0.05 s a step: the notice must arrive well before.
SIGNAL_AT_STEP = 10  # Both processes past it before process 1 gets the SIGTERM.


def _worker(coordinator: str, process_id: int, folder: str, start_step: int,
            early: bool) -> None:
  """One process of the pair: steps from `start_step` until the sync point; prints 'stopped
  at step N'. `early`: process 1 gets its SIGTERM before the loop (while a run restores)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from camp_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize_distributed(coordinator, 2, process_id, heartbeat_timeout_s=30)
  if early:
    if process_id == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(3)  # The sync protocol runs now, before any step.
  sharding = NamedSharding(jax.make_mesh((2,), ("p",)), P("p"))
  x = jax.make_array_from_process_local_data(sharding, np.full((1,), start_step, np.float32))
  step_fn = jax.jit(lambda x: x + 1 + 0 * x.sum(), out_shardings=sharding)  # An all-reduce.
  progress = pathlib.Path(folder) / f"step{process_id}"
  with preemption.SyncPoint(start_step) as sync:
    assert sync.uses_jax
    for step in range(start_step + 1, start_step + MAX_STEPS + 1):
      x = step_fn(x)
      assert float(x.addressable_shards[0].data[0]) == step
      progress.write_text(str(step))
      if step % 4 == 0:  # As orbax's CheckpointManager.save does at each checkpoint.
        multihost_utils.reached_preemption_sync_point(step)
      if sync.reached(step):
        print(f"process {process_id} stopped at step {step}", flush=True)
        return
      time.sleep(0.05)
  print(f"process {process_id} never reached the sync point", flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _progress(folder, process_id) -> int:
  try:
    return int((folder / f"step{process_id}").read_text() or 0)
  except (FileNotFoundError, ValueError):
    return 0


@pytest.mark.parametrize("when", ["during_the_loop", "before_the_loop"])
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, when):
  """Before the loop: a resumed run (start step 40) signalled while it restores."""
  coordinator, early = f"localhost:{_free_port()}", when == "before_the_loop"
  start = 40 if early else 0
  procs = []
  for i in range(2):
    code = ("from tests.test_preemption import _worker; "
            f"_worker({coordinator!r}, {i}, {str(tmp_path)!r}, {start}, {early})")
    procs.append(LoggedProcess([sys.executable, "-c", code], tmp_path / "logs" / f"process{i}",
                               devices=1, merge_output=True, start_new_session=True))
  logs = lambda: "\n\n".join(p.failure(f"process {i}") for i, p in enumerate(procs))
  try:
    deadline = time.time() + 120
    while not early and min(_progress(tmp_path, 0), _progress(tmp_path, 1)) < SIGNAL_AT_STEP:
      if any(p.poll() is not None for p in procs) or time.time() > deadline:
        pytest.fail("the pair did not reach step %d:\n%s" % (SIGNAL_AT_STEP, logs()))
      time.sleep(0.05)
    signalled_at = max(_progress(tmp_path, 0), _progress(tmp_path, 1), start)
    if not early:
      procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  assert codes == [0, 0], logs()
  stops = [re.findall(r"process %d stopped at step (\d+)" % i, p.stdout_text())
           for i, p in enumerate(procs)]
  assert stops[0] and stops[0] == stops[1], logs()
  assert int(stops[0][0]) > signalled_at
  print(f"{when}: SIGTERM to process 1 after step {signalled_at}; both stopped at step "
        f"{stops[0][0]}")


def test_one_process_stops_at_the_first_step_after_a_sigterm():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.SyncPoint(start_step=7) as sync:
    assert not sync.uses_jax
    assert not sync.reached(8)
    os.kill(os.getpid(), signal.SIGTERM)
    assert sync.reached(9)
  assert signal.getsignal(signal.SIGTERM) == before


def test_skipped_steps_are_refused():
  with preemption.SyncPoint(start_step=3) as sync:
    with pytest.raises(ValueError, match=r"reached\(5\) after step 3"):
      sync.reached(5)
