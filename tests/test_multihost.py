"""Several processes on one machine, joined by jax.distributed over 127.0.0.1 on the CPU backend
(2 forced devices each): they meet at barriers, share text, build global arrays from their own
copies and exchange stop flags; two train.py processes train like one process with all 4 devices,
stop together on a signal sent to one of them, and resume."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

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
    import json, sys, time
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
    if pid == 0:  # process 1 never comes: a clear error after the timeout, no hang
      t = time.monotonic()
      try:
        parallel.barrier("a barrier process 1 skips", timeout_s={timeout})
      except parallel.ProcessesError as e:
        out["timeout"] = [str(e), time.monotonic() - t]
    print("RESULT " + json.dumps(out), flush=True)
""")
BARRIER_TIMEOUT_S = 2.0


def test_processes_meet_share_text_and_build_global_arrays(tmp_path):
  port = free_port()
  procs = [subprocess.Popen([sys.executable, "-c", COORDINATION.replace("{timeout}", str(BARRIER_TIMEOUT_S)),
                             f"127.0.0.1:{port}", str(pid)], cwd=REPO,
                            env=env(DEVICES_PER_PROCESS), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  runs = communicate(procs)
  for rc, _, stderr in runs:
    assert rc == 0, stderr[-3000:]
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
