"""Runs the ablation's steps one after another as subprocesses: resumable, with progress.

A step whose `done` file exists is skipped; an interrupted training run resumes from its
own checkpoints when its command runs again on the same workdir (camp_jax.main does that).
Each command's output goes to its log file; `stream` also echoes it, prefixed.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from camp_jax.ablation.plan import Step

TIMES = "ablation_times.json"  # Seconds each step took, kept across calls.
TERMINATE_WAIT_S = 120         # After Ctrl-C: how long a run may take to save its checkpoint.


def _run(step: Step, stream: bool, out) -> int:
  """Runs one command, its output appended to its log (and echoed with `stream`)."""
  step.log.parent.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  with open(step.log, "a", encoding="utf-8") as log:
    log.write(f"$ {' '.join(step.command)}\n")
    log.flush()
    proc = subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=env)
    try:
      for line in proc.stdout:
        log.write(line)
        if stream:
          print(f"  {step.name}| {line}", end="", file=out, flush=True)
      return proc.wait()
    except BaseException:
      # Ctrl-C: SIGTERM lets camp_jax.main save a checkpoint (the next call resumes there).
      proc.send_signal(signal.SIGTERM)
      try:
        proc.wait(TERMINATE_WAIT_S)
      except subprocess.TimeoutExpired:
        proc.kill()
      raise


def _tail(path: pathlib.Path, lines: int = 25) -> str:
  try:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
  except OSError:
    return ""


def execute(steps: list[Step], workdir, stream: bool = False, out=sys.stdout) -> dict:
  """Runs the unfinished steps in order; returns {step name: seconds} of every timed step.

  Raises RuntimeError (naming the log) when a command fails or finishes without its
  `done` file; the steps after it are not started.
  """
  times_path = pathlib.Path(workdir) / TIMES
  times = json.loads(times_path.read_text()) if times_path.is_file() else {}
  todo = [s for s in steps if not s.done.is_file()]
  if len(todo) < len(steps):
    print(f"{len(steps) - len(todo)} of {len(steps)} steps already finished (skipped)",
          file=out, flush=True)
  spent = 0.0
  for k, step in enumerate(todo, 1):
    print(f"[{k}/{len(todo)}] {step.name}: running (log: {step.log})", file=out, flush=True)
    start = time.time()
    code = _run(step, stream, out)
    seconds = time.time() - start
    if code != 0 or not step.done.is_file():
      why = f"exit code {code}" if code != 0 else f"no {step.done} at its end"
      raise RuntimeError(f"{step.name} failed ({why}); the end of its log {step.log}:\n"
                         f"{_tail(step.log)}")
    spent += seconds
    times[step.name] = round(seconds, 1)
    times_path.parent.mkdir(parents=True, exist_ok=True)
    times_path.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    left = len(todo) - k
    eta = f", about {spent / k * left / 60:.1f} min" if left else ""
    print(f"[{k}/{len(todo)}] {step.name}: done in {seconds:.0f} s; {left} left{eta}",
          file=out, flush=True)
  return times
