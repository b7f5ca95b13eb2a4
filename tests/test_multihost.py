"""Several processes on one machine, joined by jax.distributed over 127.0.0.1 on the CPU backend
(2 forced devices each): they meet at barriers, share text, build global arrays from their own
copies and exchange stop flags; two train.py processes train like one process with all 4 devices,
stop together on a signal sent to one of them, and resume."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lgd_jax import build
from lgd_jax.eval import restore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 600  # per run, generous: the CI machine may be busy
DEVICES_PER_PROCESS = 2


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices: int, cache_dir=None) -> dict:
  e = dict(os.environ, JAX_PLATFORMS="cpu",
           XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  if cache_dir is not None:
    # A persistent compilation cache shared by the runs (JAX writes it from process 0 only).
    e.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return e


def communicate(procs, timeout=WAIT_S):
  """(returncode, stdout, stderr) of each process; all are killed if one overruns."""
  out = []
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      out.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return out


def result(stdout: str) -> dict:
  line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


# ----------------------------------------------------------------------------------------------
# The coordination pieces of lgd_jax.parallel (cheap: no training program).

COORDINATION = textwrap.dedent("""
    import json, os, signal, sys, time
    import numpy as np
    from lgd_jax import parallel
    pid = int(sys.argv[2])
    parallel.initialize_distributed(sys.argv[1], 2, pid)
    import jax
    mesh = parallel.make_mesh()
    out = {"spans": parallel.spans_processes(mesh), "devices": mesh.devices.size}
    out["gathered"] = parallel.gather_text("names", f"p{pid}")
    out["announced"] = parallel.announce("greeting", "from 0" if pid == 0 else "from 1")
    parallel.barrier("all here")
    # Each process's own copy (process 1's differs on purpose): built without comparing copies.
    rep = parallel.replicate({"a": np.arange(4.0) + 10 * pid, "s": np.float32(pid)}, mesh)
    out["replicated"] = [rep["a"].sharding.is_fully_replicated,
                         len(rep["a"].sharding.device_set),
                         [np.asarray(s.data).tolist() for s in rep["a"].addressable_shards],
                         [float(s.data) for s in rep["s"].addressable_shards]]
    batch = parallel.shard_batch(np.arange(16.0).reshape(8, 2), mesh)
    out["rows"] = [np.asarray(s.data)[:, 0].tolist() for s in batch.addressable_shards]
    flags = parallel.ProcessFlags(mesh)
    out["flags"] = flags.receive(flags.send(7 * pid + 1))
    client = parallel._client()
    if pid == 0:  # process 1 never comes: a clear error after the timeout, no hang
      t = time.monotonic()
      try:
        parallel.barrier("a barrier process 1 skips", timeout_s={timeout})
      except parallel.ProcessesError as e:
        out["timeout"] = [str(e), time.monotonic() - t]
      client.key_value_set("test/done", "1")
    else:
      client.blocking_key_value_get("test/done", 60_000)
    print("RESULT " + json.dumps(out), flush=True)
    # SIGTERM ends a process outside training, as it does a single one (JAX's preemption
    # service would catch it and go on). Process 0, which hosts the coordination service, last.
    time.sleep(pid == 0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    print("SURVIVED SIGTERM", flush=True)
""")
BARRIER_TIMEOUT_S = 2.0


def test_processes_meet_share_text_and_build_global_arrays():
  port = free_port()
  child = COORDINATION.replace("{timeout}", str(BARRIER_TIMEOUT_S))
  procs = [subprocess.Popen([sys.executable, "-c", child, f"127.0.0.1:{port}", str(pid)], cwd=REPO,
                            env=env(DEVICES_PER_PROCESS), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  runs = communicate(procs)
  for rc, stdout, stderr in runs:
    assert rc == -signal.SIGTERM and "SURVIVED" not in stdout, stderr[-3000:]
  r0, r1 = (result(stdout) for _, stdout, _ in runs)
  for pid, r in enumerate((r0, r1)):
    assert r["spans"] and r["devices"] == 2 * DEVICES_PER_PROCESS
    assert r["gathered"] == ["p0", "p1"]
    assert r["announced"] == "from 0"
    # Replicated over all 4 devices from this process's copy: no cross-process comparison
    # (jax.device_put would all-gather every array from every process to compare them).
    full, ndev, shards, scalars = r["replicated"]
    assert full and ndev == 4
    assert shards == [[10.0 * pid + i for i in range(4)]] * DEVICES_PER_PROCESS
    assert scalars == [float(pid)] * DEVICES_PER_PROCESS
    # The batch's rows in order: process p's two devices hold rows 4p..4p+3, two each.
    assert r["rows"] == [[8.0 * pid, 8.0 * pid + 2], [8.0 * pid + 4, 8.0 * pid + 6]]
    assert r["flags"] == {"0": 1, "1": 8}
  msg, waited = r0["timeout"]
  # One line naming the barrier, who is missing and how long this process waited.
  assert msg.startswith("a barrier process 1 skips: another process did not get there within "
                        "2 s") and "\n" not in msg
  assert BARRIER_TIMEOUT_S <= waited < BARRIER_TIMEOUT_S + 20
  assert "timeout" not in r1


def test_a_process_index_out_of_range_is_one_line():
  from lgd_jax import parallel
  with pytest.raises(parallel.ShardingError, match=r"^--process_id .*expected 0\.\.1 for a run "
                                                   r"of 2 processes, got 2$"):
    parallel.initialize_distributed("127.0.0.1:1", 2, 2)


# ----------------------------------------------------------------------------------------------
# Host work done once, by process 0, while the others wait: this process plays process 1 of 2
# and the stand-ins of parallel's meeting points play process 0 when it gets there.


class Process1Of2:
  """Patches lgd_jax.parallel so that this process is process 1 of 2: ``announce`` waits for
  process 0, played by ``play_process_0`` (run as process 0), and records every meeting."""

  def __init__(self, monkeypatch, play_process_0=lambda: None):
    from lgd_jax import parallel
    self.primary = False
    self.meetings = []
    self.announced = []
    self._play = play_process_0
    monkeypatch.setattr(parallel, "multi_process", lambda: True)
    monkeypatch.setattr(parallel, "is_primary", lambda: self.primary)
    monkeypatch.setattr(parallel, "announce", self.announce)
    monkeypatch.setattr(parallel, "barrier", self.barrier)
    monkeypatch.setattr(parallel, "gather_text", self.gather_text)
    self.at_barrier = lambda name: None

  def as_process_0(self, fn):
    self.primary = True
    try:
      return fn()
    finally:
      self.primary = False

  def announce(self, name, text="", timeout_s=None):
    self.meetings.append(("announce", name, self.primary))
    if self.primary:
      self.announced.append(text)
      return text
    self.as_process_0(self._play)  # process 1 waits until process 0 announces
    return self.announced.pop(0)

  def barrier(self, name, timeout_s=None):
    self.meetings.append(("barrier", name, self.primary))
    self.at_barrier(name)  # what process 0 did before it reached the barrier

  def gather_text(self, name, text, timeout_s=None):
    self.meetings.append(("gather", name, self.primary))
    return [text, text]  # process 0 read the same files


def _write_amass(root, num_sequences=4, frames=12):
  rng = np.random.default_rng(0)
  for i in range(num_sequences):
    poses = rng.normal(0.0, 0.2, (frames, 156))
    os.makedirs(root / f"s{i}", exist_ok=True)
    np.savez(root / f"s{i}" / "walk_poses.npz", poses=poses, betas=rng.normal(size=16),
             trans=np.zeros((frames, 3)), gender=np.array("male"),
             mocap_framerate=np.array(60.0), dmpls=np.zeros((frames, 8)))
  return root


def _amass_config(tmp_path, amass_dir):
  from conftest import tiny_train_config
  return tiny_train_config(amass_dir=str(amass_dir), amass_cache=str(tmp_path / "cache.npz"),
                           val_fraction=0.25)


def test_amass_is_preprocessed_by_process_0_while_the_others_wait(tmp_path, monkeypatch):
  from lgd_jax.data import amass
  config = _amass_config(tmp_path, _write_amass(tmp_path / "amass"))
  built = []
  preprocess = amass.preprocess

  def recording_preprocess(*args, **kwargs):
    built.append("process 0" if world.primary else "process 1")
    return preprocess(*args, **kwargs)
  monkeypatch.setattr(amass, "preprocess", recording_preprocess)
  world = Process1Of2(monkeypatch, lambda: build.load_amass(config))
  data = build.load_amass(config)
  # Process 1 waited for process 0's word, process 0 built the cache once, process 1 read it.
  assert world.meetings == [("announce", "the AMASS cache", False),
                            ("announce", "the AMASS cache", True)]
  assert built == ["process 0"]
  assert data["train_poses"].shape[0] + data["val_poses"].shape[0] == 4 * 6  # 60 -> 30 fps


def test_amass_failure_on_process_0_is_one_line_on_the_others(tmp_path, monkeypatch):
  from lgd_jax.data import amass
  (tmp_path / "empty").mkdir()
  config = _amass_config(tmp_path, tmp_path / "empty")
  failures = []

  def process_0():
    with pytest.raises(amass.AmassError) as e:
      build.load_amass(config)
    failures.append(str(e.value))
  Process1Of2(monkeypatch, process_0)
  with pytest.raises(amass.AmassError) as e:
    build.load_amass(config)
  msg = str(e.value)
  assert msg.startswith("process 0 could not prepare the AMASS data: ") and "\n" not in msg
  assert msg.endswith(" ".join(failures[0].split()))


def test_corrupt_checkpoint_is_moved_by_process_0_before_the_others_look_again(tmp_path,
                                                                             monkeypatch):
  from lgd_jax import checkpoints
  from lgd_jax.config import base_config
  config = base_config()
  mngr = checkpoints.manager(tmp_path / "run")
  for step in (1, 2):
    checkpoints.save(mngr, step, {"w": np.full(64, step, np.float32)}, config)
  state_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "run" / "checkpoints" / "2"
                                                            / "state") for f in fs]
  target = max(state_files, key=os.path.getsize)
  data = bytearray(Path(target).read_bytes())
  data[len(data) // 2:len(data) // 2 + 16] = bytes(b ^ 0x5A for b in data[len(data) // 2:][:16])
  Path(target).write_bytes(bytes(data))

  world = Process1Of2(monkeypatch, lambda: checkpoints.parallel.announce(
      "destination", str(tmp_path / "run" / checkpoints.CORRUPT_SUBDIR / "2-from-process-0")))
  src = tmp_path / "run" / "checkpoints" / "2"
  seen = {}

  def process_0_moves(name):
    seen["in place at the barrier"] = src.is_dir()  # process 1 moved nothing itself
    dst = tmp_path / "run" / checkpoints.CORRUPT_SUBDIR
    dst.mkdir()
    shutil.move(str(src), str(dst / "2-from-process-0"))
  world.at_barrier = process_0_moves
  logs = []
  step, state = checkpoints.restore_latest_good(mngr, {"w": np.zeros(64, np.float32)}, config,
                                                log=logs.append)
  assert step == 1 and np.all(np.asarray(state["w"]) == 1)
  # Both processes judged each checkpoint (2: bad, so set aside; 1: good); process 0 named the
  # destination and moved it before process 1 looked at the checkpoints again.
  kinds = [m[0] for m in world.meetings if not m[2]]
  assert kinds == ["gather", "gather", "announce", "barrier", "gather", "gather"]
  assert seen == {"in place at the barrier": True}
  assert len(logs) == 1 and "2-from-process-0" in logs[0] and "/2" in logs[0]
  assert mngr.all_steps() == [1]
  mngr.close()


# ----------------------------------------------------------------------------------------------
# train.py in two processes against one process with all 4 devices (slow: three compiled runs).

# train.py under two checks: no host array reaches the devices of several processes through
# jax.device_put (which compares every array across the processes: an all-gather of each), and
# the validation source is on every device, like the training one.
TRAIN_CHILD = textwrap.dedent("""
    import json, sys
    from jax.experimental import multihost_utils
    compare = multihost_utils.assert_equal

    def no_host_puts(x, fail_message=""):
      if "passed to device_put" in fail_message:
        raise AssertionError("host data put on the devices of several processes by "
                             f"jax.device_put: {type(x).__name__} {getattr(x, 'shape', '')}")
      return compare(x, fail_message)
    multihost_utils.assert_equal = no_host_puts
    from lgd_jax import build
    batches = build.validation_batches

    def checked(config, problem, source, *args, **kwargs):
      s = source.poses.sharding
      print("VALIDATION SOURCE " + json.dumps([len(s.device_set), s.is_fully_replicated]),
            file=sys.stderr, flush=True)
      return batches(config, problem, source, *args, **kwargs)
    build.validation_batches = checked
    from lgd_jax.commands.train import main
    sys.exit(main(["train.py"] + sys.argv[1:]))
""")
STOP_AFTER = 12  # SIGTERM to process 1 once process 0 has logged this step (checkpoint at 10)
TRAIN_ARGS = ["--config", "configs/tiny.py", "--noprogress", "--config.batch_size=16",
              "--config.model.hidden=32", "--config.num_epochs=2", "--config.amass_fps=0",
              "--config.val_fraction=0.25", "--config.checkpoint_every=10",
              "--config.val_samples=16"]
# Two processes reduce over the devices through Gloo, one process within XLA: the same sums in
# another order, so the losses agree to float32 rounding ...
LOSS_RTOL = 8e-6
# ... and Adam's normalised steps turn that into parameter differences of a few learning rates
# on the rare weights whose gradient is near zero (as tests/test_parallel.py measures).
PARAM_MEDIAN_ATOL = 1e-6
PARAM_MAX_ATOL = 0.02


def _train_args(workdir, amass_dir, cache):
  return ["--workdir", str(workdir), *TRAIN_ARGS, f"--config.amass_dir={amass_dir}",
          f"--config.amass_cache={cache}"]


def _two_processes(workdir, amass_dir, cache, compile_cache):
  port = free_port()
  return [subprocess.Popen([sys.executable, "-c", TRAIN_CHILD,
                            *_train_args(workdir, amass_dir, cache),
                            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                            f"--process_id={pid}"], cwd=REPO,
                           env=env(DEVICES_PER_PROCESS, compile_cache), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for pid in (0, 1)]


def _metrics(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return [json.loads(ln) for ln in f.read().splitlines() if ln.endswith("}")]
  except FileNotFoundError:
    return []


def _stopped_step(stderr):
  lines = [ln for ln in stderr.splitlines() if ln.startswith("stopped:")]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0], int(lines[0].split("stopped at step ")[1].split()[0])


def _params(workdir):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(restore.restore(workdir)
                                                                .variables))]


@pytest.mark.slow
def test_two_processes_train_stop_together_and_resume_like_one(tmp_path):
  from lgd_jax import checkpoints
  amass_dir = _write_amass(tmp_path / "amass", num_sequences=12, frames=30)
  compile_cache, ref, work = tmp_path / "compile_cache", tmp_path / "one", tmp_path / "two"
  # The reference (one process, 4 devices) runs beside the interrupted pair.
  reference = subprocess.Popen([sys.executable, "train.py",
                                *_train_args(ref, amass_dir, tmp_path / "ref.npz")], cwd=REPO,
                               env=env(2 * DEVICES_PER_PROCESS, compile_cache),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  procs = _two_processes(work, amass_dir, tmp_path / "two.npz", compile_cache)
  deadline = time.monotonic() + WAIT_S
  while not (lines := _metrics(work)) or lines[-1]["step"] < STOP_AFTER:
    assert all(p.poll() is None for p in procs), [p.stderr.read()[-3000:] for p in procs]
    assert time.monotonic() < deadline, "run too slow"
    time.sleep(0.005)
  procs[1].send_signal(signal.SIGTERM)
  (rc0, _, err0), (rc1, _, err1) = communicate(procs)
  (rc_ref, _, err_ref), = communicate([reference])
  assert rc_ref == 0, err_ref[-3000:]
  total = _metrics(ref)[-1]["step"]
  assert total >= 2 * STOP_AFTER

  # Both processes stopped after the same step with SIGTERM's exit code, one clean line each;
  # that step's checkpoint is the latest, complete, and matches its digest.
  assert (rc0, rc1) == (128 + signal.SIGTERM,) * 2, (err0[-3000:], err1[-3000:])
  (line0, step0), (line1, step1) = _stopped_step(err0), _stopped_step(err1)
  assert step0 == step1 and STOP_AFTER < step0 < total
  assert "SIGTERM (sent to process 1" in line0 and "SIGTERM (sent to process 1" in line1
  assert "Traceback" not in err0 + err1
  directory, latest = checkpoints.locate(work)
  assert latest == step0 and sorted(checkpoints.manager_at(directory).all_steps()) == [10, step0]
  _params(work)  # restores it and checks its digest (raises on a mismatch)
  for err in (err0, err1):  # the validation source is replicated over all 4 devices
    assert "VALIDATION SOURCE [4, true]" in err, err[-3000:]

  # Damage the stopped step's checkpoint: the rerun sets it aside on every process (the same
  # destination), falls back to step 10 and reaches the reference's parameters.
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory / str(step0) / "state")
           for f in fs]
  with open(max(files, key=os.path.getsize), "r+b") as f:
    f.truncate(os.path.getsize(f.name) // 2)
  (rc0, _, err0), (rc1, _, err1) = communicate(_two_processes(work, amass_dir,
                                                              tmp_path / "two.npz",
                                                              compile_cache))
  assert (rc0, rc1) == (0, 0), (err0[-3000:], err1[-3000:])
  for err in (err0, err1):
    assert f"resumed from {directory / '10'} " in err
  moved = [[ln.split("moved it to ")[1].split()[0] for ln in err.splitlines()
            if ln.startswith("warning:")] for err in (err0, err1)]
  assert len(moved[0]) == 1 and moved[0] == moved[1] and os.path.isdir(moved[0][0])
  assert checkpoints.locate(work)[1] == total

  two, one = _metrics(work), _metrics(ref)
  assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, total + 1))
  np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one],
                             rtol=LOSS_RTOL)
  diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(_params(work), _params(ref))])
  assert np.median(diff) <= PARAM_MEDIAN_ATOL and diff.max() <= PARAM_MAX_ATOL
