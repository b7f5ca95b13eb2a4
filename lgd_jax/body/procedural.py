"""Procedural body models in SMPL's layout, for tests, benchmarks and demos without SMPL files.

They have SMPL's 24-joint tree and a human-like rest skeleton (rounded anthropometric proportions,
metres, +y up, +x the body's left, +z forward), with vertices scattered along the bones, smooth
skinning weights, landmark vertices at the face and feet, and random shape and pose blend shapes.
They are not a human mesh: the free human body model is a separate, exported file.
"""

from __future__ import annotations

import numpy as np

from lgd_jax.body.model import (
  NUM_JOINTS,
  SMPL_LANDMARKS,
  SMPL_NUM_VERTS,
  SMPL_PARENTS,
  BodyModel,
  make_model,
)

# A T-pose skeleton of about 1.75 m, pelvis at the origin.
REST_JOINTS = np.array([
    [0.00, 0.00, 0.00], [0.08, -0.09, 0.00], [-0.08, -0.09, 0.00], [0.00, 0.11, -0.01],
    [0.10, -0.48, 0.01], [-0.10, -0.48, 0.01], [0.00, 0.25, 0.00], [0.09, -0.88, -0.03],
    [-0.09, -0.88, -0.03], [0.00, 0.30, 0.01], [0.11, -0.94, 0.10], [-0.11, -0.94, 0.10],
    [0.00, 0.52, -0.02], [0.07, 0.43, -0.01], [-0.07, 0.43, -0.01], [0.00, 0.61, 0.03],
    [0.18, 0.46, -0.02], [-0.18, 0.46, -0.02], [0.44, 0.45, -0.03], [-0.44, 0.45, -0.03],
    [0.69, 0.46, -0.03], [-0.69, 0.46, -0.03], [0.78, 0.46, -0.04], [-0.78, 0.46, -0.04],
])

# Where the landmarks sit (position, the joint that carries them).
_LANDMARK_POSES = {
    "nose": ([0.00, 0.62, 0.12], 15), "right_eye": ([-0.03, 0.65, 0.10], 15),
    "left_eye": ([0.03, 0.65, 0.10], 15), "right_ear": ([-0.075, 0.63, 0.02], 15),
    "left_ear": ([0.075, 0.63, 0.02], 15),
    "left_big_toe": ([0.10, -0.96, 0.19], 10), "left_small_toe": ([0.15, -0.96, 0.17], 10),
    "left_heel": ([0.09, -0.96, -0.07], 7),
    "right_big_toe": ([-0.10, -0.96, 0.19], 11), "right_small_toe": ([-0.15, -0.96, 0.17], 11),
    "right_heel": ([-0.09, -0.96, -0.07], 8),
}


def synthetic_smpl_arrays(num_verts: int = SMPL_NUM_VERTS, num_betas: int = 10, seed: int = 0,
                          landmarks: dict[str, int] | None = None,
                          shape_scale: float = 0.01, pose_scale: float = 0.003) -> dict:
  """Random arrays with the keys, shapes and dtypes of an official SMPL model file.

  Args:
    num_verts: number of vertices (6890 for SMPL's size).
    num_betas: number of shape components.
    seed: random seed.
    landmarks: landmark name -> vertex id to place at the face and feet. Defaults to SMPL's ids
      when ``num_verts`` is 6890, otherwise to the last 11 vertices.
    shape_scale: standard deviation of shapedirs entries (metres per unit beta).
    pose_scale: standard deviation of posedirs entries.

  Returns:
    A dict with v_template (V, 3), shapedirs (V, 3, B), posedirs (V, 3, 207), J_regressor
    (24, V), weights (V, 24), kintree_table (2, 24), f (F, 3), J (24, 3), all NumPy float64 or
    integer arrays, and "landmarks" (name -> id).
  """
  rng = np.random.default_rng(seed)
  if landmarks is None:
    landmarks = (dict(SMPL_LANDMARKS) if num_verts == SMPL_NUM_VERTS else
                 {k: num_verts - len(_LANDMARK_POSES) + i for i, k in enumerate(_LANDMARK_POSES)})
  # Scatter vertices along the 23 bones (and around the pelvis), skinned to both bone ends.
  bone = rng.integers(0, NUM_JOINTS, num_verts)
  s = rng.uniform(0.0, 1.0, num_verts)
  parent = np.array([max(p, 0) for p in SMPL_PARENTS])[bone]
  centre = REST_JOINTS[parent] + s[:, None] * (REST_JOINTS[bone] - REST_JOINTS[parent])
  v_template = centre + rng.normal(0.0, 0.03, (num_verts, 3))
  weights = np.zeros((num_verts, NUM_JOINTS))
  np.add.at(weights, (np.arange(num_verts), parent), 1.0 - s)
  np.add.at(weights, (np.arange(num_verts), bone), s)
  for name, vid in landmarks.items():
    pos, joint = _LANDMARK_POSES[name]
    v_template[vid] = pos
    weights[vid] = 0.0
    weights[vid, joint] = 1.0
  weights /= weights.sum(1, keepdims=True)
  # Each joint regressed from its 8 nearest vertices, weights positive and summing to one.
  dist = np.linalg.norm(v_template[None] - REST_JOINTS[:, None], axis=-1)
  regressor = np.zeros((NUM_JOINTS, num_verts))
  for j in range(NUM_JOINTS):
    near = np.argsort(dist[j])[:8]
    w = rng.uniform(0.5, 1.5, near.size)
    regressor[j, near] = w / w.sum()
  num_faces = max(2 * num_verts - 4, 1)
  return {
      "v_template": v_template,
      "shapedirs": rng.normal(0.0, shape_scale, (num_verts, 3, num_betas)),
      "posedirs": rng.normal(0.0, pose_scale, (num_verts, 3, 9 * (NUM_JOINTS - 1))),
      "J_regressor": regressor,
      "weights": weights,
      "kintree_table": np.array([[4294967295] + list(SMPL_PARENTS[1:]), list(range(NUM_JOINTS))],
                                np.int64),
      "f": rng.integers(0, num_verts, (num_faces, 3)).astype(np.uint32),
      "J": regressor @ v_template,
      "landmarks": dict(landmarks),
  }


def tiny_model(num_verts: int = 200, num_betas: int = 10, seed: int = 0,
               dtype=np.float32) -> BodyModel:
  """A small procedural model (SMPL's tree, ``num_verts`` vertices) for fast tests.

  Args:
    num_verts: number of vertices, at least 24 + 11.
    num_betas: number of shape components.
    seed: random seed.
    dtype: floating dtype of the arrays.

  Returns:
    A :class:`BodyModel` with all landmarks of the built-in keypoint sets.
  """
  arrays = synthetic_smpl_arrays(num_verts, num_betas, seed)
  return make_model(arrays["v_template"], arrays["shapedirs"], arrays["posedirs"],
                    arrays["J_regressor"], arrays["weights"], arrays["f"],
                    landmarks=arrays["landmarks"], name=f"tiny{num_verts}", dtype=dtype)
