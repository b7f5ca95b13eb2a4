"""SPIN's preprocessed Human3.6M / MPI-INF-3DHP .npz files: loading, the joint maps, protocol 2's
camera, the 2D input without ``part``, and one-line errors naming the file and key."""

import numpy as np
import pytest
from fake_datasets import CAMERA_TO_WORLD, H36M17_TO_SPIN24, spin_arrays, write_spin_npz

from lgd_jax.body.keypoint_sets import H36M17_NAMES
from lgd_jax.data import spin

N = 6
TOL_M = 1e-6
# The 14 LSP joints of the Human3.6M protocol by name, and the 3 more of MPI-INF-3DHP's 17.
LSP14 = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
         "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
         "left_wrist", "thorax", "head")
MPI17 = LSP14 + ("pelvis", "spine", "neck_nose")


@pytest.fixture()
def joints17():
  """Human3.6M-17 joints in our frame (pelvis first), around a standing height."""
  rng = np.random.default_rng(3)
  j = rng.normal(0.0, 0.4, (N, 17, 3))
  j[:, 0] = rng.normal(0.0, 0.1, (N, 3))
  return j


def _by_name(joints17, names):
  return joints17[:, [H36M17_NAMES.index(n) for n in names]] - joints17[:, :1]


def test_ground_truth_follows_spins_maps(tmp_path, joints17):
  """J24_TO_J14 / J24_TO_J17 of S pick the same joints as the names of the regressor's rows."""
  path = tmp_path / "mpi_inf_3dhp_valid.npz"
  write_spin_npz(path, joints17, pose=np.zeros((N, 72)), shape=np.zeros((N, 10)),
                 has_smpl=np.zeros(N))
  data = spin.load(path, "mpi-inf-3dhp")
  assert len(data) == N and data.keypoints_source == "part"
  np.testing.assert_allclose(spin.ground_truth(data, "mpi-inf-3dhp"), _by_name(joints17, MPI17),
                             atol=TOL_M)
  np.testing.assert_allclose(spin.ground_truth(data, "h36m-p1"), _by_name(joints17, LSP14),
                             atol=TOL_M)
  # The 2D keypoints are part's, in SPIN's order, visibility as confidence.
  part = spin_arrays(joints17)["part"]
  np.testing.assert_allclose(data.kp2d, part[..., :2], atol=1e-3)
  np.testing.assert_array_equal(data.conf, part[..., 2])
  assert data.conf[:, spin.SPIN24_NAMES.index("nose")].max() == 0


def test_the_joint_tables_agree_with_each_other():
  for j24, h36m in zip(spin.J24_TO_J17, spin.H36M_TO_J17):
    assert H36M17_TO_SPIN24[h36m] == j24


def test_protocol2_keeps_camera_60457274_of_a_protocol1_file(tmp_path, joints17):
  names = [f"images/S9_Walking.{cam}_{i:06d}.jpg" for i, cam in
           enumerate(["54138969", "60457274"] * (N // 2))]
  path = tmp_path / "h36m_valid_protocol1.npz"
  write_spin_npz(path, joints17, names, with_part=False)
  p1 = spin.load(path, "h36m-p1")
  p2 = spin.load(path, "h36m-p2")
  assert len(p1) == N and len(p2) == N // 2 and "60457274" in p2.note
  assert all("60457274" in n for n in p2.imgname)
  np.testing.assert_allclose(p2.joints, p1.joints[1::2])
  # Without part, the 2D input is S seen by the nominal camera (visible joints only).
  assert p1.keypoints_source == "S projected"
  cam = (joints17 - joints17[:, :1]) @ CAMERA_TO_WORLD.T
  expected = spin.NOMINAL_FOCAL_PX * cam[..., :2] / (cam[..., 2:] + spin.NOMINAL_DEPTH_M)
  np.testing.assert_allclose(p1.kp2d[:, H36M17_TO_SPIN24], expected, atol=1e-3)
  assert p1.conf.sum() == N * 17
  with pytest.raises(spin.SpinDataError, match="60457274"):
    write_spin_npz(path, joints17, [n.replace("60457274", "54138969") for n in names])
    spin.load(path, "h36m-p2")


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("S"), "S"),
    (lambda d: d.update(S=np.zeros((N, 17, 4))), "S"),
    (lambda d: d.update(part=np.full((N, 24, 3), np.nan)), "part"),
    (lambda d: d.update(part=np.zeros((N + 1, 24, 3))), "part"),
    (lambda d: d.update(imgname=np.array(["a"] * (N - 1))), "imgname"),
])
def test_malformed_files_name_the_file_and_key(tmp_path, joints17, change, key):
  data = write_spin_npz(tmp_path / "ok.npz", joints17)
  change(data)
  path = tmp_path / "bad.npz"
  np.savez(path, **data)
  with pytest.raises(spin.SpinDataError) as e:
    spin.load(path)
  msg = str(e.value)
  assert "\n" not in msg and str(path) in msg and f"'{key}'" in msg


def test_missing_or_foreign_files(tmp_path, joints17):
  with pytest.raises(spin.SpinDataError, match="no such file"):
    spin.load(tmp_path / "none.npz")
  (tmp_path / "text.npz").write_text("hello")
  with pytest.raises(spin.SpinDataError, match="cannot be read"):
    spin.load(tmp_path / "text.npz")
  # A protocol needing joints the file lacks: MPI's 17 from a file with only 14 visible.
  data = write_spin_npz(tmp_path / "h.npz", joints17)
  data["S"][:, 16, 3] = 0.0  # spine
  np.savez(tmp_path / "h.npz", **data)
  loaded = spin.load(tmp_path / "h.npz")
  assert spin.ground_truth(loaded, "h36m-p1").shape == (N, 14, 3)
  with pytest.raises(spin.SpinDataError, match="spine"):
    spin.ground_truth(loaded, "mpi-inf-3dhp")
