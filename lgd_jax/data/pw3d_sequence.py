"""One 3DPW sequence file, read without running its code and validated key by key.

The data set's ``sequenceFiles/{train,validation,test}/*.pkl`` are Python 2 pickles (read with
``encoding='latin1'``), one dict per sequence with one list entry per actor (one or two):

    sequence        str                  the sequence name
    genders         [str]                'm' or 'f' per actor (the readme calls it "gender")
    poses           [(F, 72)]            SMPL pose per image frame, world frame
    betas           [(10,)]              SMPL shape per actor
    trans           [(F, 3)]             root translation, world frame
    jointPositions  [(F, 72)]            the 24 SMPL joints, world frame
    poses2d         [(F, 3, 18)]         OpenPose COCO-18 detections: x, y (pixels), confidence
    campose_valid   [(F,)]               whether the camera pose of the frame is aligned
    cam_poses       (F, 4, 4)            world-to-camera extrinsics per frame
    cam_intrinsics  (3, 3)               K
    img_frame_ids, poses_60Hz, trans_60Hz, betas_clothed, v_template_clothed, texture_maps, ...

:func:`read_sequence` keeps the frames with ``campose_valid`` and takes the global orientation to
the camera frame, R_cam @ R_root, as SPIN's and the official LGD preprocessing do;
:mod:`lgd_jax.data.pw3d` assembles a split from the sequences and computes its ground truth.

Every problem with a file raises :class:`Pw3dError` with a one-line message naming the file, the
key and what was expected.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.spatial.transform import Rotation

from lgd_jax import safe_pickle
from lgd_jax.errors import UserError

NUM_BETAS = 10
NUM_JOINTS2D = 18
GENDERS = {"m": "male", "male": "male", "f": "female", "female": "female"}
# cam_poses rotations must be orthonormal to this tolerance.
_ROTATION_TOL = 1e-3


class Pw3dError(UserError):
  """A 3DPW file, or an SMPL file it needs, that cannot be used; the message is one line."""


def _read_pickle(source: str) -> dict:
  try:
    # Classes besides NumPy's (chumpy in v_template_clothed, ...) become inert stand-ins: keys
    # holding one are unusable, and nothing the pickle names runs.
    data = safe_pickle.load(source, stubs=safe_pickle.stub_all)
  except OSError as e:
    raise Pw3dError.at(source, f"cannot be read ({type(e).__name__}: {e.strerror or e}), expected "
                       "a 3DPW sequence .pkl") from None
  except Exception as e:  # noqa: BLE001  Any unpickling failure: a corrupt or foreign file.
    raise Pw3dError.at(source, f"not a readable pickle ({type(e).__name__}: {e}), expected a 3DPW "
                       "sequence file (a latin1 pickle of a dict)") from None
  if not isinstance(data, dict):
    raise Pw3dError.at(source, f"holds a {type(data).__name__}, expected a dict with the 3DPW keys "
                       "(sequence, genders, poses, betas, poses2d, campose_valid, cam_poses, ...)")
  return data


# ---------------------------------------------------------------------------------------------
# Validating one sequence.
# ---------------------------------------------------------------------------------------------


def _get(data: dict, source: str, *keys: str):
  for key in keys:
    if key in data:
      return data[key]
  raise Pw3dError.at(source, f"missing key '{keys[0]}', expected a 3DPW sequence dict (keys "
                     f"present: {', '.join(sorted(map(str, data)))})")


def _array(value, source: str, key: str, shape: tuple, what: str) -> np.ndarray:
  """A float64 array of ``shape`` (None = any size); NaN/Inf are errors."""
  if isinstance(value, safe_pickle.Stub):
    raise Pw3dError.at(source, f"key '{key}' holds a pickled {value.qualname} object, expected "
                       f"{what}")
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise Pw3dError.at(source, f"key '{key}' is not numeric ({e}), expected {what}") from None
  if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
    raise Pw3dError.at(source, f"key '{key}' has shape {arr.shape}, expected {what}")
  if not np.all(np.isfinite(arr)):
    raise Pw3dError.at(source, f"key '{key}' holds NaN or Inf, expected finite {what}")
  return arr


def _per_actor(data: dict, source: str, key: str, num_actors: int, *aliases: str) -> list:
  value = _get(data, source, key, *aliases)
  if isinstance(value, np.ndarray) and value.dtype != object:
    value = list(value)
  if not isinstance(value, (list, tuple)) or len(value) != num_actors:
    n = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
    raise Pw3dError.at(source, f"key '{key}' holds {n} entries, expected a list with one entry per "
                       f"actor ({num_actors}, as in 'poses')")
  return list(value)


def _gender(value, source: str, actor: int) -> str:
  if isinstance(value, bytes):
    value = value.decode("latin1")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  gender = GENDERS.get(str(value).strip().lower()) if isinstance(value, str) else None
  if gender is None:
    raise Pw3dError.at(source, f"key 'genders' entry {actor} is {value!r}, expected 'm' or 'f'")
  return gender


def _rotations(cam_poses: np.ndarray, source: str) -> np.ndarray:
  rot = cam_poses[:, :3, :3]
  err = np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max(axis=(-2, -1))
  det = np.linalg.det(rot)
  bad = np.flatnonzero((err > _ROTATION_TOL) | (det < 0))
  if bad.size:
    raise Pw3dError.at(source, f"key 'cam_poses' frame {int(bad[0])} has no rotation in its "
                       "top-left 3x3 block, expected rigid world-to-camera 4x4 matrices")
  return rot


def _read_actors(data: dict, source: str) -> dict:
  """The per-actor arrays of a sequence dict, validated: lists over the actors of poses (F, 72),
  genders, betas, poses2d (F, 3, 18), valid (F,) and jointPositions (F, 72) (or None), and the
  shared cam_rot (F, 3, 3) and intrinsics (3, 3) (or None)."""
  poses = _get(data, source, "poses")
  if not isinstance(poses, (list, tuple)) or not poses:
    raise Pw3dError.at(source, f"key 'poses' holds {type(poses).__name__}, expected a non-empty "
                       "list of (F, 72) SMPL poses, one per actor")
  num_actors = len(poses)
  poses = [_array(p, source, "poses", (None, 72), "(F, 72) SMPL poses per actor") for p in poses]
  num_frames = poses[0].shape[0]
  if any(p.shape[0] != num_frames for p in poses):
    raise Pw3dError.at(source, f"key 'poses' has actors with {[p.shape[0] for p in poses]} frames, "
                       "expected the same number of frames for every actor")
  genders = [_gender(g, source, i) for i, g in
             enumerate(_per_actor(data, source, "genders", num_actors, "gender"))]
  betas = [_array(b, source, "betas", (None,), "(10,) SMPL betas per actor")
           for b in _per_actor(data, source, "betas", num_actors)]
  for b in betas:
    if b.size < NUM_BETAS:
      raise Pw3dError.at(source, f"key 'betas' has {b.size} values, expected at least {NUM_BETAS}")
  poses2d = [_array(p, source, "poses2d", (num_frames, 3, NUM_JOINTS2D),
                    f"({num_frames}, 3, {NUM_JOINTS2D}) OpenPose x, y, confidence per actor")
             for p in _per_actor(data, source, "poses2d", num_actors, "poses2D")]
  valid = [_array(v, source, "campose_valid", (num_frames,), f"({num_frames},) booleans per "
                  "actor") != 0 for v in _per_actor(data, source, "campose_valid", num_actors)]
  cam_poses = _array(_get(data, source, "cam_poses"), source, "cam_poses", (num_frames, 4, 4),
                     f"({num_frames}, 4, 4) world-to-camera matrices")
  cam_rot = _rotations(cam_poses, source)
  joint_positions = None
  if "jointPositions" in data:
    joint_positions = [_array(j, source, "jointPositions", (num_frames, 72),
                              f"({num_frames}, 72) joint positions per actor")
                       for j in _per_actor(data, source, "jointPositions", num_actors)]
  intrinsics = None
  if "cam_intrinsics" in data:
    intrinsics = _array(data["cam_intrinsics"], source, "cam_intrinsics", (3, 3),
                        "the (3, 3) camera matrix K")
  return {"poses": poses, "genders": genders, "betas": betas, "poses2d": poses2d, "valid": valid,
          "cam_rot": cam_rot, "joint_positions": joint_positions, "intrinsics": intrinsics}


def _valid_frames(actors: dict) -> dict:
  """:func:`read_sequence`'s arrays (but ``sequence``) from :func:`_read_actors`' dict."""
  poses, genders, betas, poses2d, valid, cam_rot, joint_positions = (actors[k] for k in (
      "poses", "genders", "betas", "poses2d", "valid", "cam_rot", "joint_positions"))
  out = {k: [] for k in ("kp2d", "conf", "pose", "betas", "gender", "joint_positions", "actor",
                         "frame")}
  for a in range(len(poses)):
    idx = np.flatnonzero(valid[a])
    pose = poses[a][idx].copy()
    root = Rotation.from_rotvec(pose[:, :3]).as_matrix()
    pose[:, :3] = Rotation.from_matrix(cam_rot[idx] @ root).as_rotvec()
    out["pose"].append(pose)
    out["betas"].append(np.tile(betas[a][:NUM_BETAS], (idx.size, 1)))
    out["gender"].append(np.full(idx.size, genders[a]))
    out["kp2d"].append(np.swapaxes(poses2d[a][idx, :2], 1, 2))
    out["conf"].append(poses2d[a][idx, 2])
    if joint_positions is not None:
      joints = joint_positions[a][idx].reshape(-1, 24, 3)
      out["joint_positions"].append(np.einsum("fij,fkj->fki", cam_rot[idx], joints))
    out["actor"].append(np.full(idx.size, a))
    out["frame"].append(idx)
  result = {k: np.concatenate(v) for k, v in out.items() if v}
  result["joint_positions"] = result.get("joint_positions")
  result["intrinsics"] = actors["intrinsics"]
  return result


def read_sequence(path: str | os.PathLike) -> dict:
  """The valid frames of one 3DPW sequence file, per actor concatenated.

  Returns:
    A dict of NumPy arrays over the valid frames of all actors (actor-major, frame order):
    ``kp2d`` (n, 18, 2) pixels, ``conf`` (n, 18), ``pose`` (n, 72) with the global orientation in
    the camera frame (R_cam R_root, as SPIN), ``betas`` (n, 10), ``gender`` (n,) "male"/"female",
    ``joint_positions`` (n, 24, 3) the file's joints in the camera frame or None, ``intrinsics``
    (3, 3) or None, ``actor`` (n,), ``frame`` (n,) image frame index, ``sequence`` str.

  Raises:
    Pw3dError: the file is not a readable 3DPW sequence (the message names the key).
  """
  source = os.fspath(path)
  data = _read_pickle(source)
  sequence = _get(data, source, "sequence")
  sequence = sequence.decode("latin1") if isinstance(sequence, bytes) else str(sequence)
  result = _valid_frames(_read_actors(data, source))
  result["sequence"] = sequence
  return result
