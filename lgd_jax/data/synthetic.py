"""Synthetic human poses from keyframes and joint limits: training data that needs no download.

A sample is built in per-joint Euler angles (intrinsic xyz, R = Rx @ Ry @ Rz, degrees), the way a
person would pose a rig:

1. two random keyframes from :data:`KEYFRAMES` (standing, walking, running, sitting, squatting,
   kneeling, arm poses, bending...) blended with a uniform random weight;
2. with probability ``mirror_prob`` mirrored left <-> right (swap the joints, negate y and z);
3. each body joint, with probability ``perturb_prob`` (0.3), moved by a uniform random amount of
   up to ``PERTURB_FRACTION`` of its range per axis, capped at ``MAX_PERTURB_DEG``; the other
   joints stay exactly where the blend put them;
4. clipped to :data:`JOINT_LIMITS_DEG`.

So the joints move together as in real poses (both knees bent when sitting) instead of being
independent noise, and never leave the anatomical ranges (knees and elbows are one-directional
hinges). The global orientation is the identity: upright, facing +z; training adds the random
camera-relative rotation.

Conventions in SMPL's rest frame (+y up, +x the body's left, +z forward), for the left side (the
right side mirrors: same x, negated y and z), all checked with the forward kinematics in tests:

* hips: x < 0 flexes (thigh forward), z > 0 abducts; knees: x > 0 flexes (shank backward);
* ankles: x > 0 points the toes down; spine, neck, head: x > 0 bends forward;
* shoulders: z < 0 lowers the arm from the T-pose (-75 hangs it at the side), z > 0 raises it;
  then x < 0 swings the lowered arm forward (x = -90 with z = -90: arm straight forward);
* elbows: a hinge about y, flexion y < 0 for the left elbow (the forearm moves forward in the
  T-pose); collars: z > 0 shrugs.

    poses = sample_poses(jax.random.PRNGKey(0), 512)     # (512, 72) float32 axis-angle
    betas = sample_betas(jax.random.PRNGKey(1), 512)     # (512, 10) N(0, 1)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax.body.model import JOINT_NAMES, NUM_JOINTS
from lgd_jax.geometry import rotations

_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}
# The mirror image of joint j: left_* <-> right_*, the rest unchanged.
MIRROR_JOINTS = tuple(
    _INDEX[n.replace("left_", "right_") if n.startswith("left_") else
           n.replace("right_", "left_") if n.startswith("right_") else n] for n in JOINT_NAMES)
# Mirroring in x negates the y and z Euler angles (and axis-angle components).
_MIRROR_SIGN = np.array([1.0, -1.0, -1.0])

# Per-joint Euler xyz limits in degrees, (lo, hi) per axis, for the centre and left joints; the
# right joints mirror them. y stays within +-85 degrees except for the elbow hinge, so that the
# xyz decomposition is well conditioned wherever a joint has more than one degree of freedom.
_LIMITS_LEFT = {
    #                    x (flex/ext)     y (twist)      z (ab/adduction)
    "pelvis":         ((0, 0),        (0, 0),        (0, 0)),  # global orientation: identity
    "left_hip":       ((-125, 30),    (-35, 35),     (-25, 45)),
    "spine1":         ((-20, 40),     (-25, 25),     (-20, 20)),
    "left_knee":      ((0, 150),      (-10, 10),     (-5, 5)),
    "spine2":         ((-15, 35),     (-20, 20),     (-15, 15)),
    "left_ankle":     ((-30, 50),     (-20, 20),     (-20, 20)),
    "spine3":         ((-15, 30),     (-20, 20),     (-15, 15)),
    "left_foot":      ((-20, 30),     (-5, 5),       (-5, 5)),
    "neck":           ((-30, 40),     (-35, 35),     (-20, 20)),
    "left_collar":    ((-10, 10),     (-20, 15),     (-10, 25)),
    "head":           ((-30, 30),     (-40, 40),     (-25, 25)),
    "left_shoulder":  ((-160, 60),    (-85, 35),     (-90, 90)),
    "left_elbow":     ((0, 0),        (-150, 0),     (0, 0)),
    "left_wrist":     ((-45, 45),     (-25, 25),     (-45, 45)),
    "left_hand":      ((-15, 15),     (-15, 15),     (-15, 15)),
}


def _mirror_range(lims):
  (xl, xh), (yl, yh), (zl, zh) = lims
  return ((xl, xh), (-yh, -yl), (-zh, -zl))


def _limits_table() -> np.ndarray:
  table = np.zeros((NUM_JOINTS, 3, 2))
  for name, lims in _LIMITS_LEFT.items():
    table[_INDEX[name]] = lims
    if name.startswith("left_"):
      table[_INDEX[name.replace("left_", "right_")]] = _mirror_range(lims)
  return table


# (24, 3, 2): JOINT_LIMITS_DEG[j, axis] = (lo, hi) of joint j's Euler xyz angle, degrees.
JOINT_LIMITS_DEG = _limits_table()
JOINT_LIMITS_DEG.flags.writeable = False


def _both(joint: str, left: tuple, right: tuple | None = None) -> dict:
  """A left/right pair; the right side defaults to the mirror image of the left one."""
  right = tuple(np.asarray(left) * _MIRROR_SIGN) if right is None else right
  return {f"left_{joint}": left, f"right_{joint}": right}


_ARMS_RELAXED = {**_both("shoulder", (0, 0, -75)), **_both("elbow", (0, -10, 0))}

# Named keyframes: joint name -> Euler xyz degrees; joints not listed are zero.
KEYFRAMES: dict[str, dict[str, tuple]] = {
    "t_pose": {},
    "a_pose": _both("shoulder", (0, 0, -45)),
    "stand": {**_ARMS_RELAXED, **_both("wrist", (0, 0, -10))},
    "walk_contact": {  # left heel strike, right toe-off, right arm forward
        "left_hip": (-25, 0, 0), "left_knee": (5, 0, 0), "left_ankle": (-5, 0, 0),
        "right_hip": (15, 0, 0), "right_knee": (20, 0, 0), "right_ankle": (15, 0, 0),
        "left_shoulder": (15, 0, -75), "right_shoulder": (-20, 0, 75),
        **_both("elbow", (0, -15, 0)), "spine1": (3, 0, 0)},
    "walk_passing": {  # left stance, right leg swinging through
        "left_hip": (-5, 0, 0), "left_knee": (10, 0, 0),
        "right_hip": (-30, 0, 0), "right_knee": (60, 0, 0), "right_ankle": (-5, 0, 0),
        **_ARMS_RELAXED, "spine1": (3, 0, 0)},
    "run": {
        "left_hip": (-60, 0, 0), "left_knee": (40, 0, 0), "left_ankle": (-10, 0, 0),
        "right_hip": (20, 0, 0), "right_knee": (95, 0, 0), "right_ankle": (30, 0, 0),
        "left_shoulder": (40, 0, -70), "right_shoulder": (-45, 0, 70),
        **_both("elbow", (0, -90, 0)), "spine1": (10, 0, 0), "spine2": (5, 0, 0)},
    "sit": {  # on a chair, hands on the thighs
        **_both("hip", (-90, 0, 5)), **_both("knee", (90, 0, 0)),
        **_both("shoulder", (-30, 0, -75)), **_both("elbow", (0, -60, 0)), "spine1": (5, 0, 0)},
    "squat": {
        **_both("hip", (-115, 0, 15)), **_both("knee", (135, 0, 0)),
        **_both("ankle", (-25, 0, 0)), "spine1": (25, 0, 0), "spine2": (15, 0, 0),
        "spine3": (10, 0, 0), "neck": (-15, 0, 0), **_both("shoulder", (-80, 0, -80)),
        **_both("elbow", (0, -20, 0))},
    "crouch": {
        **_both("hip", (-90, 0, 10)), **_both("knee", (110, 0, 0)),
        **_both("ankle", (-20, 0, 0)), "spine1": (30, 0, 0), "spine2": (20, 0, 0),
        "neck": (-20, 0, 0), **_both("shoulder", (-40, 0, -80)), **_both("elbow", (0, -40, 0))},
    "kneel": {  # upright on both knees
        **_both("knee", (95, 0, 0)), **_both("ankle", (40, 0, 0)), **_ARMS_RELAXED},
    "kneel_one": {  # on the right knee, left foot planted in front
        "left_hip": (-90, 0, 5), "left_knee": (90, 0, 0),
        "right_hip": (5, 0, 0), "right_knee": (95, 0, 0), "right_ankle": (40, 0, 0),
        **_ARMS_RELAXED},
    "arms_up": {
        **_both("shoulder", (0, 0, 80)), **_both("elbow", (0, -10, 0)),
        "spine3": (-5, 0, 0), "head": (-10, 0, 0)},
    "arms_forward": {**_both("shoulder", (-90, 0, -90))},
    "reach": {  # left arm forward and up, torso turned towards it
        "left_shoulder": (-130, 0, -90), "left_elbow": (0, -5, 0), "left_collar": (0, 0, 15),
        "right_shoulder": (0, 0, 75), "right_elbow": (0, 10, 0),
        "spine1": (5, -10, 0), "spine2": (0, -10, -5), "spine3": (0, 0, -5)},
    "bend_forward": {
        "spine1": (35, 0, 0), "spine2": (30, 0, 0), "spine3": (25, 0, 0), "neck": (-10, 0, 0),
        **_both("hip", (-10, 0, 0)), **_both("knee", (5, 0, 0)),
        **_both("shoulder", (-60, 0, -80))},
    "wave": {  # left upper arm out to the side, forearm up
        "left_shoulder": (-90, 0, 0), "left_elbow": (0, -90, 0),
        "right_shoulder": (0, 0, 75), "right_elbow": (0, 10, 0), "head": (0, 10, 0)},
}
KEYFRAME_NAMES: tuple[str, ...] = tuple(KEYFRAMES)
# Keyframes whose head may come down towards the pelvis (tests exclude them from "upright").
BENDING_KEYFRAMES = ("bend_forward", "squat", "crouch")


def _keyframe_array() -> np.ndarray:
  frames = np.zeros((len(KEYFRAMES), NUM_JOINTS, 3))
  for k, joints in enumerate(KEYFRAMES.values()):
    for name, angles in joints.items():
      frames[k, _INDEX[name]] = angles
  return frames


# (K, 24, 3) Euler xyz degrees of every keyframe, in KEYFRAME_NAMES order.
KEYFRAMES_DEG = _keyframe_array()
KEYFRAMES_DEG.flags.writeable = False

# The perturbation of a joint: uniform in +-min(PERTURB_FRACTION * range, MAX_PERTURB_DEG).
PERTURB_FRACTION = 0.2
MAX_PERTURB_DEG = 30.0
_PERTURB_DEG = np.minimum(PERTURB_FRACTION * (JOINT_LIMITS_DEG[..., 1] - JOINT_LIMITS_DEG[..., 0]),
                          MAX_PERTURB_DEG)
_PERTURB_DEG[0] = 0.0


def mirror_euler(euler: jnp.ndarray) -> jnp.ndarray:
  """Mirrors poses left <-> right: swaps left and right joints, negates the y and z angles.

  Args:
    euler: (..., 24, 3) Euler angles (or axis-angle vectors: they mirror the same way).

  Returns:
    (..., 24, 3) mirrored.
  """
  return euler[..., MIRROR_JOINTS, :] * jnp.asarray(_MIRROR_SIGN, euler.dtype)


def _sample_parts(key: jax.Array, n: int, perturb_prob: float, mirror_prob: float):
  """The blended keyframes (n, 24, 3), the perturbation mask (n, 24) and the final angles."""
  k_a, k_b, k_w, k_m, k_p, k_d = jax.random.split(key, 6)
  frames = jnp.asarray(KEYFRAMES_DEG, jnp.float32)
  num = frames.shape[0]
  first = frames[jax.random.randint(k_a, (n,), 0, num)]
  second = frames[jax.random.randint(k_b, (n,), 0, num)]
  w = jax.random.uniform(k_w, (n, 1, 1))
  base = (1.0 - w) * first + w * second
  mirrored = jax.random.bernoulli(k_m, mirror_prob, (n,))
  base = jnp.where(mirrored[:, None, None], mirror_euler(base), base)
  mask = jax.random.bernoulli(k_p, perturb_prob, (n, NUM_JOINTS)).at[:, 0].set(False)
  delta = jax.random.uniform(k_d, (n, NUM_JOINTS, 3), minval=-1.0, maxval=1.0)
  delta = delta * jnp.asarray(_PERTURB_DEG, jnp.float32)
  limits = jnp.asarray(JOINT_LIMITS_DEG, jnp.float32)
  euler = jnp.clip(base + jnp.where(mask[..., None], delta, 0.0), limits[..., 0], limits[..., 1])
  return base, mask, euler


@partial(jax.jit, static_argnums=1)
def sample_euler(key: jax.Array, n: int, perturb_prob: float = 0.3,
                 mirror_prob: float = 0.5) -> jnp.ndarray:
  """Random poses as per-joint Euler angles (see the module docstring for the recipe).

  Args:
    key: a PRNG key.
    n: number of poses (static).
    perturb_prob: probability that a body joint is perturbed away from the keyframe blend.
    mirror_prob: probability that a pose is mirrored left <-> right.

  Returns:
    (n, 24, 3) float32 intrinsic xyz Euler angles in degrees, within :data:`JOINT_LIMITS_DEG`;
    joint 0 (the global orientation) is zero.
  """
  return _sample_parts(key, n, perturb_prob, mirror_prob)[2]


def euler_to_pose(euler_deg: jnp.ndarray) -> jnp.ndarray:
  """Per-joint Euler xyz angles in degrees (..., 24, 3) to SMPL axis-angle poses (..., 72)."""
  rot = rotations.euler_to_matrix(jnp.deg2rad(euler_deg), order="xyz")
  aa = rotations.matrix_to_axis_angle(rot)
  return aa.reshape(aa.shape[:-2] + (3 * aa.shape[-2],))


@partial(jax.jit, static_argnums=1)
def sample_poses(key: jax.Array, n: int, perturb_prob: float = 0.3,
                 mirror_prob: float = 0.5) -> jnp.ndarray:
  """Random plausible SMPL poses.

  Args:
    key: a PRNG key.
    n: number of poses (static).
    perturb_prob: probability that a body joint is perturbed away from the keyframe blend.
    mirror_prob: probability that a pose is mirrored left <-> right.

  Returns:
    (n, 72) float32 axis-angle, global orientation first (zeros: upright, facing +z).
  """
  pose = euler_to_pose(sample_euler(key, n, perturb_prob, mirror_prob))
  return pose.at[:, :3].set(0.0)


@partial(jax.jit, static_argnums=(1, 2))
def sample_betas(key: jax.Array, n: int, num_betas: int = 10) -> jnp.ndarray:
  """Shape coefficients from the SMPL prior N(0, I).

  Args:
    key: a PRNG key.
    n: number of shapes (static).
    num_betas: number of coefficients (static).

  Returns:
    (n, num_betas) float32.
  """
  return jax.random.normal(key, (n, num_betas), jnp.float32)


def matrix_to_euler(rot: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Both intrinsic xyz Euler decompositions of rotation matrices (R = Rx @ Ry @ Rz).

  Away from gimbal lock (|y| = 90 degrees) every rotation has exactly two: (x, y, z) with
  |y| <= 90 and (x + 180, 180 - y, z + 180), wrapped to (-180, 180].

  Args:
    rot: (..., 3, 3) rotation matrices.

  Returns:
    Two (..., 3) arrays of angles in degrees.
  """
  y = jnp.arcsin(jnp.clip(rot[..., 0, 2], -1.0, 1.0))
  x = jnp.arctan2(-rot[..., 1, 2], rot[..., 2, 2])
  z = jnp.arctan2(-rot[..., 0, 1], rot[..., 0, 0])
  first = jnp.rad2deg(jnp.stack([x, y, z], -1))
  second = first * jnp.array([1.0, -1.0, 1.0]) + jnp.array([180.0, 180.0, 180.0])
  second = (second + 180.0) % 360.0 - 180.0
  return first, second


def limit_violation_deg(pose: jnp.ndarray) -> jnp.ndarray:
  """How far each joint of axis-angle poses lies outside :data:`JOINT_LIMITS_DEG`.

  Takes the better of the two Euler decompositions of each joint (see :func:`matrix_to_euler`).
  Ill-conditioned for joints at gimbal lock (|y| = 90 degrees), such as an elbow bent exactly 90
  degrees; hinge joints are better checked on their axis-angle directly.

  Args:
    pose: (..., 72) axis-angle poses.

  Returns:
    (..., 24) the largest violation over the three axes, degrees (0 inside the limits).
  """
  rot = rotations.axis_angle_to_matrix(pose.reshape(pose.shape[:-1] + (NUM_JOINTS, 3)))
  limits = jnp.asarray(JOINT_LIMITS_DEG, rot.dtype)
  worst = []
  for euler in matrix_to_euler(rot):
    over = jnp.maximum(limits[..., 0] - euler, euler - limits[..., 1])
    worst.append(jnp.max(jnp.maximum(over, 0.0), axis=-1))
  return jnp.minimum(*worst)
