"""Two processes x 4 CPU devices through jax.distributed train like one process x 8 devices.

The scenario, as a pod user would meet it, on one machine:
  1. one process with 8 simulated CPU devices trains the tiny config for 2 epochs;
  2. two processes with 4 devices each (a local coordinator, gloo collectives) start the
     same run on a 1 x 8 (images x captions) mesh, whose captions axis spans both processes,
     so both feed the same rows of every batch; process 1 is SIGKILLed after the checkpoint
     of step 4, and process 0 must abort by itself within the heartbeat bound, naming the
     failure;
  3. both processes are restarted, resume from the checkpoint, train, evaluate the best
     dev checkpoint on test, each scoring half of the pairs; the losses and recalls must
     equal those of step 1.
Every process runs in its own session and is killed (with its group) whatever happens.
About 3-4 minutes on 2 CPU cores, most of it compilation.
"""
import json
import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests import helpers

EPOCHS = 2           # 8 steps an epoch on the tiny config; checkpoints every 4 steps.
HEARTBEAT_S = 15     # --heartbeat_timeout of the two-process runs.
EXIT_BOUND_S = HEARTBEAT_S + 45  # Detection, then the abort; generous for a loaded machine.
RUN_TIMEOUT_S = 420
GLOO = ("[Gloo]",)   # Lines left out of the excerpts in failure messages.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, data_dir, log, devices, *flags) -> helpers.LoggedProcess:
  """A run whose stdout and stderr go to `<log>.log`."""
  cmd = [sys.executable, "-m", "camp_jax.main", "--config=configs/default.py:tiny",
         f"--workdir={workdir}", f"--config.data.dir={data_dir}",
         f"--config.num_epochs={EPOCHS}", *flags]
  return helpers.LoggedProcess(cmd, log, devices, merge_output=True, start_new_session=True)


def _start_pair(workdir, data_dir, logs) -> list[helpers.LoggedProcess]:
  coordinator = f"localhost:{_free_port()}"
  return [_start(workdir, data_dir, logs / f"process{i}", 4, f"--coordinator={coordinator}",
                 "--num_processes=2", f"--process_id={i}", f"--heartbeat_timeout={HEARTBEAT_S}",
                 "--config.mesh=1x8")
          for i in range(2)]


def _kill(procs):
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


def _wait(procs, timeout=RUN_TIMEOUT_S) -> list[int | None]:
  """The exit codes, None for a process still running after `timeout` (then killed)."""
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      pass
  codes = [p.returncode for p in procs]
  _kill(procs)
  return codes


def _failures(procs, what) -> str:
  """The failure message of each process (once they have ended)."""
  return "\n".join(p.failure(f"{what}, process {i}", GLOO) for i, p in enumerate(procs))


def _committed(workdir, step) -> bool:
  return (pathlib.Path(workdir) / "checkpoints" / str(step) / "commit_success.txt").exists()


def _scalars(workdir, tag) -> dict[int, float]:
  """{step: value} of a scalar in the TensorBoard events of a run (later files win)."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(pathlib.Path(workdir).glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i + 12 <= len(data):  # TFRecord: length u64, crc u32, data, crc u32.
      n = struct.unpack("<Q", data[i:i + 8])[0]
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 16 + n
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tensor_util.make_ndarray(value.tensor))
  return out


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_data_dir):
  """The reference: one process, 8 devices."""
  workdir = tmp_path_factory.mktemp("single")
  proc = _start(workdir, tiny_data_dir, workdir.parent / "single", 8)
  try:
    codes = _wait([proc])
    assert codes == [0], _failures([proc], f"one-process run (None: killed after "
                                           f"{RUN_TIMEOUT_S} s)")
  finally:
    _kill([proc])
  return workdir


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_data_dir):
  """Two processes: process 1 killed after checkpoint 4, then both restarted to the end."""
  workdir = tmp_path_factory.mktemp("pair")
  killed_logs, resumed_logs = workdir.parent / "killed", workdir.parent / "resumed"
  killed_logs.mkdir(), resumed_logs.mkdir()
  result = {"workdir": workdir}
  procs = _start_pair(workdir, tiny_data_dir, killed_logs)
  try:
    deadline = time.time() + RUN_TIMEOUT_S
    while not _committed(workdir, 4):
      codes = [p.poll() for p in procs]
      if any(c is not None for c in codes) or time.time() > deadline:
        _kill(procs)
        pytest.fail(_failures(procs, f"no checkpoint 4 (exit codes {codes}, None: killed)"))
      time.sleep(0.2)
    os.killpg(procs[1].pid, signal.SIGKILL)
    killed_at = time.time()
    try:
      procs[0].wait(timeout=EXIT_BOUND_S)
      result["exit_s"] = time.time() - killed_at
    except subprocess.TimeoutExpired:
      result["exit_s"] = None  # A hang; the test below reports it.
    result["returncode"] = procs[0].returncode
  finally:
    _kill(procs)
  result["survivor_log"] = procs[0].stdout_text()
  result["survivor_report"] = procs[0].failure("process 0 after process 1 was killed", GLOO)
  result["steps_at_kill"] = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                                   if p.name.isdigit())
  procs = _start_pair(workdir, tiny_data_dir, resumed_logs)
  try:
    codes = _wait(procs)
    assert codes == [0, 0], _failures(procs, f"resumed run (exit codes {codes}, None: killed "
                                             f"after {RUN_TIMEOUT_S} s)")
  finally:
    _kill(procs)
  result["resumed_logs"] = [(resumed_logs / f"process{i}.log").read_text() for i in range(2)]
  return result


def test_killed_process_stops_the_other_within_the_heartbeat_bound(pair):
  assert pair["exit_s"] is not None, (f"process 0 still running {EXIT_BOUND_S} s after process 1 "
                                      f"was killed (then killed):\n{pair['survivor_report']}")
  assert pair["returncode"] != 0
  assert "stopped sending heartbeats" in pair["survivor_log"], pair["survivor_report"]
  assert "another task died" in pair["survivor_log"]
  print(f"process 0 exited {pair['exit_s']:.1f} s after process 1 was killed "
        f"(code {pair['returncode']}, heartbeat timeout {HEARTBEAT_S} s)")


def test_two_processes_resume_and_match_one_process(single, pair):
  workdir = pair["workdir"]
  assert pair["steps_at_kill"] and pair["steps_at_kill"][-1] < 8 * EPOCHS
  for i, log in enumerate(pair["resumed_logs"]):
    assert "resumed from" in log, f"process {i} did not resume"
    assert "process %d of 2, 4 local / 8 global devices" % i in log
  # Losses at every logged step (steps 4..16; each process fed half of every batch).
  expected, got = _scalars(single, "loss"), _scalars(workdir, "loss")
  assert sorted(got) == sorted(expected) == [4, 8, 12, 16]
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=1e-5), step
  print("loss |2x4 - 1x8| by step:", {s: abs(got[s] - expected[s]) for s in expected})
  # Recalls on test of the best dev checkpoint, written by process 0 only.
  expected = json.loads((single / "eval" / "test.json").read_text())
  got = json.loads((workdir / "eval" / "test.json").read_text())
  for key in ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_meanr", "t2i_r1", "t2i_r5", "t2i_r10",
              "t2i_meanr", "rsum", "n_images", "n_captions"):
    assert got[key] == pytest.approx(expected[key], abs=1e-6), key
  print("test recalls |2x4 - 1x8|:", {k: abs(got[k] - expected[k]) for k in ("i2t_r1", "t2i_r1",
                                                                             "rsum")})
  assert _scalars(workdir, "dev/rsum") == pytest.approx(_scalars(single, "dev/rsum"), abs=1e-6)
  # Only process 0 printed the table.
  assert "R@1" in pair["resumed_logs"][0] and "R@1" not in pair["resumed_logs"][1]
  # The test evaluation (the last one): each process scored half of the 40 x 200 pairs.
  scored = [re.findall(r"process (\d) scored (\d+) of (\d+) pairs", log)[-1]
            for log in pair["resumed_logs"]]
  assert scored == [("0", "4000", "8000"), ("1", "4000", "8000")], scored
