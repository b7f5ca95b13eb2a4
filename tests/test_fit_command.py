"""The fit verb (``python fit.py``, ``lgd-fit``): it fits a small OpenPose directory like
``evaluate.py --keypoints`` with the same flags, and a bad input is one ``error:`` line, exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lgd_jax import body
from lgd_jax.commands import evaluate, fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600
PARAMS = ("global_orient", "body_pose", "betas", "transl", "keypoints_2d_fit")


def _openpose(path, persons):
  people = [{"pose_keypoints_2d": [float(v) for v in np.ravel(p)]} for p in persons]
  path.write_text(json.dumps({"version": 1.3, "people": people}))


@pytest.fixture(scope="module")
def keypoints(tmp_path_factory):
  """Frames a (two people) and b (one), BODY_25, every joint confident."""
  root = tmp_path_factory.mktemp("fit_cmd") / "json"
  root.mkdir()
  rng = np.random.default_rng(0)
  base = rng.uniform(-0.5, 0.5, (len(body.get_keypoint_set("body25").names), 2))

  def person(size, x, y):
    return np.concatenate([[x, y] + size * base, np.full((len(base), 1), 0.9)], -1)

  _openpose(root / "a_keypoints.json", [person(300, 320, 240), person(200, 150, 200)])
  _openpose(root / "b_keypoints.json", [person(250, 300, 260)])
  return root


def _flags(ckpt, keypoints, out_dir):
  # Two batches of two (one compiled program), no refinement: the fastest fit to compile.
  return ["--ckpt", ckpt, "--keypoints", str(keypoints), "--out-dir", str(out_dir), "--steps", "2",
          "--refine-steps", "0", "--batch-size", "2", "--no-png"]


def test_fit_matches_evaluate_keypoints(tiny_checkpoint, keypoints, tmp_path, capsys):
  assert fit.main(_flags(tiny_checkpoint, keypoints, tmp_path / "fit")) == 0
  fit_out = capsys.readouterr().out
  assert evaluate.main(_flags(tiny_checkpoint, keypoints, tmp_path / "evaluate")) == 0
  assert capsys.readouterr().out == fit_out  # the table of fits
  summaries = [json.loads((tmp_path / d / "summary.json").read_text())
               for d in ("fit", "evaluate")]
  assert [(f["frame"], f["person"]) for f in summaries[0]["fits"]] == [("a", 0), ("a", 1),
                                                                      ("b", 0)]
  for s in summaries:
    s.pop("wall_time_s")
  assert summaries[0] == summaries[1]
  for f in summaries[0]["fits"]:
    stem = f"{f['frame']}_p{f['person']}"
    assert f["files"] == [f"{stem}.npz", f"{stem}.obj"] and f["learned_steps"] == 2
    with np.load(tmp_path / "fit" / f"{stem}.npz") as a, \
        np.load(tmp_path / "evaluate" / f"{stem}.npz") as b:
      for key in PARAMS:
        assert np.all(np.isfinite(a[key])), key
        np.testing.assert_array_equal(a[key], b[key])


def test_missing_out_dir_is_a_usage_error(keypoints, capsys):
  with pytest.raises(SystemExit) as e:
    fit.main(["--keypoints", str(keypoints)])
  assert e.value.code == 2 and "--out-dir" in capsys.readouterr().err


def test_refine_keypoints_flag_takes_its_two_choices(keypoints, capsys):
  for cmd in (fit.main, evaluate.main):
    with pytest.raises(SystemExit) as e:
      cmd(["--keypoints", str(keypoints), "--out-dir", "x", "--refine-keypoints", "all"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--refine-keypoints" in err
    assert "'detections'" in err and "'checkpoint'" in err


def _one_error_line(stderr, *expected):
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  for s in expected:
    assert s in lines[0], (s, lines[0])


def test_bad_keypoint_file_gives_one_error_line(tiny_checkpoint, tmp_path, capsys):
  bad = tmp_path / "bad_keypoints.json"
  bad.write_text('{"version": 1.3, "people": [')
  out = tmp_path / "out"
  assert fit.main(_flags(tiny_checkpoint, bad, out)) == 2
  _one_error_line(capsys.readouterr().err, str(bad), "expected")
  assert not out.exists()


def test_fit_py_reports_a_mistake_with_exit_code_2(keypoints, tmp_path):
  """The repository's fit.py, with a mistake found before any checkpoint is read."""
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "fit.py", "--keypoints", str(keypoints), "--out-dir",
                         str(out), "--steps", "0"], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 2, proc.stderr
  _one_error_line(proc.stderr, "--steps")
  assert not out.exists()
