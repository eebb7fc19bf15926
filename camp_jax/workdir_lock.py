"""One run per workdir: a lease file that process 0 takes before the run writes anything.

`<workdir>/run.lock` holds the holder's host, pid, start time and a token (JSON); its
modification time is the heartbeat, refreshed by a background thread every `heartbeat_s`.
It needs no `flock`, so it works on a local disk and on a pod's shared filesystem (NFS,
Lustre, Filestore): a free workdir is taken by creating the file with O_CREAT | O_EXCL, which
exactly one of several racing runs wins.

A lock is stale when its heartbeat is older than `stale_after_s` (a lost host, a frozen
run), or at once when its holder ran on this host, in this pid namespace, and that process is
gone (kill -9); it is live at once when that process is running. A recent lock from another
host is watched: a live run beats within `heartbeat_s` (refused then), a lost one goes stale
within `stale_after_s`. A stale lock is taken over: among racing runs, the one that creates
the claim file `run.lock.takeover-<token>` (O_EXCL again) replaces the lock by an atomic
rename; the others see the new holder. A run whose lock was taken over while it was frozen
finds out at its next heartbeat, and `check` raises. Clocks of the hosts sharing a workdir
are compared, so they must agree to well within `stale_after_s` (NTP does).

Only training writes: `--mode=eval` and export read and take no lock.
"""
import contextlib
import json
import os
import pathlib
import socket
import threading
import time
import uuid

from absl import logging

LOCK_NAME = "run.lock"
HEARTBEAT_S = 15.0       # Seconds between refreshes of the heartbeat.
STALE_AFTER_S = 120.0    # Seconds without a heartbeat after which a lock is taken over.
MAX_MESSAGE_BYTES = 1024  # Of the refusal that process 0 sends to the other processes.


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir; the message is one line naming it."""


def _boot_and_pid_namespace() -> str | None:
  """Where a pid means the same process as here (None where /proc does not say)."""
  try:
    boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot} {os.readlink('/proc/self/ns/pid')}"
  except OSError:
    return None


def _process_start(pid: int) -> str | None:
  """The start time of process `pid` in clock ticks since boot (Linux), or None if gone.

  Tells a reused pid from the holder. Where /proc is missing: "alive" or None.
  """
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]  # Field 22; the name may hold spaces or ")".
  except FileNotFoundError:
    return None
  except OSError:
    pass
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return None
  except PermissionError:
    pass
  return "alive"


def _format_time(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def read_holder(workdir) -> dict | None:
  """The lock of `workdir` as a dict (host, pid, since, token, ..., plus heartbeat: the file's
  mtime), or None when there is none. A lock being written (empty) reads as holder unknown."""
  path = pathlib.Path(workdir) / LOCK_NAME
  try:
    with open(path, "rb") as f:
      raw, heartbeat = f.read(), os.fstat(f.fileno()).st_mtime
  except FileNotFoundError:
    return None
  try:
    holder = json.loads(raw)
  except ValueError:
    holder = None
  if not (isinstance(holder, dict) and {"host", "pid", "since", "token"} <= holder.keys()):
    holder = {"host": "?", "pid": "?", "since": heartbeat,
              "token": f"unreadable-{len(raw)}-{int(heartbeat * 1e6)}"}
  return {**holder, "heartbeat": heartbeat}


def describe(holder: dict) -> str:
  return f"pid {holder['pid']} on {holder['host']} since {_format_time(holder['since'])}"


ALIVE, STALE, UNKNOWN = "alive", "stale", "unknown"


def judge(holder: dict, stale_after_s: float = STALE_AFTER_S) -> tuple[str, str]:
  """(ALIVE | STALE | UNKNOWN, why) for the lock `holder` (from `read_holder`).

  STALE when its heartbeat is older than `stale_after_s`, or its process ran here (this host,
  boot and pid namespace) and is gone; ALIVE when that process is still here; UNKNOWN for a
  recent lock from elsewhere, which only watching its heartbeat can tell.
  """
  age = time.time() - holder["heartbeat"]
  if age > stale_after_s:
    return STALE, f"no heartbeat for {age:.0f} s"
  here = (holder["host"] == socket.gethostname()
          and holder.get("namespace") == _boot_and_pid_namespace())
  if not (here and isinstance(holder["pid"], int)):
    return UNKNOWN, ""
  start = _process_start(holder["pid"])
  if start is None or start not in (holder.get("process_start"), "alive"):
    return STALE, "its process is gone"
  return ALIVE, "its process is running"


class WorkdirLock:
  """The lease of one workdir by this process. `acquire` takes it or raises WorkdirBusyError."""

  def __init__(self, workdir, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    if heartbeat_s >= stale_after_s:
      raise ValueError(f"heartbeat_s={heartbeat_s} must be below stale_after_s={stale_after_s}")
    self.workdir = pathlib.Path(workdir).absolute()
    self.path = self.workdir / LOCK_NAME
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self.token = uuid.uuid4().hex
    self.lost_to = None  # Once the lock was lost: "taken over by ..." or "removed".
    self._held = False
    self._stop = threading.Event()
    self._thread = None

  def _content(self) -> bytes:
    pid = os.getpid()
    return json.dumps({"host": socket.gethostname(), "pid": pid, "since": time.time(),
                       "token": self.token, "namespace": _boot_and_pid_namespace(),
                       "process_start": _process_start(pid)}).encode()

  def _create(self) -> bool:
    """Creates the lock file if there is none; whether this call did."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(self._content())
      f.flush()
      os.fsync(f.fileno())
    return True

  def _take_over(self, stale: dict) -> bool:
    """Replaces the stale lock `stale` if this process wins its claim; whether it did."""
    claim = self.path.with_name(f"{LOCK_NAME}.takeover-{stale['token']}")
    try:
      os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
      with contextlib.suppress(FileNotFoundError):  # A claimant that died long ago.
        if time.time() - claim.stat().st_mtime > self.stale_after_s:
          claim.unlink()
      return False
    try:
      current = read_holder(self.workdir)
      if (current is None or current["token"] != stale["token"]
          or judge(current, self.stale_after_s)[0] != STALE):
        return False  # Released, taken over or refreshed meanwhile: look again.
      tmp = self.path.with_name(f"{LOCK_NAME}.tmp-{self.token}")
      tmp.write_bytes(self._content())
      os.replace(tmp, self.path)
      return True
    finally:
      with contextlib.suppress(FileNotFoundError):
        claim.unlink()

  def _watch(self, holder: dict) -> tuple[dict | None, str, str]:
    """Watches the heartbeat of `holder` until it beats (ALIVE) or goes STALE; returns the
    lock as last read and the verdict, or ("changed") when the lock changed hands."""
    logging.info("%s is held by %s, heartbeat %.0f s ago: watching it (at most %.0f s) to tell "
                 "a live run from a lost one", self.path, describe(holder),
                 time.time() - holder["heartbeat"], self.stale_after_s)
    while True:
      time.sleep(min(1.0, self.stale_after_s / 20))
      current = read_holder(self.workdir)
      if current is None or current["token"] != holder["token"]:
        return current, "changed", ""
      if current["heartbeat"] != holder["heartbeat"]:
        return current, ALIVE, "its heartbeat goes on"
      verdict, why = judge(current, self.stale_after_s)
      if verdict == STALE:
        return current, verdict, why

  def acquire(self) -> "WorkdirLock":
    """Takes the workdir (creating it), or raises WorkdirBusyError naming the live holder.

    A recent lock from another host (or container) is watched for up to `stale_after_s`:
    a live holder beats within `heartbeat_s`, a lost one goes stale.
    """
    self.workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(200):  # A pass fails only when another run changed the lock meanwhile.
      if self._create():
        break
      holder = read_holder(self.workdir)
      if holder is None:
        continue  # Released meanwhile.
      verdict, why = judge(holder, self.stale_after_s)
      if verdict == UNKNOWN:
        holder, verdict, why = self._watch(holder)
      if verdict == ALIVE:
        age = time.time() - holder["heartbeat"]
        raise WorkdirBusyError(
            f"workdir {self.workdir} is in use by {describe(holder)} ({why}, heartbeat {age:.0f}"
            f" s ago; a lock without one for {self.stale_after_s:.0f} s is taken over): stop "
            "that run or choose another --workdir")
      if verdict == STALE and self._take_over(holder):
        logging.warning("took over the lock of %s in %s: %s", describe(holder), self.workdir,
                        why)
        break
      time.sleep(0.05)
    else:
      raise WorkdirBusyError(f"workdir {self.workdir}: could not take {self.path}, which keeps "
                             "changing hands")
    self._held = True
    self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                    daemon=True)
    self._thread.start()
    logging.info("holding %s", self.path)
    return self

  def _owned(self) -> bool:
    """Whether the lock file is still this process's; records the new holder if not."""
    holder = read_holder(self.workdir)
    if holder is not None and holder["token"] == self.token:
      return True
    self.lost_to = f"taken over by {describe(holder)}" if holder else "removed"
    logging.error("the lock of %s was %s while this run was not refreshing it", self.workdir,
                  self.lost_to)
    return False

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        if not self._owned():
          return
        os.utime(self.path)
      except OSError as e:  # A filesystem hiccup: the next beat tries again.
        logging.warning("could not refresh %s: %s", self.path, e)

  def check(self) -> None:
    """Raises RuntimeError when another run took the workdir over (call before writing)."""
    if self.lost_to is not None:
      raise RuntimeError(f"the lock of workdir {self.workdir} was {self.lost_to} while this "
                         "run did not refresh it: stopping before writing")

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still this process's."""
    if not self._held:
      return
    self._held = False
    self._stop.set()
    self._thread.join()
    try:
      if self.lost_to is None and self._owned():
        self.path.unlink()
        logging.info("released %s", self.path)
    except OSError as e:  # Leaves a lock that goes stale; never hides the run's own error.
      logging.warning("could not release %s: %s", self.path, e)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


@contextlib.contextmanager
def hold(workdir, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
  """Process 0 holds `workdir` for the block; every process raises the same WorkdirBusyError
  when it cannot (a collective: all processes call it). Yields a WorkdirLock whose `check`
  raises on process 0 if the lock was lost (and does nothing on the other processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  lock = WorkdirLock(workdir, heartbeat_s, stale_after_s)
  refusal = ""
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirBusyError as e:
      refusal = str(e)
  if jax.process_count() > 1:
    refusal = _from_process_0(refusal)
  if refusal:
    raise WorkdirBusyError(refusal)
  try:
    yield lock
  finally:
    lock.release()


def _from_process_0(message: str) -> str:
  """Process 0's `message` on every process."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = message.encode()[:MAX_MESSAGE_BYTES].ljust(MAX_MESSAGE_BYTES, b"\0")
  out = multihost_utils.broadcast_one_to_all(np.frombuffer(data, np.uint8))
  return np.asarray(out, np.uint8).tobytes().rstrip(b"\0").decode(errors="replace")
