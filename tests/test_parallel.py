"""Data-parallel training over 4 forced CPU devices follows the 1-device run.

XLA's device count is fixed when JAX starts, so the runs happen in a child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 4
# The 4-device program reduces in another order: losses agree to float32 rounding ...
LOSS_RTOL = 1e-5
# ... and Adam's normalised steps turn that rounding into parameter differences of a fraction
# of the learning rate on a few near-zero-gradient weights; the bulk must agree closely.
PARAM_MEDIAN_ATOL = 1e-6
PARAM_MAX_FRACTION_OF_TRAVEL = 0.25  # max |p4 - p1| relative to max |p1 - p_init|

CHILD = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.path.join({repo!r}, "tests"))
    import jax, numpy as np
    from conftest import tiny_train_config
    from lgd_jax import parallel, training
    assert len(jax.devices()) == {n}, jax.devices()
    out = {{}}
    for nd in (1, {n}):
      wd = os.path.join({tmp!r}, f"run{{nd}}")
      state = training.train_and_evaluate(tiny_train_config(num_devices=nd), wd,
                                          show_progress=False)
      leaf = jax.tree.leaves(state.params)[0]
      with open(os.path.join(wd, "metrics.jsonl")) as f:
        losses = [json.loads(l)["loss"] for l in f]
      np.savez(os.path.join({tmp!r}, f"params{{nd}}.npz"),
               *[np.asarray(x) for x in jax.tree.leaves(state.params)])
      out[nd] = {{"losses": losses, "devices": len(leaf.sharding.device_set),
                  "replicated": bool(leaf.sharding.is_fully_replicated)}}
    try:
      training.train_and_evaluate(tiny_train_config(batch_size=30), os.path.join({tmp!r}, "bad"),
                                  show_progress=False)
      out["indivisible"] = None
    except parallel.ShardingError as e:
      out["indivisible"] = str(e)
    out["bad_created"] = os.path.exists(os.path.join({tmp!r}, "bad"))
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("parallel"))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}")
  proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=REPO, tmp=tmp, n=NUM_DEVICES)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
  return tmp, json.loads(line[len("RESULT "):])


def test_four_devices_follow_one_device(runs):
  tmp, out = runs
  one, four = out["1"], out[str(NUM_DEVICES)]
  assert one["devices"] == 1 and four["devices"] == NUM_DEVICES and four["replicated"]
  assert len(one["losses"]) == len(four["losses"]) >= 10
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=LOSS_RTOL)
  p1 = np.load(os.path.join(tmp, "params1.npz"))
  p4 = np.load(os.path.join(tmp, f"params{NUM_DEVICES}.npz"))
  diff = np.concatenate([np.abs(p1[k] - p4[k]).ravel() for k in p1.files])
  assert np.median(diff) <= PARAM_MEDIAN_ATOL
  # Travel from the initial parameters (the same seed): the runs moved far more than they differ.
  travel = max(float(np.max(np.abs(p1[k]))) for k in p1.files)
  assert diff.max() <= PARAM_MAX_FRACTION_OF_TRAVEL * travel


def test_batch_must_divide_by_the_device_count(runs):
  _, out = runs
  msg = out["indivisible"]
  assert msg is not None and "batch_size" in msg and "30" in msg and str(NUM_DEVICES) in msg
  assert not out["bad_created"]  # refused before anything was written
