"""Helpers for tests that start camp_jax in subprocesses, as a user would.

A subprocess's stdout and stderr go to files (`<stem>.stdout`, `<stem>.stderr`, under the
test's tmp_path), never to pipes: a full pipe stalls a process, and a dead run keeps all of its
output. On failure, `failure_message` names the file, the exit code with its signal, and prints
the head and tail of the stderr and the lines that look fatal (an abseil `F` line, "Check
failed", "Fatal Python error", a traceback), so a rare abort shows its cause.
"""
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_EPOCHS = 3  # 8 steps an epoch on the tiny config; checkpoints every 4 steps.
HEAD_LINES, TAIL_LINES, FATAL_LINES = 40, 80, 20
_FATAL = re.compile(r"^[FE]\d{4} |Check failed|Fatal Python error|Traceback \(most recent|"
                    r"terminate called|^[\w.]+(Error|Exception)\b|Segmentation fault|core dumped")


def cpu_env(devices: int = 1) -> dict:
  """Environment for a subprocess on `devices` CPU devices that imports camp_jax and configs.

  PYTHONFAULTHANDLER makes a native crash (SIGABRT, SIGSEGV, ...) dump the Python stack of
  every thread to stderr, from the interpreter's start on.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def tiny_main(workdir, data_dir, *flags) -> list[str]:
  """The command line of a tiny training run."""
  return [sys.executable, "-m", "camp_jax.main", "--config=configs/default.py:tiny",
          f"--workdir={workdir}", f"--config.data.dir={data_dir}",
          f"--config.num_epochs={TINY_EPOCHS}", *flags]


def exit_status(code: int | None) -> str:
  """'0', '1', '-6 (SIGABRT)', or 'none (still running)'."""
  if code is None:
    return "none (still running)"
  if code < 0:
    try:
      return f"{code} ({signal.Signals(-code).name})"
    except ValueError:
      return f"{code} (unknown signal)"
  return str(code)


def excerpt(text: str, ignore: tuple[str, ...] = ()) -> str:
  """The first HEAD_LINES and last TAIL_LINES lines of `text` (all of it if short), after the
  first FATAL_LINES lines that look fatal, numbered; lines starting with `ignore` are left out."""
  lines = [(i, l) for i, l in enumerate(text.splitlines(), 1) if not l.startswith(ignore)]
  fmt = lambda chosen: "\n".join(f"{i:6d}| {l}" for i, l in chosen)
  fatal = [(i, l) for i, l in lines if _FATAL.search(l)][:FATAL_LINES]
  parts = [f"--- lines that look fatal (first {FATAL_LINES}) ---\n{fmt(fatal)}"] if fatal else []
  if not lines:
    parts.append("--- (empty) ---")
  elif len(lines) <= HEAD_LINES + TAIL_LINES:
    parts.append(f"--- all {len(lines)} lines ---\n{fmt(lines)}")
  else:
    skipped = len(lines) - HEAD_LINES - TAIL_LINES
    parts += [f"--- head ({HEAD_LINES} lines) ---\n{fmt(lines[:HEAD_LINES])}",
              f"--- ... {skipped} lines left out ... ---",
              f"--- tail ({TAIL_LINES} lines) ---\n{fmt(lines[-TAIL_LINES:])}"]
  return "\n".join(parts)


def failure_message(what: str, code: int | None, text: str, log=None, stdout_log=None,
                    command=None, ignore: tuple[str, ...] = ()) -> str:
  """What failed, the exit code (with its signal), the command and where the whole output is,
  then an excerpt of `text`, the stderr (kept in the file `log`, if any)."""
  head = f"{what}: exit code {exit_status(code)}"
  if command is not None:
    line = shlex.join(str(a) for a in command)
    head += f"\ncommand: {line if len(line) <= 300 else line[:297] + '...'}"
  if log is not None:
    head += f"\nfull stderr: {log}"
  if stdout_log is not None:
    head += f"\nstdout: {stdout_log}"
  return f"{head}\n{excerpt(text, ignore)}"


def _log_stem(stem) -> pathlib.Path:
  """`stem`, or `stem-2`, `stem-3`, ... if its logs exist already; its folder created."""
  stem = pathlib.Path(stem)
  stem.parent.mkdir(parents=True, exist_ok=True)
  candidate, n = stem, 1
  while any(candidate.with_name(candidate.name + s).exists()
            for s in (".stdout", ".stderr", ".log")):
    n += 1
    candidate = stem.with_name(f"{stem.name}-{n}")
  return candidate


class LoggedProcess(subprocess.Popen):
  """A subprocess (cwd: the repository) whose stdout and stderr go to `<log>.stdout` and
  `<log>.stderr`, or both to `<log>.log` when `merge_output`.

  `log` is a path stem such as `tmp_path / "logs" / "resume"`; a taken stem gets a suffix.
  The environment is `env` or cpu_env(devices), unbuffered so that a crash loses no output;
  `cwd`, when given, replaces the repository as the working directory.
  """

  def __init__(self, args, log, devices: int = 1, env: dict | None = None,
               merge_output: bool = False, cwd=None, **popen_kwargs):
    stem = _log_stem(log)
    suffixes = (".log", ".log") if merge_output else (".stdout", ".stderr")
    self.stdout_path, self.stderr_path = (stem.with_name(stem.name + s) for s in suffixes)
    env = dict(cpu_env(devices) if env is None else env, PYTHONUNBUFFERED="1")
    out = open(self.stdout_path, "w")
    err = subprocess.STDOUT if merge_output else open(self.stderr_path, "w")
    try:
      super().__init__(args, cwd=REPO if cwd is None else cwd, env=env, stdout=out, stderr=err,
                       **popen_kwargs)
    finally:  # The child has its own copies of the file descriptors.
      out.close()
      if err is not subprocess.STDOUT:
        err.close()

  def stdout_text(self) -> str:
    """All of its stdout so far (with its stderr when merged)."""
    return self.stdout_path.read_text(errors="replace")

  def stderr_text(self) -> str:
    """All of its stderr so far (with its stdout when merged)."""
    return self.stderr_path.read_text(errors="replace")

  def failure(self, what: str, ignore: tuple[str, ...] = ()) -> str:
    """failure_message for this process (call it once the process has ended)."""
    stdout_log = None if self.stdout_path == self.stderr_path else self.stdout_path
    return failure_message(what, self.returncode, self.stderr_text(), self.stderr_path,
                           stdout_log, self.args, ignore)


class Completed(subprocess.CompletedProcess):
  """What `run` returns: its stdout and stderr as text, and `failure(what)`, the ended
  process's failure_message, for a test's own assertions on a run (one that expects a
  non-zero exit passes check=False)."""

  def __init__(self, proc: LoggedProcess):
    super().__init__(proc.args, proc.returncode, proc.stdout_text(), proc.stderr_text())
    self.process = proc

  def failure(self, what: str, ignore: tuple[str, ...] = ()) -> str:
    """failure_message for this run: exit code, log files, stderr's head, tail, fatal lines."""
    return self.process.failure(what, ignore)


def run(args, log, devices: int = 1, timeout: float = 600, check: bool = True,
        env: dict | None = None, cwd=None) -> Completed:
  """Runs `args` to the end as a LoggedProcess (in `cwd`, default the repository); fails the
  test, with failure_message, on a timeout or (when `check`) a non-zero exit. Returns stdout
  and stderr as text."""
  proc = LoggedProcess(args, log, devices, env, cwd=cwd)
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    pytest.fail(proc.failure(f"run timed out after {timeout} s and was killed"))
  if check and proc.returncode != 0:
    pytest.fail(proc.failure("run failed"))
  return Completed(proc)


def run_tiny(workdir, data_dir, *flags, devices: int = 1) -> Completed:
  """A tiny training run to the end, logged to `<workdir's folder>/logs/<workdir's name>.*`."""
  workdir = pathlib.Path(workdir)
  return run(tiny_main(workdir, data_dir, *flags), workdir.parent / "logs" / workdir.name,
             devices)


def checkpoint_steps(workdir) -> list[int]:
  """The steps saved under <workdir>/checkpoints, oldest first."""
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _ended(proc: subprocess.Popen, what: str) -> str:
  """failure_message of an ended process, a LoggedProcess or one with a stderr pipe."""
  if isinstance(proc, LoggedProcess):
    return proc.failure(what)
  return failure_message(what, proc.returncode, proc.stderr.read() if proc.stderr else "",
                         command=proc.args)


def wait_for_checkpoint(proc: subprocess.Popen, workdir, min_step: int, timeout: float = 300):
  """Waits until a running training process has saved a checkpoint >= `min_step`."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(_ended(proc, f"run ended before checkpoint {min_step}"))
    if any(s >= min_step for s in checkpoint_steps(workdir)):
      return
    time.sleep(0.2)
  proc.kill()
  proc.wait()
  pytest.fail(_ended(proc, f"no checkpoint >= {min_step} within {timeout} s (killed)"))


def compiler_installed(platform: str) -> bool:
  """Whether the compile-only tests of `platform` ("tpu", "cuda") can run here."""
  from camp_jax.aot import topology  # pylint: disable=g-import-not-at-top
  try:
    topology.require(platform)
  except RuntimeError:
    return False
  return True
