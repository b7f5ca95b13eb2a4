"""Keypoint sets as named data.

A keypoint is either a joint of the kinematic tree or a linear combination of mesh vertices: a
named surface landmark (nose, eyes, ears, toes, heels; one vertex each) or a row of a vertex
regressor such as Human3.6M's ``J_regressor_h36m.npy``. :func:`resolve` turns a set into a static
plan for a given model, so that :func:`lgd_jax.body.keypoints` only skins the few vertices a set
needs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lgd_jax.body.model import JOINT_NAMES, BodyModel

COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
# OpenPose's COCO-18 order, as in the official LGD code (SMPL_TO_COCO).
COCO18_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
BODY25_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
    "right_heel")
# Rows of SPIN's J_regressor_h36m.npy, named as SPIN's H36M_TO_J17 map uses them.
H36M17_NAMES = (
    "pelvis", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee", "right_ankle",
    "spine", "thorax", "neck_nose", "head", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist")
# The 14 LSP-order joints of the Human3.6M protocols, as rows of h36m17.
H36M_TO_J14 = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)

# Other names of the same point, tried in order where a name itself is missing: the detectors'
# "mid_hip" is the model's "pelvis" joint; SPIN's "thorax" stands in for a missing "neck". The one
# alias table of the package: keypoint sets (below), detection files and benchmark inputs use it.
SAME_POINT = {"mid_hip": ("pelvis",), "pelvis": ("mid_hip",), "neck": ("thorax",)}

DEFAULT_H36M_REGRESSOR = Path(__file__).resolve().parents[2] / "third_party" / "smpl" / (
    "J_regressor_h36m.npy")


@dataclasses.dataclass(frozen=True, eq=False)
class KeypointSet:
  """An ordered set of named keypoints.

  Attributes:
    name: the set's name, e.g. "coco18".
    names: the keypoints in output order. Without a regressor each name is a joint name
      (or an alias such as "mid_hip") or a surface landmark of the model.
    regressor: optional (K, V) vertex regressor; keypoint k is regressor[k] @ vertices.
  """

  name: str
  names: tuple[str, ...]
  regressor: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.names)

  def index(self, name: str) -> int:
    return self.names.index(name)


@dataclasses.dataclass(frozen=True, eq=False)
class KeypointPlan:
  """A keypoint set resolved against one model (all fields static NumPy).

  Keypoints are gathered by ``order`` from the concatenation of the J posed joints and the
  ``vertex_weights @ skinned vertices[vertex_ids]`` rows (the skinned vertices themselves when
  ``vertex_weights`` is None, as for landmarks).
  """

  vertex_ids: np.ndarray  # (S,) vertices to skin
  vertex_weights: np.ndarray | None  # (K_v, S); None: the skinned vertices themselves (K_v = S)
  order: np.ndarray  # (K,) indices into [joints (J); vertex keypoints (K_v)]


KEYPOINT_SETS: dict[str, KeypointSet] = {
    "smpl24": KeypointSet("smpl24", JOINT_NAMES),
    "coco17": KeypointSet("coco17", COCO17_NAMES),
    "coco18": KeypointSet("coco18", COCO18_NAMES),
    "body25": KeypointSet("body25", BODY25_NAMES),
}


def regressor_keypoint_set(path: str | os.PathLike, name: str = "h36m17",
                           names: Sequence[str] | None = H36M17_NAMES) -> KeypointSet:
  """Loads a (K, V) vertex regressor from a ``.npy`` file as a keypoint set.

  Args:
    path: the regressor file, e.g. SPIN's ``J_regressor_h36m.npy`` (17, 6890).
    name: the set's name.
    names: keypoint names; used when their number matches K, else "joint_<k>".

  Returns:
    The keypoint set. Build it once and reuse it: plans and jitted functions are cached per set.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"{path}: vertex regressor not found; for h36m17 download J_regressor_h36m.npy (shipped "
        f"with SPIN's data, licence-bound) and put it at {DEFAULT_H36M_REGRESSOR}")
  try:
    reg = np.load(path, allow_pickle=False)
  except Exception as e:  # numpy raises several types for non-.npy content
    raise ValueError(f"{path}: not a NumPy .npy regressor file ({type(e).__name__}: {e})") from None
  if reg.ndim != 2 or not np.issubdtype(reg.dtype, np.floating):
    raise ValueError(f"{path}: regressor has shape {reg.shape} and dtype {reg.dtype}, expected a "
                     "float array (num_keypoints, num_vertices)")
  if names is None or len(names) != reg.shape[0]:
    names = tuple(f"joint_{k}" for k in range(reg.shape[0]))
  return KeypointSet(name, tuple(names), reg.astype(np.float64))


@functools.cache
def _default_h36m17() -> KeypointSet:
  return regressor_keypoint_set(DEFAULT_H36M_REGRESSOR)


def get_keypoint_set(spec: str | KeypointSet) -> KeypointSet:
  """Looks a keypoint set up by name ("smpl24", "coco17", "coco18", "body25", "h36m17")."""
  if isinstance(spec, KeypointSet):
    return spec
  if spec == "h36m17":
    return _default_h36m17()
  try:
    return KEYPOINT_SETS[spec]
  except KeyError:
    raise KeyError(f"unknown keypoint set {spec!r}; known: "
                   f"{sorted(KEYPOINT_SETS) + ['h36m17']}") from None


@functools.lru_cache(maxsize=256)
def _resolve(kpset: KeypointSet, num_verts: int, num_joints: int,
             landmarks: tuple[tuple[str, int], ...], model_name: str) -> KeypointPlan:
  if kpset.regressor is not None:
    reg = kpset.regressor
    if reg.shape[1] != num_verts:
      raise ValueError(f"keypoint set {kpset.name!r}: regressor has {reg.shape[1]} vertex "
                       f"columns but model {model_name or ''} has {num_verts} vertices")
    support = np.flatnonzero(np.any(reg != 0, axis=0))
    return KeypointPlan(support.astype(np.int32), reg[:, support],
                        num_joints + np.arange(reg.shape[0], dtype=np.int32))
  landmark_ids = dict(landmarks)
  order, vertex_ids = [], []
  for kp in kpset.names:
    joint = next((n for n in (kp,) + SAME_POINT.get(kp, ()) if n in JOINT_NAMES[:num_joints]), kp)
    if joint in JOINT_NAMES[:num_joints]:
      order.append(JOINT_NAMES.index(joint))
    elif kp in landmark_ids:
      if landmark_ids[kp] not in vertex_ids:
        vertex_ids.append(landmark_ids[kp])
      order.append(num_joints + vertex_ids.index(landmark_ids[kp]))
    else:
      raise ValueError(f"keypoint set {kpset.name!r} needs {kp!r}, which model "
                       f"{model_name!r} has neither as a joint nor as a landmark vertex "
                       f"(landmarks: {sorted(landmark_ids)})")
  return KeypointPlan(np.asarray(vertex_ids, np.int32), None, np.asarray(order, np.int32))


def resolve(kpset: str | KeypointSet, model: BodyModel) -> KeypointPlan:
  """Resolves a keypoint set against a model's vertex count and landmarks (cached)."""
  kpset = get_keypoint_set(kpset)
  return _resolve(kpset, model.num_verts, model.num_joints, model.landmarks, model.name)


def map_by_name(src_names, kp: np.ndarray, conf: np.ndarray, dst_names,
                midpoints: dict | None = None):
  """Reorders keypoints by name into another set: the one name mapper of the package.

  Each wanted name is taken from the first of (the name, then its :data:`SAME_POINT` aliases)
  that the source has and, per sample, is confident (> 0); where the source has none of them and
  ``midpoints`` gives the name two source names (e.g. COCO-17's missing neck: the shoulders),
  their midpoint, with the smaller confidence.

  Args:
    src_names: names of the source keypoints.
    kp: (N, S, 2) source keypoints.
    conf: (N, S) confidences.
    dst_names: names of the wanted keypoints.
    midpoints: optional {wanted name: (source name a, source name b)}.

  Returns:
    (kp (N, K, 2), conf (N, K), names of wanted keypoints without a source): missing keypoints
    have confidence 0.
  """
  src = {n: i for i, n in enumerate(src_names)}
  n = kp.shape[0]
  out_kp = np.zeros((n, len(dst_names), 2), np.float32)
  out_conf = np.zeros((n, len(dst_names)), np.float32)
  unmatched = []
  for k, name in enumerate(dst_names):
    idx = [src[c] for c in (name,) + SAME_POINT.get(name, ()) if c in src]
    if idx:
      cand = conf[:, idx]
      first = np.argmax(cand > 0, axis=1)
      out_kp[:, k] = kp[np.arange(n), np.asarray(idx)[first]]
      out_conf[:, k] = cand[np.arange(n), first]
    elif midpoints and name in midpoints and all(c in src for c in midpoints[name]):
      a, b = (src[c] for c in midpoints[name])
      out_kp[:, k] = 0.5 * (kp[:, a] + kp[:, b])
      out_conf[:, k] = np.minimum(conf[:, a], conf[:, b])
    else:
      unmatched.append(name)
  return out_kp, out_conf, unmatched

