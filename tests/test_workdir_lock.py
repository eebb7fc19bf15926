"""One run per workdir: refusal naming the holder, stale locks taken over, races, release."""
import json
import logging
import os
import pathlib
import re
import signal
import socket
import sys
import threading
import time

import pytest

from camp_jax import workdir_lock
from tests.helpers import LoggedProcess

HOST = socket.gethostname()


def _write_lock(workdir, age_s: float = 0.0, **fields) -> dict:
  """A lock file as another run would leave it, its heartbeat `age_s` seconds old."""
  holder = {"host": "elsewhere", "pid": 4242, "since": time.time() - age_s - 60,
            "token": "t" * 32, "namespace": None, "process_start": None, **fields}
  path = pathlib.Path(workdir) / workdir_lock.LOCK_NAME
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name("tmp")
  tmp.write_text(json.dumps(holder))
  os.utime(tmp, (time.time() - age_s,) * 2)
  os.replace(tmp, path)  # At once, as a run taking the lock over does.
  return holder


def _holder(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / workdir_lock.LOCK_NAME).read_text())


def test_a_free_workdir_is_taken_and_released(tmp_path):
  workdir = tmp_path / "new" / "run"
  with workdir_lock.WorkdirLock(workdir) as lock:
    holder = _holder(workdir)
    assert (holder["host"], holder["pid"], holder["token"]) == (HOST, os.getpid(), lock.token)
    lock.check()
  assert not (workdir / workdir_lock.LOCK_NAME).exists()
  assert sorted(p.name for p in workdir.iterdir()) == []


def test_a_live_lock_is_refused_in_one_line_naming_the_holder(tmp_path):
  with workdir_lock.WorkdirLock(tmp_path):  # This process: alive, on this host.
    with pytest.raises(workdir_lock.WorkdirBusyError) as refused:
      workdir_lock.WorkdirLock(tmp_path).acquire()
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(_holder(tmp_path)["since"]))
  message = str(refused.value)
  assert "\n" not in message
  assert f"pid {os.getpid()} on {HOST} since {since}" in message, message
  assert "its process is running" in message
  print(message)


def test_a_lock_from_another_host_is_watched_until_it_beats_or_goes_stale(tmp_path, caplog):
  holder = _write_lock(tmp_path, age_s=0.5)
  path, stop = tmp_path / workdir_lock.LOCK_NAME, threading.Event()

  def beat():  # The other host's run, alive.
    while not stop.wait(0.2):
      os.utime(path)

  beating = threading.Thread(target=beat)
  beating.start()
  try:
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match="pid 4242 on elsewhere since .*its heartbeat goes on"):
      workdir_lock.WorkdirLock(tmp_path, heartbeat_s=0.5, stale_after_s=4).acquire()
  finally:
    stop.set()
    beating.join()
  assert _holder(tmp_path) == holder
  # Lost with its host: a last heartbeat, none for stale_after_s, then taken over.
  os.utime(path)
  start = time.time()
  with caplog.at_level(logging.INFO, logger="absl"), workdir_lock.WorkdirLock(tmp_path, 0.5, 3):
    assert _holder(tmp_path)["host"] == HOST
  assert 2 < time.time() - start < 20
  assert "watching it" in caplog.text and re.search(r"no heartbeat for \d+ s", caplog.text)
  # Unreadable (a writer that died before writing): judged by its heartbeat alone.
  path.write_text("")
  with workdir_lock.WorkdirLock(tmp_path, 0.5, 2):
    assert _holder(tmp_path)["host"] == HOST


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
  code = ("import sys, time; from camp_jax import workdir_lock; "
          f"workdir_lock.WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
          "time.sleep(600)")
  proc = LoggedProcess([sys.executable, "-c", code], tmp_path / "logs" / "holder")
  try:
    deadline = time.time() + 300
    while "\n" not in proc.stdout_text():  # Its first line.
      if proc.poll() is not None or time.time() > deadline:
        pytest.fail(proc.failure("the holder printed no line"))
      time.sleep(0.05)
    assert proc.stdout_text().splitlines()[0].strip() == "held", proc.failure("not 'held'")
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {proc.pid} on {HOST}"):
      workdir_lock.WorkdirLock(tmp_path).acquire()
  finally:
    proc.kill()  # kill -9: the lock stays behind, with a fresh heartbeat.
    proc.wait()
  assert _holder(tmp_path)["pid"] == proc.pid
  with caplog.at_level(logging.WARNING), workdir_lock.WorkdirLock(tmp_path):
    assert _holder(tmp_path)["pid"] == os.getpid()
  assert re.search(rf"took over the lock of pid {proc.pid} on {HOST} since .*: its process is "
                   "gone", caplog.text), caplog.text


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path):
  with workdir_lock.WorkdirLock(tmp_path):
    mine = _holder(tmp_path)
  assert mine["namespace"] and mine["process_start"] not in (None, "alive")  # Linux: /proc.
  _write_lock(tmp_path, **{**mine, "token": "t" * 32, "process_start": "1"})  # Another start.
  with workdir_lock.WorkdirLock(tmp_path):
    assert _holder(tmp_path)["token"] != "t" * 32


def test_an_expired_heartbeat_is_taken_over(tmp_path, caplog):
  _write_lock(tmp_path, age_s=300)  # Another host, 300 s > 120 s without a heartbeat.
  with caplog.at_level(logging.WARNING), workdir_lock.WorkdirLock(tmp_path):
    assert _holder(tmp_path)["host"] == HOST
  assert "took over the lock of pid 4242 on elsewhere" in caplog.text
  assert re.search(r"no heartbeat for 30\d s", caplog.text)
  # A claim left by a run that died while taking over goes once it is stale itself.
  holder = _write_lock(tmp_path, age_s=300)
  claim = tmp_path / f"{workdir_lock.LOCK_NAME}.takeover-{holder['token']}"
  claim.touch()
  os.utime(claim, (time.time() - 300,) * 2)
  with workdir_lock.WorkdirLock(tmp_path):
    assert _holder(tmp_path)["host"] == HOST
  assert not claim.exists()


def test_the_heartbeat_refreshes_and_a_lost_lock_is_noticed(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path, heartbeat_s=0.1, stale_after_s=2).acquire()
  path = tmp_path / workdir_lock.LOCK_NAME
  os.utime(path, (time.time() - 1,) * 2)
  time.sleep(0.5)
  assert time.time() - path.stat().st_mtime < 0.5
  lock.check()
  holder = _write_lock(tmp_path)  # Taken over while this run was frozen.
  time.sleep(0.5)
  with pytest.raises(RuntimeError, match="taken over by pid 4242 on elsewhere"):
    lock.check()
  lock.release()
  assert _holder(tmp_path) == holder  # Not removed: it is someone else's.


_RACER = """
import pathlib, sys, time
from camp_jax import workdir_lock
workdir, me, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
results = pathlib.Path(workdir).parent / "results"
while time.time() < start:
  pass
try:
  lock = workdir_lock.WorkdirLock(workdir).acquire()
except workdir_lock.WorkdirBusyError as e:
  (results / me).write_text("refused " + str(e))
else:
  (results / me).write_text("won")
  deadline = time.time() + 60  # Held until every racer has decided.
  while len(list(results.iterdir())) < n and time.time() < deadline:
    time.sleep(0.01)
  lock.release()
"""


@pytest.mark.parametrize("state", ["free", "stale"])
def test_of_racing_runs_exactly_one_wins(tmp_path, state):
  n = 3
  for round_ in range(3):
    workdir, results = tmp_path / f"round{round_}" / "run", tmp_path / f"round{round_}" / "results"
    results.mkdir(parents=True)
    if state == "stale":
      _write_lock(workdir, age_s=300)
    start = time.time() + 1.5  # All have started (and imported) by then.
    procs = [LoggedProcess([sys.executable, "-c", _RACER, str(workdir), str(i), str(n),
                            str(start)], tmp_path / "logs" / f"round{round_}-racer{i}")
             for i in range(n)]
    assert [p.wait(timeout=120) for p in procs] == [0] * n, "\n\n".join(
        p.failure(f"racer {i}") for i, p in enumerate(procs) if p.returncode != 0)
    outcomes = sorted(p.read_text() for p in results.iterdir())
    assert outcomes[-1] == "won" and all(o.startswith("refused workdir") for o in outcomes[:-1]), \
        outcomes
    assert not (workdir / workdir_lock.LOCK_NAME).exists()
    assert [p.name for p in workdir.iterdir()] == []  # No claim or temporary file left.


def test_hold_refuses_on_every_process_of_a_multiprocess_run(tmp_path):
  """Process 0 finds the workdir held; both processes raise its one line."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    coordinator = f"localhost:{s.getsockname()[1]}"
  code = ("import sys; from camp_jax import distributed, workdir_lock\n"
          f"distributed.initialize_distributed({coordinator!r}, 2, int(sys.argv[1]), 30)\n"
          "try:\n"
          f"  with workdir_lock.hold({str(tmp_path)!r}): print('held')\n"
          "except workdir_lock.WorkdirBusyError as e: print('refused:', e)\n")
  with workdir_lock.WorkdirLock(tmp_path):
    procs = [LoggedProcess([sys.executable, "-c", code, str(i)], tmp_path / "logs" / f"process{i}",
                           start_new_session=True) for i in range(2)]
    try:
      for p in procs:
        p.wait(timeout=120)
      outs = [p.stdout_text() for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          os.killpg(p.pid, signal.SIGKILL)
          p.wait()
  lines = [[l for l in out.splitlines() if l.startswith("refused:")] for out in outs]
  assert lines[0] and lines[0] == lines[1], "\n\n".join(
      p.failure(f"process {i}") + f"\n--- its stdout ---\n{outs[i]}" for i, p in enumerate(procs))
  assert f"pid {os.getpid()} on {HOST}" in lines[0][0]
