"""Synthetic poses: shapes, determinism, joint limits, sparsity, diversity and plausibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import body
from lgd_jax.data import synthetic

# Degrees a sampled joint may exceed its limit after the Euler -> axis-angle -> Euler round trip
# in float32.
LIMIT_TOL_DEG = 0.05
# Metres the ankle may move forward of its rest position, in the thigh's frame.
KNEE_FORWARD_TOL_M = 0.01
# Sparse perturbation: the observed fraction of perturbed joints may differ this much from 0.3.
FRACTION_TOL = 0.02

N = 1024
IDX = {name: i for i, name in enumerate(body.JOINT_NAMES)}
ELBOWS = (IDX["left_elbow"], IDX["right_elbow"])


@pytest.fixture(scope="module")
def model():
  return body.tiny_model()


@pytest.fixture(scope="module")
def samples():
  key = jax.random.PRNGKey(0)
  base, mask, euler = _parts(key, N, 0.3, 0.5)
  pose = _to_pose(euler).at[:, :3].set(0.0)
  return {"base": np.asarray(base), "mask": np.asarray(mask), "euler": np.asarray(euler),
          "pose": pose}


_parts = jax.jit(synthetic._sample_parts, static_argnums=1)
_forward = jax.jit(body.forward)
_to_pose = jax.jit(synthetic.euler_to_pose)


def _joints(model, pose):
  out = _forward(model, pose, jnp.zeros(pose.shape[:-1] + (10,)))
  return np.asarray(out.joints), np.asarray(out.rotations)


def test_shapes_dtype_finite_and_root():
  poses = synthetic.sample_poses(jax.random.PRNGKey(1), N)
  assert poses.shape == (N, 72) and poses.dtype == jnp.float32
  assert np.all(np.isfinite(poses))
  assert np.all(poses[:, :3] == 0.0)
  betas = synthetic.sample_betas(jax.random.PRNGKey(2), 4096)
  assert betas.shape == (4096, 10) and betas.dtype == jnp.float32
  assert abs(float(betas.mean())) < 0.05 and abs(float(betas.std()) - 1.0) < 0.05
  assert synthetic.sample_betas(jax.random.PRNGKey(2), 3, num_betas=16).shape == (3, 16)


def test_deterministic_per_key_and_jit_matches_parts(samples):
  a = synthetic.sample_poses(jax.random.PRNGKey(0), N)
  np.testing.assert_array_equal(a, synthetic.sample_poses(jax.random.PRNGKey(0), N))
  assert not np.allclose(a, synthetic.sample_poses(jax.random.PRNGKey(4), N))
  # The jitted sampler equals its parts (sampled, converted and the root zeroed separately).
  np.testing.assert_allclose(a, samples["pose"], atol=1e-5)
  np.testing.assert_allclose(synthetic.sample_euler(jax.random.PRNGKey(0), N), samples["euler"],
                             atol=1e-4)


def test_limit_table_and_keyframes():
  lims = synthetic.JOINT_LIMITS_DEG
  assert lims.shape == (24, 3, 2)
  assert np.all(lims[..., 0] <= lims[..., 1])
  assert np.all(lims[0] == 0.0)
  # Mirror symmetric: right = left with y and z negated.
  mirrored = lims[list(synthetic.MIRROR_JOINTS)] * np.array([1, -1, -1])[:, None]
  np.testing.assert_array_equal(np.sort(mirrored, -1), lims)
  frames = synthetic.KEYFRAMES_DEG
  assert frames.shape == (len(synthetic.KEYFRAMES), 24, 3)
  assert np.all(frames >= lims[..., 0]) and np.all(frames <= lims[..., 1])
  assert len(synthetic.KEYFRAMES) >= 12
  # One-directional hinges: knees flex positive, the left elbow negative.
  assert lims[IDX["left_knee"], 0, 0] == 0.0 and lims[IDX["left_elbow"], 1, 1] == 0.0


def test_samples_within_joint_limits(samples):
  lims = synthetic.JOINT_LIMITS_DEG
  euler = samples["euler"]
  assert np.all(euler >= lims[..., 0]) and np.all(euler <= lims[..., 1])
  violation = np.asarray(synthetic.limit_violation_deg(samples["pose"]))
  others = [j for j in range(24) if j not in ELBOWS]
  assert violation[:, others].max() <= LIMIT_TOL_DEG
  # Elbows are pure hinges about y; at 90 degrees their Euler decomposition is degenerate, so
  # check their axis-angle: no x or z part, the angle within the one-directional range.
  aa = np.asarray(samples["pose"]).reshape(N, 24, 3)
  for j, sign in zip(ELBOWS, (-1, 1)):
    assert np.abs(aa[:, j, [0, 2]]).max() < 1e-5
    flexion = np.rad2deg(sign * aa[:, j, 1])
    assert flexion.min() >= -LIMIT_TOL_DEG and flexion.max() <= 150 + LIMIT_TOL_DEG


def test_perturbation_is_sparse(samples):
  mask, base, euler = samples["mask"], samples["base"], samples["euler"]
  assert not mask[:, 0].any()
  assert abs(mask[:, 1:].mean() - 0.3) < FRACTION_TOL
  lims = synthetic.JOINT_LIMITS_DEG
  kept = np.clip(base, lims[..., 0], lims[..., 1])
  # Unperturbed joints sit exactly at the (clipped) keyframe blend.
  np.testing.assert_array_equal(euler[~mask], kept[~mask])
  moved = np.any(np.abs(euler - kept) > 1e-3, axis=-1)
  assert moved[mask].mean() > 0.9


def test_unperturbed_samples_lie_between_two_keyframes():
  euler = np.asarray(synthetic.sample_euler(jax.random.PRNGKey(5), 48, perturb_prob=0.0,
                                            mirror_prob=0.0)).reshape(48, -1)
  frames = synthetic.KEYFRAMES_DEG.reshape(len(synthetic.KEYFRAMES), -1)
  a, b = frames[:, None], frames[None, :]  # every ordered pair of keyframes
  seg = b - a
  best = np.full(48, np.inf)
  for i, s in enumerate(euler):
    w = np.clip(np.sum((s - a) * seg, -1) / np.maximum(np.sum(seg * seg, -1), 1e-12), 0, 1)
    best[i] = np.min(np.abs(a + w[..., None] * seg - s).max(-1))
  assert best.max() < 1e-3


def test_joints_move_together_and_poses_are_diverse(model, samples):
  euler = samples["euler"]
  left_knee, right_knee = euler[:, IDX["left_knee"], 0], euler[:, IDX["right_knee"], 0]
  # Independent noise per joint would leave the two knees uncorrelated.
  assert np.corrcoef(left_knee, right_knee)[0, 1] > 0.3
  assert np.percentile(left_knee, 5) < 10.0 and np.percentile(left_knee, 95) > 100.0
  joints, _ = _joints(model, samples["pose"][:512])
  wrist_above = joints[:, IDX["left_wrist"], 1] > joints[:, IDX["left_shoulder"], 1] + 0.1
  wrist_below = joints[:, IDX["left_wrist"], 1] < joints[:, IDX["left_shoulder"], 1] - 0.2
  assert 0.05 < wrist_above.mean() < 0.5 and wrist_below.mean() > 0.4
  hip_flexed = joints[:, IDX["left_knee"], 2] - joints[:, IDX["left_hip"], 2] > 0.3
  assert 0.1 < hip_flexed.mean() < 0.7


def test_plausible_under_forward_kinematics(model, samples):
  joints, global_rot = _joints(model, samples["pose"][:512])
  head_height = joints[:, IDX["head"], 1] - joints[:, IDX["pelvis"], 1]
  assert head_height.min() > 0.15
  for side in ("left", "right"):
    thigh = global_rot[:, IDX[f"{side}_hip"]]
    shank = joints[:, IDX[f"{side}_ankle"]] - joints[:, IDX[f"{side}_knee"]]
    forward = np.einsum("bji,bj->bi", thigh, shank)[:, 2]  # shank in the thigh's frame
    rest = model.j_template[IDX[f"{side}_ankle"], 2] - model.j_template[IDX[f"{side}_knee"], 2]
    assert forward.max() - rest < KNEE_FORWARD_TOL_M
    # Feet stay below the hips whatever the legs do.
    assert np.all(joints[:, IDX[f"{side}_ankle"], 1] < joints[:, IDX[f"{side}_hip"], 1])


def test_keyframes_mean_what_they_say(model):
  frames = jnp.asarray(synthetic.KEYFRAMES_DEG, jnp.float32)
  joints, _ = _joints(model, _to_pose(frames))
  by_name = dict(zip(synthetic.KEYFRAME_NAMES, joints))
  for name, j in by_name.items():
    if name not in synthetic.BENDING_KEYFRAMES:
      assert j[IDX["head"], 1] - j[IDX["pelvis"], 1] > 0.5, name
  stand, sit, up = by_name["stand"], by_name["sit"], by_name["arms_up"]
  assert stand[IDX["left_wrist"], 1] < stand[IDX["left_shoulder"], 1] - 0.3
  assert up[IDX["left_wrist"], 1] > up[IDX["left_shoulder"], 1] + 0.3
  assert up[IDX["right_wrist"], 1] > up[IDX["right_shoulder"], 1] + 0.3
  assert sit[IDX["left_knee"], 2] - sit[IDX["left_hip"], 2] > 0.3  # thigh forward
  assert sit[IDX["left_ankle"], 1] < sit[IDX["left_knee"], 1] - 0.3  # shank down
  fwd = by_name["arms_forward"]
  assert fwd[IDX["right_wrist"], 2] - fwd[IDX["right_shoulder"], 2] > 0.4
  kneel = by_name["kneel"]
  assert kneel[IDX["left_ankle"], 2] < kneel[IDX["left_knee"], 2] - 0.3  # shank behind


def test_mirroring_matches_axis_angle_mirror():
  euler = synthetic.sample_euler(jax.random.PRNGKey(6), N)
  mirrored_pose = _to_pose(synthetic.mirror_euler(euler))
  pose_mirrored = synthetic.mirror_euler(_to_pose(euler).reshape(N, 24, 3))
  np.testing.assert_allclose(mirrored_pose, pose_mirrored.reshape(N, 72), atol=1e-5)
  np.testing.assert_array_equal(synthetic.mirror_euler(synthetic.mirror_euler(euler)), euler)
