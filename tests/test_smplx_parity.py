"""Parity of lgd_jax.body with smplx (PyTorch) on a full-size SMPL-layout model.

Both frameworks load the same random 6890-vertex, 10-beta model file (written with the official
SMPL keys from ``synthetic_smpl_arrays``) and run on the same batch; vertices, the 24 skeleton
joints and the keypoint sets must agree to ``ATOL_M`` metres, also with
``jax_default_matmul_precision`` forced to "tensorfloat32". Needs the torch extra (torch and
smplx); skipped without it.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
smplx = pytest.importorskip("smplx")

from smplx.utils import Struct  # noqa: E402  (after the importorskip)

from lgd_jax import body  # noqa: E402

# Every test twice: at the default matmul precision and with TF32 forced (conftest).
pytestmark = pytest.mark.usefixtures("matmul_default")

# Worst absolute difference allowed, metres (float32 in both frameworks).
ATOL_M = 1e-5

NUM_VERTS = 6890
NUM_BETAS = 10
BATCH = 8

# smplx's SMPL output has 45 joints: the 24 of the skeleton, then vertex joints at
# vertex_ids['smplh'] in this order: nose, reye, leye, rear, lear, LBigToe, LSmallToe, LHeel,
# RBigToe, RSmallToe, RHeel, then 10 finger tips. The official maps from those 45 rows:
SMPLX_JOINT_MAPS = {
    "coco18": [24, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28],
    "body25": [24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31,
               32, 33, 34],
    "coco17": [24, 26, 25, 28, 27, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8],
    "smpl24": list(range(24)),
}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
  arrays = body.synthetic_smpl_arrays(num_verts=NUM_VERTS, num_betas=NUM_BETAS, seed=0)
  landmarks = arrays.pop("landmarks")
  assert landmarks == body.SMPL_LANDMARKS
  path = tmp_path_factory.mktemp("smplx_parity") / "SMPL_NEUTRAL.npz"
  np.savez(path, **arrays)
  return path


@pytest.fixture(scope="module")
def models(model_file):
  with np.load(model_file) as f:
    arrays = dict(f)
  # smplx's SMPL class unpickles model_path itself; an .npz goes in through data_struct.
  theirs = smplx.SMPL(model_path=str(model_file), data_struct=Struct(**arrays),
                      num_betas=NUM_BETAS, batch_size=BATCH, dtype=torch.float32)
  ours = body.load_model(model_file, num_betas=NUM_BETAS)
  return ours, theirs


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(1234)
  pose = rng.normal(0.0, 0.5, (BATCH, 72))
  pose[0] = 0.0  # the exact zero pose (LGD's starting point)
  axes = rng.normal(size=(24, 3))
  axes /= np.linalg.norm(axes, axis=1, keepdims=True)
  pose[1] = (axes * (np.pi - 1e-3)).reshape(72)  # every joint rotated by almost pi
  pose[2, :3] = 0.0  # zero global orientation, random body pose
  betas = rng.normal(0.0, 1.0, (BATCH, NUM_BETAS))
  transl = rng.normal(0.0, 0.5, (BATCH, 3))
  return tuple(x.astype(np.float32) for x in (pose, betas, transl))


@pytest.fixture(scope="module")
def smplx_output(models, batch):
  _, theirs = models
  pose, betas, transl = (torch.from_numpy(x) for x in batch)
  with torch.no_grad():
    out = theirs(global_orient=pose[:, :3], body_pose=pose[:, 3:], betas=betas, transl=transl)
  assert out.joints.shape == (BATCH, 45, 3)
  return out.vertices.numpy(), out.joints.numpy()


def _worst(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def test_forward_matches_smplx(models, batch, smplx_output):
  ours, _ = models
  verts, joints = smplx_output
  out = body.forward(ours, *batch)
  assert out.vertices.dtype == np.float32
  assert _worst(out.vertices, verts) <= ATOL_M, "vertices"
  assert _worst(out.joints, joints[:, :24]) <= ATOL_M, "joints"
  # Per sample too, so that a failure names the pose (0: zero, 1: near pi).
  for i in range(BATCH):
    assert _worst(out.vertices[i], verts[i]) <= ATOL_M, f"vertices of sample {i}"


def test_forward_unbatched_and_jitted_match_smplx(models, batch, smplx_output):
  import jax
  ours, _ = models
  verts, joints = smplx_output
  pose, betas, transl = batch
  single = body.forward(ours, pose[1], betas[1], transl[1])
  assert _worst(single.vertices, verts[1]) <= ATOL_M
  assert _worst(single.joints, joints[1, :24]) <= ATOL_M
  jitted = jax.jit(body.forward)(ours, pose, betas, transl)
  assert _worst(jitted.vertices, verts) <= ATOL_M
  assert _worst(jitted.joints, joints[:, :24]) <= ATOL_M


@pytest.mark.parametrize("kpset", sorted(SMPLX_JOINT_MAPS))
def test_keypoints_match_smplx(models, batch, smplx_output, kpset):
  ours, _ = models
  _, joints = smplx_output
  expected = joints[:, SMPLX_JOINT_MAPS[kpset]]
  kp = body.keypoints(ours, *batch, kpset=kpset)
  assert kp.shape == expected.shape
  assert _worst(kp, expected) <= ATOL_M
  # The keypoint set's names line up with the smplx rows they are compared against.
  assert len(body.get_keypoint_set(kpset)) == len(SMPLX_JOINT_MAPS[kpset])


def test_keypoints_without_transl_match_smplx(models, batch):
  ours, theirs = models
  pose, betas, _ = batch
  with torch.no_grad():
    out = theirs(global_orient=torch.from_numpy(pose[:, :3]),
                 body_pose=torch.from_numpy(pose[:, 3:]), betas=torch.from_numpy(betas),
                 transl=torch.zeros(BATCH, 3))
  kp = body.keypoints(ours, pose, betas, None, "body25")
  assert _worst(kp, out.joints.numpy()[:, SMPLX_JOINT_MAPS["body25"]]) <= ATOL_M
