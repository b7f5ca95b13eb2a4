"""Never losing work: killed and signalled runs resume exactly, corrupt checkpoints are set aside,
and non-finite steps are never applied."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_train_config

from lgd_jax import build, checkpoints
from lgd_jax.data import batches
from lgd_jax.eval import restore
from lgd_jax.train import loop, signals

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 600  # per run, generous: the CI machine may be busy
# A tiny run through the real command line, long enough to be interrupted mid-way.
CLI_ARGS = ["--config", "configs/tiny.py", "--noprogress", "--config.batch_size=128",
            "--config.model.hidden=64", "--config.steps_per_epoch=40",
            "--config.checkpoint_every=10"]
TOTAL_STEPS = 80


def _env(cache_dir):
  # A persistent compilation cache shared by the runs: only the first one compiles.
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _launch(workdir, cache_dir):
  return subprocess.Popen([sys.executable, "train.py", "--workdir", str(workdir), *CLI_ARGS],
                          cwd=REPO, env=_env(cache_dir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _last_step(workdir) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [ln for ln in f.read().splitlines() if ln.endswith("}")]
  except FileNotFoundError:
    return 0
  return json.loads(lines[-1])["step"] if lines else 0


def _interrupt(proc, workdir, at_step, sig) -> int:
  """Sends ``sig`` once the run has logged ``at_step``; returns the step it had reached."""
  deadline = time.monotonic() + WAIT_S
  while (reached := _last_step(workdir)) < at_step:
    assert proc.poll() is None, f"run ended before step {at_step}: {proc.stderr.read()[-2000:]}"
    assert time.monotonic() < deadline, "run too slow"
    time.sleep(0.005)
  proc.send_signal(sig)
  proc.wait(timeout=WAIT_S)
  assert reached < TOTAL_STEPS
  return reached


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


def _variables(workdir):
  return jax.device_get(restore.restore(workdir).variables)


@pytest.mark.slow
def test_killed_and_signalled_runs_resume_exactly(tmp_path):
  cache, work, ref = tmp_path / "cache", tmp_path / "interrupted", tmp_path / "reference"
  reference = subprocess.run([sys.executable, "train.py", "--workdir", str(ref), *CLI_ARGS],
                             cwd=REPO, env=_env(cache), capture_output=True, text=True,
                             timeout=WAIT_S)
  assert reference.returncode == 0, reference.stderr[-2000:]

  # SIGKILL at two different points, SIGTERM in between (SIGINT: the in-process test below);
  # each rerun continues.
  for at_step, sig in ((14, signal.SIGKILL), (33, signal.SIGTERM), (55, signal.SIGKILL)):
    proc = _launch(work, cache)
    reached = _interrupt(proc, work, at_step, sig)
    err = proc.stderr.read()
    if sig == signal.SIGKILL:
      assert proc.returncode == -signal.SIGKILL
    else:
      # A clean stop: one line naming the signal and the checkpoint it saved, no traceback.
      assert proc.returncode == 128 + sig, err[-2000:]
      lines = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
      assert len(lines) == 1 and signal.Signals(sig).name in lines[0], err[-2000:]
      assert "Traceback" not in err
      saved = int(lines[0].split("stopped at step ")[1].split()[0])
      assert saved >= reached
      assert checkpoints.locate(work)[1] == saved

  final = subprocess.run([sys.executable, "train.py", "--workdir", str(work), *CLI_ARGS],
                         cwd=REPO, env=_env(cache), capture_output=True, text=True,
                         timeout=WAIT_S)
  assert final.returncode == 0, final.stderr[-2000:]
  assert "resumed from" in final.stderr
  # The same data order and random streams: bit-identical parameters and the same loss curve.
  assert jax.tree.all(jax.tree.map(np.array_equal, _variables(work), _variables(ref)))
  assert _losses(work) == _losses(ref)
  assert checkpoints.locate(work)[1] == TOTAL_STEPS


@pytest.mark.slow  # whole training runs of their own (CI runs -m slow)
def test_sigint_saves_a_checkpoint_and_stops(tmp_path):
  config = tiny_train_config(num_epochs=2)  # the program other tests compiled
  workdir = str(tmp_path / "run")

  def interrupt():
    deadline = time.monotonic() + WAIT_S
    while _last_step(workdir) < 15 and time.monotonic() < deadline:
      time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGINT)

  # A late signal (after training returned) must not interrupt pytest: park it on a no-op.
  pytest_handler = signal.signal(signal.SIGINT, lambda *_: None)
  thread = threading.Thread(target=interrupt, daemon=True)
  try:
    thread.start()
    with pytest.raises(signals.TrainingStopped) as e:
      loop.train_and_evaluate(config, workdir, show_progress=False)
    thread.join()
  finally:
    signal.signal(signal.SIGINT, pytest_handler)
  msg = str(e.value)
  assert e.value.exit_code == 128 + signal.SIGINT and msg.startswith("SIGINT: stopped at step")
  step = int(msg.split("stopped at step ")[1].split()[0])
  assert 15 <= step < 24
  assert checkpoints.locate(workdir)[1] == step  # saved at the step it stopped


def _corrupt(step_dir: str, how: str) -> None:
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  target = max(files, key=os.path.getsize)
  data = bytearray(Path(target).read_bytes())
  if how == "truncate":
    data = data[:len(data) // 2]
  else:  # flip bits in the middle, same size
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0x5A for b in data[mid:mid + 16])
  with open(target, "wb") as f:
    f.write(data)


@pytest.mark.slow  # whole training runs of their own (CI runs -m slow)
def test_corrupt_checkpoints_are_detected_and_set_aside(tmp_path, capsys):
  config = tiny_train_config(num_epochs=2)  # checkpoints at 6, 12, 18, 24 (3 kept)
  workdir = str(tmp_path / "run")
  reference = jax.device_get(loop.train_and_evaluate(config, workdir,
                                                         show_progress=False).params)
  directory, latest = checkpoints.locate(workdir)
  assert latest == 24
  _corrupt(str(directory / "24"), "truncate")
  _corrupt(str(directory / "18"), "flip")

  # Evaluating the damaged checkpoint fails in one line naming it.
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoints/24"):
    restore.restore(workdir)

  capsys.readouterr()
  state = loop.train_and_evaluate(config, workdir, show_progress=False)
  err = capsys.readouterr().err
  warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
  assert len(warnings) == 2 and "/24" in warnings[0] and "/18" in warnings[1]
  assert "digest" in warnings[1] or "restore" in warnings[1]
  assert f"resumed from {directory / '12'}" in err
  # Nothing deleted: the damaged checkpoints were moved aside.
  aside = sorted(os.listdir(os.path.join(workdir, checkpoints.CORRUPT_SUBDIR)))
  assert [name.split("-")[0] for name in aside] == ["18", "24"]
  # Continuing from step 12 retraces the same steps to the same parameters.
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(state.params), reference))


@pytest.fixture
def resumable(tmp_path, tiny_checkpoint):
  """A copy of the tiny run (12 steps done), to be continued for another epoch."""
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_checkpoint, workdir)
  return workdir


def _poisoned_data(fraction):
  """load_pose_data's stand-in: synthetic poses of which ``fraction`` carry a NaN."""
  poses = np.array(jax.random.uniform(jax.random.PRNGKey(0), (400, 72), minval=-0.2,
                                        maxval=0.2))
  poses[:int(len(poses) * fraction), 5] = np.nan
  src = batches.PoseSource(jax.numpy.asarray(poses), jax.numpy.zeros((400, 10)))

  def load(config):
    return src, batches.PoseSource(), int(config.steps_per_epoch)
  return load


@pytest.mark.slow
def test_nonfinite_loss_stops_without_applying(resumable, monkeypatch):
  directory, step = checkpoints.locate(resumable)
  before = {s: checkpoints.digest(_state_files(directory / str(s))) for s in (6, 12)}
  monkeypatch.setattr(build, "load_pose_data", _poisoned_data(1.0))
  with pytest.raises(signals.TrainingStopped) as e:
    loop.train_and_evaluate(tiny_train_config(num_epochs=2), resumable, show_progress=False)
  msg = str(e.value)
  assert e.value.exit_code != 0
  assert msg.startswith(f"step {step + 1}: non-finite") and str(directory / "12") in msg
  # The last good checkpoint is intact and no checkpoint of the bad state was written.
  assert checkpoints.locate(resumable)[1] == step
  assert {s: checkpoints.digest(_state_files(directory / str(s))) for s in (6, 12)} == before


def _state_files(step_dir):
  return [np.frombuffer(open(os.path.join(d, f), "rb").read(), np.uint8)
          for d, _, fs in sorted(os.walk(step_dir)) for f in sorted(fs) if "meta" not in d]


@pytest.mark.slow  # the default "stop" policy is tested above; this compiles another step
def test_nonfinite_batches_can_be_skipped_and_counted(resumable, monkeypatch):
  monkeypatch.setattr(build, "load_pose_data", _poisoned_data(0.03))
  config = tiny_train_config(num_epochs=2, on_nonfinite="skip")
  state = loop.train_and_evaluate(config, resumable, show_progress=False)
  skipped = int(state.num_skipped)
  # About 1 - 0.97^32 = 62 % of the 12 new batches hold a NaN; some are clean.
  assert 0 < skipped < 12
  assert int(state.bad_step) > 12
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
  with open(os.path.join(resumable, "metrics.jsonl")) as f:
    records = [json.loads(ln) for ln in f]
  assert records[-1]["skipped_steps"] == skipped
  assert any(r["loss"] is None for r in records)  # the skipped steps' losses, as JSON null
