"""Stopping cleanly: SIGTERM/SIGINT handling agreed by every process, and injected faults for tests.
"""

from __future__ import annotations

import signal
import threading

from jax.sharding import Mesh

from lgd_jax import parallel
from lgd_jax.errors import TrainingStopped
from lgd_jax.train_state import TrainState


class _StopSignals:
  """Turns SIGINT/SIGTERM into a request that the loop honours after the current step (saving a
  checkpoint first). A second SIGINT interrupts at once."""

  def __enter__(self):
    self.signum = None
    self._old = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    return False


class _AgreedStop:
  """The step after which every process stops for a signal, and which signal.

  :meth:`after_step` is asked once per step, after its logging and validation. One process stops
  after the step in which (or in whose logging) it got the signal. Several processes each get
  their own signals, so after each step every process sends its signal number (0: none) to all
  the others (:class:`parallel.ProcessFlags`) and reads the exchange sent after the previous
  step, which is done by then: the host never waits for the step in flight, and every process
  reads the same values after the same step, so they all stop there and save the same
  checkpoint.
  """

  def __init__(self, mesh: Mesh):
    self._flags = parallel.ProcessFlags(mesh) if parallel.multi_process() else None
    self._sent = None

  def after_step(self, signum: int | None) -> tuple[int, int | None] | None:
    """(signal number, process that got it or None in a single process) to stop for now, or
    None to go on."""
    if self._flags is None:
      return (signum, None) if signum else None
    sent, self._sent = self._sent, self._flags.send(signum or 0)
    if sent is None:
      return None
    got = [(v, p) for p, v in sorted(self._flags.receive(sent).items()) if v]
    return got[0] if got else None


def _check_faults(state: TrainState, config, done: int, last_saved: str | None) -> None:
  """Stops training (``on_nonfinite`` = "stop") once a step had a non-finite loss or gradient."""
  bad = int(parallel.to_host(state.bad_step))
  if bad < 0 or config.get("on_nonfinite", "stop") != "stop":
    return
  keep = f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was saved"
  raise TrainingStopped(
      f"step {bad}: non-finite loss or gradients; the update was not applied and training "
      f"stopped at step {done} ({keep}; --config.on_nonfinite=skip skips such batches instead)",
      exit_code=3)
