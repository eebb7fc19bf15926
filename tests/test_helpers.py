"""tests/helpers.py: a dead subprocess's output is kept in files and summarised on failure."""
import subprocess
import sys

import pytest

from tests import helpers

# 200 numbered lines on stderr, then an abort, as a run that dies after a long log would.
_ABORT = ("import os, sys\n"
          "print('on stdout', flush=True)\n"
          "for i in range(1, 201): print(f'log line {i}', file=sys.stderr)\n"
          "print('F1205 12:00:00.000000 1 pjrt.cc:1] Check failed: planted', file=sys.stderr)\n"
          "sys.stderr.flush(); os.abort()")


def test_an_aborted_run_reports_its_signal_and_its_stderr_head_and_tail(tmp_path):
  with pytest.raises(pytest.fail.Exception) as failed:
    helpers.run([sys.executable, "-c", _ABORT], tmp_path / "logs" / "abort", timeout=120)
  message = str(failed.value)
  assert "exit code -6 (SIGABRT)" in message
  stderr = tmp_path / "logs" / "abort.stderr"
  assert f"full stderr: {stderr}" in message
  assert f"stdout: {stderr.with_suffix('.stdout')}" in message
  assert "log line 1\n" in message and "log line 40\n" in message  # the head
  assert "log line 41\n" not in message  # left out ...
  assert "log line 200\n" in message  # ... before the tail,
  assert message.count("| F1205 12:00:00.000000 1 pjrt.cc:1] Check failed") == 2  # among the
  # lines that look fatal, and in the tail,
  assert "Fatal Python error: Aborted" in message  # with faulthandler's dump in the tail.
  text = stderr.read_text()  # The whole stderr stays in the file.
  assert all(f"log line {i}\n" in text for i in range(1, 201))
  assert (tmp_path / "logs" / "abort.stdout").read_text() == "on stdout\n"


def test_logs_of_a_second_run_with_the_same_name_do_not_overwrite_the_first(tmp_path):
  for word in ("first", "second"):
    got = helpers.run([sys.executable, "-c", f"print('{word}')"], tmp_path / "run", timeout=120)
    assert got.stdout == f"{word}\n" and got.returncode == 0
  assert (tmp_path / "run.stdout").read_text() == "first\n"
  assert (tmp_path / "run-2.stdout").read_text() == "second\n"


def test_a_timeout_kills_the_run_and_says_so(tmp_path):
  with pytest.raises(pytest.fail.Exception, match=r"after 1 s and was killed: exit code -9 \("):
    helpers.run([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "t", timeout=1)


def test_exit_status_names_signals():
  assert helpers.exit_status(-6) == "-6 (SIGABRT)"
  assert helpers.exit_status(-9) == "-9 (SIGKILL)"
  assert helpers.exit_status(3) == "3"
  assert helpers.exit_status(None) == "none (still running)"


def test_excerpt_keeps_short_logs_whole_and_leaves_out_ignored_lines():
  text = "\n".join(["[Gloo] noise"] * 500 + ["one", "Traceback (most recent call last):", "two"])
  out = helpers.excerpt(text, ignore=("[Gloo]",))
  assert "Gloo" not in out and "--- all 3 lines ---" in out
  assert "lines that look fatal" in out and "  502| Traceback" in out


def test_wait_for_checkpoint_reports_a_run_that_died(tmp_path):
  proc = helpers.LoggedProcess([sys.executable, "-c", "import sys; sys.exit('boom')"],
                               tmp_path / "dead")
  with pytest.raises(pytest.fail.Exception, match=r"before checkpoint 8: exit code 1\n"):
    helpers.wait_for_checkpoint(proc, tmp_path / "workdir", min_step=8, timeout=60)
  # A process with a stderr pipe (as some tests start) is reported the same way.
  proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('boom')"],
                          stderr=subprocess.PIPE, text=True)
  with pytest.raises(pytest.fail.Exception, match=r"exit code 1\n(.|\n)*boom"):
    helpers.wait_for_checkpoint(proc, tmp_path / "workdir", min_step=8, timeout=60)
