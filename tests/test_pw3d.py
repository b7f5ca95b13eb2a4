"""3DPW loader on synthetic sequence pickles in the real format: valid frames only, ground truth in
the fit's frame (checked against an independent forward pass and against our own camera's
rendering), and one-line errors for missing SMPL files and malformed pickles."""

import pickle

import jax
import numpy as np
import pytest
from fake_datasets import build_3dpw, forward, keypoints

from lgd_jax.data import pw3d
from lgd_jax.fitting import objective
from lgd_jax.geometry import camera

NUM_FRAMES = 7
GT_TOL_M = 2e-5  # float32 forward passes of the same body agree to this
INPUT_TOL = 2e-5  # unit-box 2D coordinates (dimensionless)


_to_2d = jax.jit(objective.to_2d)
_unit_box = jax.jit(camera.normalize_unit_box)


@pytest.fixture(scope="module")
def fake_3dpw(tmp_path_factory):
  """A 3DPW root with one test sequence of two actors (male, female), some invalid frames."""
  root = tmp_path_factory.mktemp("3dpw")
  smpl_dir, models, truth = build_3dpw(root, NUM_FRAMES)
  return root, smpl_dir, models, truth


@pytest.fixture(scope="module")
def loaded(fake_3dpw):
  root, smpl_dir, _, _ = fake_3dpw
  return pw3d.load(root, "test", smpl_dir, with_vertices=True)


def test_loads_only_valid_frames_with_their_metadata(fake_3dpw, loaded):
  truth, data = fake_3dpw[3], loaded
  valid = [t[3] for t in truth]
  assert len(data) == sum(int(v.sum()) for v in valid)
  np.testing.assert_array_equal(data.actor, np.concatenate([np.full(v.sum(), a)
                                                            for a, v in enumerate(valid)]))
  np.testing.assert_array_equal(data.frame, np.concatenate([np.flatnonzero(v) for v in valid]))
  assert list(data.gender) == ["male"] * valid[0].sum() + ["female"] * valid[1].sum()
  assert set(data.sequence) == {"courtyard_fake_00"}
  assert data.image_names()[0] == f"imageFiles/courtyard_fake_00/image_{data.frame[0]:05d}.jpg"
  poses2d = np.concatenate([t[4][t[3]] for t in truth])
  np.testing.assert_allclose(data.kp2d, poses2d[:, :2].transpose(0, 2, 1), atol=1e-3)
  np.testing.assert_allclose(data.conf, poses2d[:, 2], atol=1e-6)
  assert data.kp2d.shape == (len(data), 18, 2) and data.intrinsics.shape == (len(data), 3, 3)


def test_ground_truth_is_the_generating_body_in_our_frame(fake_3dpw, loaded):
  """Joints and vertices equal an independent forward pass of the parameters the file was made
  from (our frame, pelvis-centred), with the right gendered model per actor."""
  _, _, models, truth = fake_3dpw
  data = loaded
  rows = 0
  for gender, theta, betas, valid, _ in truth:
    model = models["male" if gender == "m" else "female"]
    out = forward(model, theta[valid], np.tile(betas, (valid.sum(), 1)))
    pelvis = np.asarray(out.joints[:, :1])
    sl = slice(rows, rows + valid.sum())
    np.testing.assert_allclose(data.joints[sl], np.asarray(out.joints) - pelvis, atol=GT_TOL_M)
    np.testing.assert_allclose(data.vertices[sl], np.asarray(out.vertices) - pelvis,
                               atol=GT_TOL_M)
    np.testing.assert_allclose(data.betas[sl], np.tile(betas, (valid.sum(), 1)), atol=1e-6)
    rows += valid.sum()
  # The file's own jointPositions, taken through the camera into our frame, agree.
  np.testing.assert_allclose(data.joint_positions, data.joints, atol=GT_TOL_M)


def test_gt_parameters_reproduce_the_2d_input_through_our_camera(fake_3dpw, loaded):
  """The fit's objective is ~0 at the ground truth: the loader's frame is the official camera's."""
  models, data = fake_3dpw[2], loaded
  for gender, model in models.items():
    idx = data.gender == gender
    problem = objective.make_problem(model.replace(name=""), "coco18")
    kp3d = keypoints(model, data.pose[idx], data.betas[idx], "coco18")
    kp2d = np.asarray(_to_2d(problem, kp3d, data.conf[idx]))
    target = np.asarray(_unit_box(data.kp2d[idx], data.conf[idx]))
    np.testing.assert_allclose(kp2d, target, atol=INPUT_TOL)


def test_single_file_and_split_directory_paths(fake_3dpw):
  root = fake_3dpw[0]
  one = pw3d.sequence_files(root / "sequenceFiles" / "test" / "courtyard_fake_00.pkl")
  assert pw3d.sequence_files(root) == one == pw3d.sequence_files(root / "sequenceFiles")
  with pytest.raises(pw3d.Pw3dError, match="validation"):
    pw3d.sequence_files(root, "validation")


def test_missing_smpl_files_name_what_to_download(fake_3dpw, tmp_path, monkeypatch):
  root = fake_3dpw[0]
  monkeypatch.setenv(pw3d.SMPL_DIR_ENV, str(tmp_path))
  with pytest.raises(pw3d.Pw3dError) as e:
    pw3d.load(root)
  msg = str(e.value)
  assert "\n" not in msg and str(tmp_path) in msg and "SMPL_FEMALE.pkl" in msg
  assert "smpl.is.tue.mpg.de" in msg and pw3d.SMPL_DIR_ENV in msg


def test_smpl_dir_finds_official_names_in_any_case(tmp_path, monkeypatch):
  (tmp_path / "smpl").mkdir()
  official = tmp_path / "smpl" / "basicModel_f_lbs_10_207_0_v1.0.0.pkl"
  official.write_bytes(b"")
  monkeypatch.setenv(pw3d.SMPL_DIR_ENV, str(tmp_path))
  assert pw3d.model_path("f") == official
  assert pw3d.regressor_path() is None
  with pytest.raises(pw3d.Pw3dError, match="SMPL_MALE.pkl"):
    pw3d.model_path("m")


def _pkl(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)
  return path


def _good_sequence(rng):
  n = 3
  return {"sequence": "s", "genders": ["m"], "poses": [np.zeros((n, 72))],
          "betas": [np.zeros(10)], "poses2d": [np.ones((n, 3, 18))],
          "campose_valid": [np.ones(n, bool)], "cam_poses": np.tile(np.eye(4), (n, 1, 1))}


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.pop("poses2d"), "poses2d"),
    (lambda d: d.pop("campose_valid"), "campose_valid"),
    (lambda d: d.update(cam_poses=np.zeros((3, 4, 4))), "cam_poses"),
    (lambda d: d.update(cam_poses=np.ones((2, 4, 4))), "cam_poses"),
    (lambda d: d.update(poses2d=[np.ones((3, 2, 18))]), "poses2d"),
    (lambda d: d.update(genders=["x"]), "genders"),
    (lambda d: d.update(betas=[np.zeros(10), np.zeros(10)]), "betas"),
    (lambda d: d.update(poses=[np.full((3, 72), np.nan)]), "poses"),
])
def test_malformed_sequences_name_the_file_and_key(tmp_path, mutate, key):
  data = _good_sequence(np.random.default_rng(0))
  mutate(data)
  path = _pkl(tmp_path / "bad.pkl", data)
  with pytest.raises(pw3d.Pw3dError) as e:
    pw3d.read_sequence(path)
  msg = str(e.value)
  assert "\n" not in msg and str(path) in msg and f"'{key}'" in msg


def test_not_a_pickle_or_not_a_dict(tmp_path):
  garbage = tmp_path / "garbage.pkl"
  garbage.write_bytes(b"\x80\x02not really a pickle")
  with pytest.raises(pw3d.Pw3dError, match="garbage.pkl: not a readable pickle"):
    pw3d.read_sequence(garbage)
  with pytest.raises(pw3d.Pw3dError, match="holds a list"):
    pw3d.read_sequence(_pkl(tmp_path / "list.pkl", [1, 2]))


def test_pickles_run_no_code(tmp_path, capsys):
  """A pickle that calls a function yields an inert object instead of the call."""
  class Evil:
    def __reduce__(self):
      return (print, ("side effect",))
  data = _good_sequence(np.random.default_rng(0))
  data["sequence"] = Evil()
  path = _pkl(tmp_path / "evil.pkl", data)
  out = pw3d.read_sequence(path)
  assert out["pose"].shape == (3, 72)
  assert "side effect" not in capsys.readouterr().out
