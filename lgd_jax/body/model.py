"""The SMPL body model as a JAX pytree.

Arrays are traced pytree leaves; sizes, the kinematic tree and landmark vertex ids are static
metadata, so a model can be passed straight into ``jit``/``vmap``/``grad``-transformed functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)
NUM_JOINTS = len(JOINT_NAMES)
NUM_POSE = 3 * NUM_JOINTS  # 72: global orientation first, then 23 body joints.

# SMPL's kinematic tree: parent of every joint, -1 for the root.
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# Vertex ids of surface landmarks on SMPL's 6890-vertex mesh (smplx's vertex_ids['smplh']).
SMPL_LANDMARKS: dict[str, int] = {
    "nose": 332, "right_eye": 6260, "left_eye": 2800, "right_ear": 4071, "left_ear": 583,
    "left_big_toe": 3216, "left_small_toe": 3226, "left_heel": 3387,
    "right_big_toe": 6617, "right_small_toe": 6624, "right_heel": 6787,
}
SMPL_NUM_VERTS = 6890


@flax.struct.dataclass
class BodyModel:
  """A linear blend skinning body model in SMPL's layout.

  Attributes:
    v_template: (V, 3) rest-pose template vertices, metres.
    shapedirs: (V, 3, num_betas) shape blend shapes.
    posedirs: (V, 3, 9 * (J - 1)) pose blend shapes on the flattened (R_j - I), j >= 1.
    J_regressor: (J, V) joint regressor.
    weights: (V, J) skinning weights.
    faces: (F, 3) int32 triangles.
    j_template: (J, 3) J_regressor @ v_template, precomputed in float64.
    j_shapedirs: (J, 3, num_betas) J_regressor @ shapedirs, precomputed in float64; with
      ``j_template`` it gives the joints of any shape without touching the mesh.
    parents: static parent index of every joint (-1 for the root), parents[j] < j.
    landmarks: static ((name, vertex id), ...) surface keypoints such as the nose and the toes.
    name: static label, e.g. the file the model came from.
  """

  v_template: jnp.ndarray
  shapedirs: jnp.ndarray
  posedirs: jnp.ndarray
  J_regressor: jnp.ndarray
  weights: jnp.ndarray
  faces: jnp.ndarray
  j_template: jnp.ndarray
  j_shapedirs: jnp.ndarray
  parents: tuple[int, ...] = flax.struct.field(pytree_node=False, default=SMPL_PARENTS)
  landmarks: tuple[tuple[str, int], ...] = flax.struct.field(pytree_node=False, default=())
  name: str = flax.struct.field(pytree_node=False, default="")

  @property
  def num_verts(self) -> int:
    return self.v_template.shape[0]

  @property
  def num_joints(self) -> int:
    return len(self.parents)

  @property
  def num_betas(self) -> int:
    return self.shapedirs.shape[-1]

  @property
  def dtype(self):
    return self.v_template.dtype

  def landmark_id(self, name: str) -> int:
    """Vertex id of a named surface landmark; KeyError if the model has none of that name."""
    return dict(self.landmarks)[name]


def make_model(
    v_template: np.ndarray,
    shapedirs: np.ndarray,
    posedirs: np.ndarray,
    J_regressor: np.ndarray,
    weights: np.ndarray,
    faces: np.ndarray,
    parents: Sequence[int] = SMPL_PARENTS,
    landmarks: Mapping[str, int] | None = None,
    name: str = "",
    dtype=jnp.float32,
) -> BodyModel:
  """Builds a :class:`BodyModel` from arrays, checking shapes and deriving the joint arrays.

  Args:
    v_template: (V, 3).
    shapedirs: (V, 3, B).
    posedirs: (V, 3, 9 * (J - 1)) or smplx's flattened (9 * (J - 1), 3 * V).
    J_regressor: (J, V), dense or anything with ``toarray()``.
    weights: (V, J).
    faces: (F, 3) vertex indices.
    parents: parent of every joint, -1 for the root; each parent must precede its child.
    landmarks: surface keypoint name -> vertex id. Defaults to SMPL's ids for 6890-vertex meshes.
    name: a label kept with the model.
    dtype: floating dtype of the arrays.

  Returns:
    The model.
  """
  if hasattr(J_regressor, "toarray"):
    J_regressor = J_regressor.toarray()
  v_template = np.asarray(v_template, np.float64)
  shapedirs = np.asarray(shapedirs, np.float64)
  posedirs = np.asarray(posedirs, np.float64)
  J_regressor = np.asarray(J_regressor, np.float64)
  weights = np.asarray(weights, np.float64)
  faces = np.asarray(faces)
  parents = tuple(int(p) for p in parents)
  num_verts, num_joints = v_template.shape[0], len(parents)
  if posedirs.ndim == 2 and posedirs.shape == (9 * (num_joints - 1), 3 * num_verts):
    posedirs = posedirs.T.reshape(num_verts, 3, -1)
  expected = {
      "v_template": (v_template, (num_verts, 3)),
      "shapedirs": (shapedirs, (num_verts, 3, None)),
      "posedirs": (posedirs, (num_verts, 3, 9 * (num_joints - 1))),
      "J_regressor": (J_regressor, (num_joints, num_verts)),
      "weights": (weights, (num_verts, num_joints)),
      "faces": (faces, (None, 3)),
  }
  for key, (arr, shape) in expected.items():
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
      raise ValueError(f"{name or 'body model'}: '{key}' has shape {arr.shape}, expected "
                       f"{tuple('*' if s is None else s for s in shape)}")
  if parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(parents) if j > 0):
    raise ValueError(f"{name or 'body model'}: kinematic tree {parents} is not a tree rooted at "
                     "joint 0 with every parent before its child")
  if landmarks is None:
    landmarks = SMPL_LANDMARKS if num_verts == SMPL_NUM_VERTS else {}
  bad = {k: v for k, v in landmarks.items() if not 0 <= int(v) < num_verts}
  if bad:
    raise ValueError(f"{name or 'body model'}: landmark vertex ids {bad} outside [0, {num_verts})")
  arr = lambda x: jnp.asarray(x, dtype)
  return BodyModel(
      v_template=arr(v_template),
      shapedirs=arr(shapedirs),
      posedirs=arr(posedirs),
      J_regressor=arr(J_regressor),
      weights=arr(weights),
      faces=jnp.asarray(faces, jnp.int32),
      j_template=arr(J_regressor @ v_template),
      j_shapedirs=arr(np.einsum("jv,vcb->jcb", J_regressor, shapedirs)),
      parents=parents,
      landmarks=tuple((str(k), int(v)) for k, v in landmarks.items()),
      name=name,
  )

