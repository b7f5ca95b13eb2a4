"""Bad input through the real command line: exit status != 0, one line naming the file or field,
no traceback (unless --debug), and nothing already written changed or deleted."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lgd_jax import body

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "tests", "bad_inputs")
TIMEOUT_S = 600
PARALLEL_RUNS = 3


def _tree(root):
  """{relative path: sha256} of every file under ``root``."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
  return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_checkpoint):
  """The static corpus plus files built here, and directories holding earlier outputs."""
  root = tmp_path_factory.mktemp("bad")
  c = {k: os.path.join(CORPUS, k) for k in os.listdir(CORPUS)}
  arrays = body.synthetic_smpl_arrays(num_verts=200)
  arrays.pop("landmarks")
  missing = {k: v for k, v in arrays.items() if k != "weights"}
  c["model_missing_key.npz"] = str(root / "model_missing_key.npz")
  np.savez(c["model_missing_key.npz"], **missing)
  wrong = dict(arrays, weights=arrays["weights"][:, :23])
  c["model_wrong_shape.npz"] = str(root / "model_wrong_shape.npz")
  np.savez(c["model_wrong_shape.npz"], **wrong)
  c["model_garbage.npz"] = str(root / "model_garbage.npz")
  with open(c["model_garbage.npz"], "wb") as f:
    f.write(os.urandom(4096))
  amass = root / "amass_no_poses" / "subject"
  amass.mkdir(parents=True)
  np.savez(amass / "walk_poses.npz", trans=np.zeros((10, 3)), betas=np.zeros(16),
           gender=np.array("neutral"), mocap_framerate=np.array(60.0))
  c["amass_no_poses"] = str(root / "amass_no_poses")
  (root / "amass_empty").mkdir()
  c["amass_empty"] = str(root / "amass_empty")
  # Earlier outputs that must survive: a training workdir of another config, a detection folder.
  c["other_run"] = str(root / "other_run")
  shutil.copytree(tiny_checkpoint, c["other_run"])
  c["fits"] = str(root / "fits")
  os.makedirs(c["fits"])
  with open(os.path.join(c["fits"], "notes.txt"), "w") as f:
    f.write("an earlier result\n")
  c["ckpt"] = tiny_checkpoint
  c["missing"] = str(root / "does_not_exist")
  return c


def _train(workdir, *overrides):
  return ["train.py", "--config", "configs/tiny.py", "--workdir", workdir, "--noprogress",
          *overrides]


def _fit(c, keypoints):
  return ["evaluate.py", "--ckpt", c["ckpt"], "--keypoints", keypoints, "--out-dir", c["fits"]]


# (case id, command builder, substrings the one error line must hold)
CASES = [
    ("unknown_config_key", lambda c: _train(c["other_run"], "--config.nonsense=1"),
     ["--config.nonsense", "no such field"]),
    ("wrong_type_override", lambda c: _train(c["other_run"], "--config.batch_size=abc"),
     ["--config.batch_size", "abc"]),
    ("missing_model", lambda c: _train(c["other_run"], f"--config.body_model={c['missing']}.pkl"),
     ["does_not_exist.pkl"]),
    ("unreadable_model", lambda c: _train(c["other_run"],
                                          f"--config.body_model={c['model_garbage.npz']}"),
     ["model_garbage.npz"]),
    ("model_missing_key", lambda c: _train(c["other_run"],
                                           f"--config.body_model={c['model_missing_key.npz']}"),
     ["model_missing_key.npz", "weights"]),
    ("model_wrong_shape", lambda c: _train(c["other_run"],
                                           f"--config.body_model={c['model_wrong_shape.npz']}"),
     ["model_wrong_shape.npz", "weights"]),
    ("text_named_pkl", lambda c: _train(c["other_run"],
                                        f"--config.body_model={c['text_named.pkl']}"),
     ["text_named.pkl"]),
    ("amass_without_poses", lambda c: _train(c["other_run"],
                                             f"--config.amass_dir={c['amass_no_poses']}"),
     ["walk_poses.npz", "poses"]),
    ("amass_empty_dir", lambda c: _train(c["other_run"], f"--config.amass_dir={c['amass_empty']}"),
     ["amass_empty"]),
    ("checkpoint_missing", lambda c: ["evaluate.py", "--ckpt", c["missing"]],
     ["does_not_exist"]),
    ("checkpoint_of_another_config", lambda c: _train(c["other_run"]),
     ["other_run", "another config"]),
    ("keypoints_malformed", lambda c: _fit(c, c["keypoints_malformed.json"]),
     ["keypoints_malformed.json"]),
    ("keypoints_nan", lambda c: _fit(c, c["keypoints_nan.json"]),
     ["keypoints_nan.json", "NaN"]),
    ("keypoints_wrong_count", lambda c: _fit(c, c["keypoints_wrong_count.json"]),
     ["keypoints_wrong_count.json", "18"]),
]


def _run(cmd, debug=False):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *cmd] + (["--debug"] if debug else []), cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


# The default run checks one case of each kind (config, model file, data, checkpoint, detections);
# the rest run with the slow tests (each case is a command of its own, several seconds apiece).
DEFAULT_CASES = ("unknown_config_key", "model_missing_key", "amass_without_poses",
                 "checkpoint_of_another_config", "keypoints_nan")


def _run_cases(corpus, cases):
  """``cases`` run once (a few at a time), with the earlier outputs snapshotted around them."""
  watched = [corpus["other_run"], corpus["fits"], corpus["ckpt"], CORPUS]
  before = {d: _tree(d) for d in watched}
  with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
    procs = dict(zip([c[0] for c in cases],
                     pool.map(lambda case: _run(case[1](corpus)), cases)))
  after = {d: _tree(d) for d in watched}
  return procs, before, after


@pytest.fixture(scope="module")
def outcomes(corpus):
  return _run_cases(corpus, [c for c in CASES if c[0] in DEFAULT_CASES])


@pytest.fixture(scope="module")
def slow_outcomes(corpus):
  return _run_cases(corpus, [c for c in CASES if c[0] not in DEFAULT_CASES])


def _case_params():
  return [pytest.param(c, id=c[0], marks=() if c[0] in DEFAULT_CASES else pytest.mark.slow)
          for c in CASES]


@pytest.mark.parametrize("case", _case_params())
def test_bad_input_gives_one_clear_line(case, request):
  name, _, expected = case
  runs = request.getfixturevalue("outcomes" if name in DEFAULT_CASES else "slow_outcomes")
  proc = runs[0][name]
  err = proc.stderr.strip()
  assert proc.returncode != 0, err
  assert "Traceback" not in err, err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for s in expected:
    assert s in lines[0], (s, lines[0])


@pytest.mark.parametrize("which", ["outcomes", pytest.param("slow_outcomes",
                                                            marks=pytest.mark.slow)])
def test_nothing_written_is_changed(which, request):
  _, before, after = request.getfixturevalue(which)
  for d in before:
    assert after[d] == before[d], d


@pytest.mark.parametrize("case", [CASES[2], CASES[12]], ids=["train", "evaluate"])
def test_debug_shows_the_traceback(case, corpus):
  proc = _run(case[1](corpus), debug=True)
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr


def test_a_person_without_confident_joints_is_skipped_and_reported(corpus, tmp_path):
  out = str(tmp_path / "fits")
  proc = _run(["evaluate.py", "--ckpt", corpus["ckpt"], "--keypoints",
               corpus["keypoints_zero_conf.json"], "--out-dir", out])
  assert proc.returncode == 0, proc.stderr
  assert "skipped" in proc.stdout + proc.stderr
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  assert not summary["fits"] and summary["skipped"]
