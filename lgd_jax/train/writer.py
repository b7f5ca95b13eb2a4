"""The metric writer: metrics.jsonl, TensorBoard and the console line.
"""

from __future__ import annotations

import json
import math
import os
import sys

from tensorboardX import SummaryWriter


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` and to TensorBoard event files."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled  # only one process of a multi-process run writes
    if not enabled:
      return
    self._drop_after(resume_step)
    self._file = open(self.path, "a")  # noqa: SIM115 (open for the run; close() closes it)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _drop_after(self, step: int) -> None:
    """After a resume, lines of steps the restored state has not reached are stale."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [ln for ln in f if ln.strip()]
    keep = []
    for ln in lines:
      try:
        if json.loads(ln).get("step", 0) <= step:
          keep.append(ln)
      except ValueError:
        pass
    if len(keep) != len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, self.path)

  def write(self, step: int, values: dict) -> None:
    """One JSON line (non-finite values as null) and the finite values to TensorBoard."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    record = {"step": int(step), **{k: v if math.isfinite(v) else None for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in values.items():
      if math.isfinite(v):
        self._tb.add_scalar(k.replace("val_", "val/", 1) if k.startswith("val_") else f"train/{k}",
                            v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)
