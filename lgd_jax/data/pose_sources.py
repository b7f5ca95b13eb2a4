"""Free pose sources: a broad training source and a held-out test source built differently.

Both return SMPL poses (n, 72) in axis-angle, global orientation first, within the per-joint
anatomical ranges of :data:`lgd_jax.data.synthetic.JOINT_LIMITS_DEG`; training then adds the
camera-relative root rotation as for AMASS.

**"broad" (training).** A mixture of three generators, so that the space of plausible poses is
covered and joints still move together as in real poses:

1. *keyframe blends* (35 %): two poses of :data:`TRAIN_KEYFRAMES` (the 16 keyframes of
   ``synthetic`` plus 22 more: sitting on the floor and cross-legged, kneeling, lunging, kicking,
   jumping, crawling, arms crossed, hands on the hips and behind the head, reaching up and
   sideways, throwing, torso turned and leaning, bowing, ...) blended with a random weight,
   mirrored with probability 0.5, half of the joints perturbed by up to 25 % of their range;
2. *composites* (35 %): the torso, each arm and each leg take their angles from independently
   drawn keyframes (each part possibly mirrored from the other side; the legs share one keyframe
   half of the time), then perturbed as in 1 — so reaching while sitting, or kicking with arms
   crossed, occur although no keyframe shows them;
3. *free poses* (30 %): every joint drawn independently within its range (a normal around the
   neutral angle, a third of the range wide, clipped; knees and elbows uniform over their hinge
   range).

15 % of all poses lie: the global orientation turns the body onto its back, front or side
(±20° around those), the crawl keyframe included. All angles are intrinsic xyz Euler angles
clipped to the limits.

**"test" (held out).** Built another way, from parts the training source does not use:

1. *perturbed rest* (50 %): the T-pose, the A-pose or arms hanging, then *every* joint rotated by
   a random axis-angle (uniform axis, angle uniform up to a per-joint amplitude, composed with the
   rotation — not added to Euler angles), knees bent U(0°, 110°) and elbows U(0°, 130°) about
   their hinge axes;
2. *held-out activities* (50 %): poses of :data:`TEST_KEYFRAMES`, a separate library of 12
   activities that no training keyframe shows (golf swing, warrior and tree yoga poses,
   arabesque, surrender, tying a shoe, sitting on the floor leaning back on the hands, boxing
   guard, cheering, one-leg balance, side plank, cartwheel), each joint rotated by random
   axis-angle noise as in 1.

then projected onto the anatomical limits (xyz Euler decomposition, clip, recompose), and 10 % lie
(on back, front or side). So the project's own evaluation measures generalisation to a pose
distribution the training source was not built from.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax.body.model import JOINT_NAMES, NUM_JOINTS
from lgd_jax.data import synthetic
from lgd_jax.data.synthetic import JOINT_LIMITS_DEG, _both
from lgd_jax.geometry import rotations

_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}
_RELAXED = {**_both("shoulder", (0, 0, -75)), **_both("elbow", (0, -10, 0))}

# Keyframes the broad training source adds to synthetic.KEYFRAMES (Euler xyz degrees, left side
# conventions of lgd_jax.data.synthetic).
EXTRA_KEYFRAMES: dict[str, dict[str, tuple]] = {
    "sit_floor": {**_both("hip", (-85, 0, 10)), **_both("knee", (20, 0, 0)),
                  **_both("shoulder", (-20, 0, -80)), "spine1": (10, 0, 0)},
    "sit_crossed": {**_both("hip", (-80, 30, 40)), **_both("knee", (140, 0, 0)),
                    **_both("shoulder", (-35, 0, -75)), **_both("elbow", (0, -70, 0)),
                    "spine1": (15, 0, 0), "spine2": (5, 0, 0)},
    "sit_legs_crossed": {"left_hip": (-95, 0, -20), "left_knee": (75, 0, 0),
                         "right_hip": (-85, 0, -5), "right_knee": (90, 0, 0),
                         **_both("shoulder", (-30, 0, -75)), **_both("elbow", (0, -70, 0))},
    "kneel_sit": {**_both("knee", (150, 0, 0)), **_both("hip", (-20, 0, 5)),
                  **_both("ankle", (45, 0, 0)), **_both("shoulder", (-20, 0, -80)),
                  **_both("elbow", (0, -40, 0))},
    "lunge": {"left_hip": (-80, 0, 5), "left_knee": (85, 0, 0), "left_ankle": (-10, 0, 0),
              "right_hip": (15, 0, 0), "right_knee": (100, 0, 0), "right_ankle": (40, 0, 0),
              **_RELAXED, "spine1": (-5, 0, 0)},
    "kick": {"left_hip": (-95, 0, 0), "left_knee": (10, 0, 0), "left_ankle": (30, 0, 0),
             "right_knee": (15, 0, 0), **_both("shoulder", (0, 0, -35)),
             **_both("elbow", (0, -40, 0)), "spine1": (-10, 0, 0)},
    "side_kick": {"left_hip": (-20, 0, 45), "left_knee": (20, 0, 0), "spine1": (0, 0, -15),
                  "spine2": (0, 0, -10), **_both("shoulder", (0, 0, -20))},
    "jump_tuck": {**_both("hip", (-110, 0, 10)), **_both("knee", (135, 0, 0)),
                  **_both("shoulder", (-60, 0, -70)), **_both("elbow", (0, -60, 0)),
                  "spine1": (20, 0, 0)},
    "jump_star": {**_both("hip", (0, 0, 35)), **_both("shoulder", (0, 0, 60)),
                  **_both("elbow", (0, -5, 0))},
    "crawl": {**_both("hip", (-90, 0, 5)), **_both("knee", (90, 0, 0)),
              **_both("ankle", (40, 0, 0)), **_both("shoulder", (-90, 0, -90)),
              "neck": (-30, 0, 0), "head": (-20, 0, 0)},
    "arms_crossed": {**_both("shoulder", (-40, 0, -65)), **_both("elbow", (0, -120, 0)),
                     **_both("collar", (0, -10, 0))},
    "hands_on_hips": {**_both("shoulder", (15, 0, -45)), **_both("elbow", (0, -95, 0)),
                      **_both("wrist", (0, 0, 20))},
    "hands_behind_head": {**_both("shoulder", (0, 0, 65)), **_both("elbow", (0, -145, 0)),
                          "head": (10, 0, 0)},
    "reach_up": {"left_shoulder": (-10, 0, 85), "left_elbow": (0, -5, 0),
                 "left_collar": (0, 0, 20), "spine1": (0, 0, -8), "spine2": (0, 0, -6),
                 "right_shoulder": (0, 0, -75), "head": (-20, 0, 0)},
    "reach_side_low": {**_both("hip", (-70, 0, 20)), **_both("knee", (80, 0, 0)),
                       "left_shoulder": (-30, 0, -20), "spine1": (25, 0, 15),
                       "spine2": (15, 0, 10), "right_shoulder": (-40, 0, -80)},
    "throw": {"right_shoulder": (30, 0, -80), "right_elbow": (0, 100, 0),
              "left_shoulder": (-80, 0, -60), "spine1": (0, -15, 0), "spine2": (0, -15, 0),
              "left_hip": (-30, 0, 0), "left_knee": (20, 0, 0), "right_knee": (10, 0, 0)},
    "torso_twist": {"spine1": (0, 25, 0), "spine2": (0, 20, 0), "spine3": (0, 15, 0),
                    "neck": (0, 20, 0), **_both("shoulder", (-30, 0, -70)),
                    **_both("elbow", (0, -80, 0))},
    "lean_side": {"spine1": (0, 0, 18), "spine2": (0, 0, 15), "spine3": (0, 0, 10),
                  "left_shoulder": (0, 0, -60), "right_shoulder": (0, 0, 40)},
    "bow": {"spine1": (30, 0, 0), "spine2": (20, 0, 0), **_both("hip", (-45, 0, 0)),
            **_both("shoulder", (-10, 0, -80)), "neck": (10, 0, 0)},
    "phone": {"left_shoulder": (-25, 0, -70), "left_elbow": (0, -140, 0), "head": (15, 10, 0),
              "right_shoulder": (-15, 0, -75), "right_elbow": (0, 90, 0)},
    "stairs": {"left_hip": (-55, 0, 0), "left_knee": (75, 0, 0), "left_ankle": (-10, 0, 0),
               "right_knee": (5, 0, 0), "right_ankle": (15, 0, 0),
               "left_shoulder": (20, 0, -75), "right_shoulder": (-20, 0, 75)},
    "squat_deep": {**_both("hip", (-125, 0, 25)), **_both("knee", (150, 0, 0)),
                   **_both("ankle", (-30, 0, 0)), "spine1": (30, 0, 0),
                   **_both("shoulder", (-70, 0, -80)), **_both("elbow", (0, -30, 0))},
}
TRAIN_KEYFRAMES = {**synthetic.KEYFRAMES, **EXTRA_KEYFRAMES}

# The held-out activities of the test source (not blended; perturbed by axis-angle noise).
TEST_KEYFRAMES: dict[str, dict[str, tuple]] = {
    "golf": {**_both("hip", (-25, 0, 10)), **_both("knee", (25, 0, 0)), "spine1": (30, 20, 0),
             "spine2": (10, 15, 0), "left_shoulder": (-70, 0, -30), "right_shoulder": (-90, 0, 60),
             "right_elbow": (0, 60, 0)},
    "warrior": {"left_hip": (-60, 0, 25), "left_knee": (80, 0, 0), "right_hip": (10, 0, 30),
                "right_knee": (5, 0, 0), **_both("shoulder", (0, 0, 0)), "head": (0, 30, 0)},
    "tree": {"left_hip": (-40, 30, 40), "left_knee": (140, 0, 0),
             **_both("shoulder", (0, 0, 80)), **_both("elbow", (0, -40, 0))},
    "arabesque": {"left_hip": (30, 0, 5), "left_knee": (5, 0, 0), "spine1": (20, 0, 0),
                  "left_shoulder": (-80, 0, -10), "right_shoulder": (0, 0, 10)},
    "surrender": {**_both("shoulder", (0, 0, 45)), **_both("elbow", (0, -90, 0))},
    "tie_shoe": {"left_hip": (-120, 0, 10), "left_knee": (140, 0, 0), "right_knee": (100, 0, 0),
                 "right_hip": (-10, 0, 0), "right_ankle": (40, 0, 0), "spine1": (35, 0, 0),
                 "spine2": (25, 0, 0), **_both("shoulder", (-80, 0, -80))},
    "floor_lean_back": {**_both("hip", (-70, 0, 15)), **_both("knee", (60, 0, 0)),
                        "spine1": (-15, 0, 0), **_both("shoulder", (50, 0, -70))},
    "boxing": {**_both("shoulder", (-45, 0, -70)), **_both("elbow", (0, -130, 0)),
               "left_hip": (-15, 0, 0), "left_knee": (20, 0, 0), "right_knee": (20, 0, 0),
               "spine1": (10, 10, 0)},
    "cheer": {"left_shoulder": (0, 0, 80), "right_shoulder": (-20, 0, 60),
              "right_elbow": (0, 80, 0), "left_hip": (-70, 0, 0), "left_knee": (100, 0, 0)},
    "balance": {"right_hip": (20, 0, 20), "right_knee": (60, 0, 0),
                **_both("shoulder", (0, 0, 10)), "spine1": (0, 0, 8)},
    "side_plank_arms": {**_both("shoulder", (0, 0, 0)), "spine1": (0, 0, -10), "head": (0, 0, 15)},
    "cartwheel": {**_both("hip", (0, 0, 40)), **_both("shoulder", (0, 0, 85)),
                  "spine1": (0, 0, 15)},
}

_LIMITS = np.asarray(JOINT_LIMITS_DEG, np.float32)
_RANGE = _LIMITS[..., 1] - _LIMITS[..., 0]
_NEUTRAL = np.clip(0.0, _LIMITS[..., 0], _LIMITS[..., 1])
# Hinges: the axis of the only large range (knees x, elbows y), sampled uniformly.
_HINGES = {_INDEX["left_knee"]: 0, _INDEX["right_knee"]: 0, _INDEX["left_elbow"]: 1,
           _INDEX["right_elbow"]: 1}
# Parts of the composite generator (the left side; the right side mirrors).
_PARTS = {
    "torso": ("spine1", "spine2", "spine3", "neck", "head"),
    "left_arm": ("left_collar", "left_shoulder", "left_elbow", "left_wrist", "left_hand"),
    "right_arm": ("right_collar", "right_shoulder", "right_elbow", "right_wrist", "right_hand"),
    "left_leg": ("left_hip", "left_knee", "left_ankle", "left_foot"),
    "right_leg": ("right_hip", "right_knee", "right_ankle", "right_foot"),
}
MIXTURE = (0.35, 0.35, 0.30)  # keyframe blends, composites, free poses
LYING_FRACTION = 0.15
TEST_LYING_FRACTION = 0.10
PERTURB_PROB = 0.5
PERTURB_FRACTION = 0.25
MAX_PERTURB_DEG = 35.0
LIE_JITTER_DEG = 20.0


def _frames(table: dict) -> np.ndarray:
  out = np.zeros((len(table), NUM_JOINTS, 3), np.float32)
  for k, joints in enumerate(table.values()):
    for name, angles in joints.items():
      out[k, _INDEX[name]] = angles
  return out


_TRAIN_FRAMES = _frames(TRAIN_KEYFRAMES)
_TEST_FRAMES = _frames(TEST_KEYFRAMES)


def _part_masks() -> np.ndarray:
  masks = np.zeros((len(_PARTS), NUM_JOINTS), bool)
  for p, names in enumerate(_PARTS.values()):
    masks[p, [_INDEX[n] for n in names]] = True
  return masks


_PART_MASKS = _part_masks()
_LEFT_TO_RIGHT = np.array([_INDEX[n.replace("left_", "right_")] if n.startswith("left_") else
                           _INDEX[n.replace("right_", "left_")] if n.startswith("right_") else i
                           for i, n in enumerate(JOINT_NAMES)])


def _clip(euler):
  return jnp.clip(euler, _LIMITS[..., 0], _LIMITS[..., 1])


def _perturb(key, euler, prob=PERTURB_PROB):
  k_m, k_d = jax.random.split(key)
  n = euler.shape[0]
  amp = np.minimum(PERTURB_FRACTION * _RANGE, MAX_PERTURB_DEG).astype(np.float32)
  amp[0] = 0.0
  mask = jax.random.bernoulli(k_m, prob, (n, NUM_JOINTS))[..., None]
  delta = jax.random.uniform(k_d, euler.shape, minval=-1.0, maxval=1.0) * amp
  return euler + jnp.where(mask, delta, 0.0)


def _blends(key, n):
  k_a, k_b, k_w, k_m = jax.random.split(key, 4)
  frames = jnp.asarray(_TRAIN_FRAMES)
  a = frames[jax.random.randint(k_a, (n,), 0, frames.shape[0])]
  b = frames[jax.random.randint(k_b, (n,), 0, frames.shape[0])]
  w = jax.random.uniform(k_w, (n, 1, 1))
  base = (1 - w) * a + w * b
  mirrored = jax.random.bernoulli(k_m, 0.5, (n,))
  return jnp.where(mirrored[:, None, None], synthetic.mirror_euler(base), base)


def _composites(key, n):
  frames = jnp.asarray(_TRAIN_FRAMES)
  num = frames.shape[0]
  keys = jax.random.split(key, 4)
  pick = jax.random.randint(keys[0], (n, len(_PARTS)), 0, num)
  # The legs share one keyframe half of the time (sitting, kneeling, squatting are symmetric).
  same_legs = jax.random.bernoulli(keys[1], 0.5, (n,))
  pick = pick.at[:, 4].set(jnp.where(same_legs, pick[:, 3], pick[:, 4]))
  mirror = jax.random.bernoulli(keys[2], 0.5, (n, len(_PARTS)))
  out = jnp.zeros((n, NUM_JOINTS, 3))
  for p in range(len(_PARTS)):
    src = frames[pick[:, p]]
    flipped = synthetic.mirror_euler(src)
    part = jnp.where(mirror[:, p, None, None], flipped, src)
    out = jnp.where(jnp.asarray(_PART_MASKS[p])[None, :, None], part, out)
  return out


def _free(key, n):
  k_n, k_h = jax.random.split(key)
  euler = jnp.asarray(_NEUTRAL) + jnp.asarray(_RANGE / 3.0) * jax.random.normal(
      k_n, (n, NUM_JOINTS, 3))
  u = jax.random.uniform(k_h, (n, NUM_JOINTS, 3))
  for j, axis in _HINGES.items():
    lo, hi = _LIMITS[j, axis]
    euler = euler.at[:, j, axis].set(lo + (hi - lo) * u[:, j, axis])
  return euler.at[:, 0].set(0.0)


def _lying(key, n, fraction):
  """(n, 3, 3) global orientations: identity, or on the back / front / sides (±jitter)."""
  k_l, k_w, k_j = jax.random.split(key, 3)
  lie = jax.random.bernoulli(k_l, fraction, (n,))
  which = jax.random.randint(k_w, (n,), 0, 4)
  angles = jnp.deg2rad(jnp.array([[-90.0, 0, 0], [90.0, 0, 0], [0, 0, 90.0], [0, 0, -90.0]]))
  jitter = jnp.deg2rad(LIE_JITTER_DEG) * jax.random.uniform(k_j, (n, 3), minval=-1, maxval=1)
  euler = jnp.where(lie[:, None], angles[which] + jitter, 0.0)
  return rotations.euler_to_matrix(euler, order="xyz")


def _to_pose(euler, root):
  rot = rotations.euler_to_matrix(jnp.deg2rad(euler), order="xyz")
  rot = rot.at[:, 0].set(root)
  aa = rotations.matrix_to_axis_angle(rot)
  return aa.reshape(aa.shape[0], -1)


@partial(jax.jit, static_argnums=1)
def sample_broad(key: jax.Array, n: int) -> jnp.ndarray:
  """Training poses of the broad source (see the module docstring).

  Returns:
    (n, 72) float32 axis-angle poses; the global orientation is upright or lying.
  """
  k_c, k_1, k_2, k_3, k_p, k_l = jax.random.split(key, 6)
  choice = jax.random.choice(k_c, 3, (n,), p=jnp.asarray(MIXTURE))
  structured = jnp.where((choice == 0)[:, None, None], _blends(k_1, n), _composites(k_2, n))
  structured = _perturb(k_p, structured)
  euler = jnp.where((choice == 2)[:, None, None], _free(k_3, n), structured)
  return _to_pose(_clip(euler).at[:, 0].set(0.0), _lying(k_l, n, LYING_FRACTION))


# Per-joint amplitude (degrees) of the test source's axis-angle perturbation.
_TEST_AMPLITUDE = {"pelvis": 0.0, "spine1": 20.0, "spine2": 15.0, "spine3": 15.0, "neck": 25.0,
                   "head": 30.0, "left_collar": 12.0, "left_shoulder": 50.0, "left_elbow": 15.0,
                   "left_wrist": 35.0, "left_hand": 15.0, "left_hip": 40.0, "left_knee": 10.0,
                   "left_ankle": 25.0, "left_foot": 15.0}


def _test_amplitudes() -> np.ndarray:
  amp = np.zeros(NUM_JOINTS, np.float32)
  for name, a in _TEST_AMPLITUDE.items():
    amp[_INDEX[name]] = a
    if name.startswith("left_"):
      amp[_INDEX[name.replace("left_", "right_")]] = a
  return amp


_TEST_AMP = _test_amplitudes()
_TEST_BASES = _frames({"t_pose": {}, "a_pose": _both("shoulder", (0, 0, -45)),
                       "arms_down": _both("shoulder", (0, 0, -80))})


def _random_rotations(key, shape, max_deg):
  k_a, k_t = jax.random.split(key)
  axis = jax.random.normal(k_a, shape + (3,))
  axis = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
  angle = jnp.deg2rad(max_deg) * jax.random.uniform(k_t, shape)
  return rotations.axis_angle_to_matrix(axis * angle[..., None])


def _project_to_limits(rot):
  """Rotations (n, 24, 3, 3) -> the closest Euler-clipped rotations (per joint, first
  decomposition), in degrees."""
  first, _ = synthetic.matrix_to_euler(rot)
  return _clip(first)


@partial(jax.jit, static_argnums=1)
def sample_test(key: jax.Array, n: int) -> jnp.ndarray:
  """Held-out poses of the test source (see the module docstring).

  Returns:
    (n, 72) float32 axis-angle poses; the global orientation is upright or lying.
  """
  k_c, k_b, k_a, k_r, k_k, k_e, k_l = jax.random.split(key, 7)
  bases = jnp.asarray(_TEST_BASES)
  acts = jnp.asarray(_TEST_FRAMES)
  rest = bases[jax.random.randint(k_b, (n,), 0, bases.shape[0])]
  act = acts[jax.random.randint(k_a, (n,), 0, acts.shape[0])]
  mirrored = jax.random.bernoulli(k_c, 0.5, (n,))
  act = jnp.where(mirrored[:, None, None], synthetic.mirror_euler(act), act)
  use_rest = jax.random.bernoulli(jax.random.fold_in(k_c, 1), 0.5, (n,))
  base = jnp.where(use_rest[:, None, None], rest, act)
  # Bend knees and elbows of the perturbed rest poses about their hinge axes.
  bend = jax.random.uniform(k_k, (n, 4))
  for col, (j, axis) in enumerate(_HINGES.items()):
    lo, hi = _LIMITS[j, axis]
    top = 110.0 if axis == 0 else 130.0
    angle = bend[:, col] * top * (1.0 if hi > 0 else -1.0)
    base = base.at[:, j, axis].set(jnp.where(use_rest, angle, base[:, j, axis]))
  rot = rotations.euler_to_matrix(jnp.deg2rad(base), order="xyz")
  noise = _random_rotations(k_r, (n, NUM_JOINTS), jnp.asarray(_TEST_AMP))
  euler = _project_to_limits(rot @ noise).at[:, 0].set(0.0)
  del k_e
  return _to_pose(euler, _lying(k_l, n, TEST_LYING_FRACTION))


SOURCES = {"keyframes": None, "broad": sample_broad, "test": sample_test}


def sample(kind: str, key: jax.Array, n: int) -> jnp.ndarray:
  """n poses (n, 72) of the named source: "keyframes" (the original keyframe sampler of
  :mod:`lgd_jax.data.synthetic`), "broad" or "test"."""
  if kind == "keyframes":
    return synthetic.sample_poses(key, n)
  if kind not in SOURCES:
    raise ValueError(f"poses: expected one of {tuple(SOURCES)}, got {kind!r}")
  return SOURCES[kind](key, n)
