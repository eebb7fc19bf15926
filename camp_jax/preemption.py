"""Preemption: every process stops at the same step after a SIGTERM reaches any of them.

Several processes (`jax.distributed` initialized) use JAX's own preemption sync point
(`multihost_utils.reached_preemption_sync_point`, as orbax's CheckpointManager does). When
`jax.distributed.initialize` starts its preemption sync manager, jax installs a C SIGTERM
handler; on the first notice in any process the coordination service collects every
process's last step counter and fixes the sync point at max + 1, and each process's call
for that counter returns True. No collective runs per step; the call is a mutex and a
compare until a notice comes. The counter is the training step: orbax's CheckpointManager.save
passes its step to the same sync point, and equal values do not disturb it.

One process (no `jax.distributed`) has no coordination service, where jax's sync point
always answers False: there a Python SIGTERM handler sets a flag and the sync point is the
first step after it. A coordinator started only for this would bind a port and must exist
before the first device is touched, which in-process callers (tests, notebooks) cannot
promise; one process needs no agreement.

Usage (call `reached` at every step, with consecutive steps, on every process):

  sync = preemption.SyncPoint(start_step=step)
  while step < num_steps:
    ...; step += 1
    if sync.reached(step): save; break
  sync.close()
"""
import signal

import jax
from absl import logging


class SyncPoint:
  """Answers, step after step, whether this is the step at which every process saves and stops.

  Attributes:
    uses_jax: True when the answer comes from JAX's preemption sync manager (jax.distributed
      initialized), False when from this process's SIGTERM flag.
  """

  def __init__(self, start_step: int = 0):
    """`start_step`: the step the loop starts from (the restored one); the same everywhere."""
    self.start_step = self._last = int(start_step)
    self.uses_jax = jax.distributed.is_initialized()
    self._requested = False
    self._previous = None
    if self.uses_jax:
      if not jax.config.jax_enable_preemption_service:
        raise ValueError("jax_enable_preemption_service is off: several processes need JAX's "
                         "preemption sync manager to stop together on a SIGTERM "
                         "(unset JAX_ENABLE_PREEMPTION_SERVICE or set it to 1)")
      if callable(signal.getsignal(signal.SIGTERM)):
        logging.warning("a Python SIGTERM handler (%s) replaces jax's preemption notifier: a "
                        "SIGTERM will not reach the preemption sync point",
                        signal.getsignal(signal.SIGTERM))
      self._requested = self.start_step > 0 and self._missed_notice()
    else:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _missed_notice(self) -> bool:
    """Whether a notice came before this (while the run restored or compiled).

    Before any call every counter is 0, so such a notice fixes the sync point at 1, which a
    resumed run never reaches: probing 1 finds it (on every process alike: a probe waits for
    this process's part of the protocol, which waits for all processes). The start step then
    becomes this process's counter, for a notice still to come.
    """
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    missed = multihost_utils.reached_preemption_sync_point(1)
    multihost_utils.reached_preemption_sync_point(self.start_step)
    if missed:
      logging.warning("a preemption notice came before step %d: stopping after it",
                      self.start_step + 1)
    return missed

  def _handle(self, signum, frame):
    del frame
    logging.warning("signal %d: saving a checkpoint at the next step, then exiting", signum)
    self._requested = True

  def reached(self, step: int) -> bool:
    """Whether all processes save and stop at `step`, the step just done.

    Called once per step with consecutive steps (start_step + 1, + 2, ...) on every process:
    jax's sync point is a counter value, and a process that skips it never stops.
    """
    if step != self._last + 1:
      raise ValueError(f"SyncPoint.reached({step}) after step {self._last}: call it at every "
                       "step, with consecutive steps")
    self._last = step
    if not self.uses_jax or self._requested:
      return self._requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if multihost_utils.reached_preemption_sync_point(step):
      logging.warning("preemption sync point: all processes stop at step %d", step)
      return True
    return False

  def close(self) -> None:
    """Gives SIGTERM back to the handler it had before (one process)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
