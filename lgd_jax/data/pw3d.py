"""3DPW ("3D Poses in the Wild", von Marcard et al., ECCV 2018) as fitting inputs and ground truth.

The data set's ``sequenceFiles/{train,validation,test}/*.pkl`` hold one sequence each (the keys
are listed in :mod:`lgd_jax.data.pw3d_sequence`, which reads and validates them). As in SPIN's and
the official LGD preprocessing, only frames with ``campose_valid`` are used and the global
orientation is taken to the camera frame, R_cam @ R_root. This module then expresses the body in
the frame our fits predict in: the official camera
(:func:`lgd_jax.geometry.camera.official_camera`) looks down -z with +y up, so a camera-frame
point (x right, y down, z forward) is the world point diag(1, -1, -1) (x, y, z) up to a
translation. Ground truth comes from the user's gendered SMPL files; every 3D quantity is
returned centred on the SMPL pelvis, so translations never matter.

    data = pw3d.load("/data/3DPW", split="test")     # needs SMPL_MALE / SMPL_FEMALE models
    data.kp2d, data.conf                            # (N, 18, 2) pixels, (N, 18) confidences
    data.pose, data.betas, data.joints              # our frame; joints (N, 24, 3) metres

Every problem with an input raises :class:`Pw3dError` with a one-line message naming the file, the
key and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import jax
import numpy as np
from scipy.spatial.transform import Rotation

from lgd_jax import body
from lgd_jax.body.keypoint_sets import COCO18_NAMES
from lgd_jax.body.model_files import SMPL_URL
from lgd_jax.data.pw3d_sequence import (
                                        GENDERS,
                                        NUM_BETAS,
                                        NUM_JOINTS2D,
                                        Pw3dError,
                                        read_sequence,
)

__all__ = [
    "CAMERA_TO_WORLD", "DEFAULT_SMPL_DIR", "GENDERS", "NUM_BETAS", "NUM_JOINTS2D",
    "REGRESSOR_NAME", "SMPL_DIR_ENV", "SPIN_URL", "SPLITS", "Pw3dData", "Pw3dError", "load",
    "load_models", "missing_regressor_message", "model_path", "read_sequence", "regressor_path",
    "sequence_files", "smpl_dir", "smpl_points",
]

SPLITS = ("train", "validation", "test")
# Our world frame from a camera frame (x right, y down, z forward), up to a translation.
CAMERA_TO_WORLD = np.diag([1.0, -1.0, -1.0])
# Where users put SMPL (third_party/README.md); LGD_JAX_SMPL_DIR overrides it.
DEFAULT_SMPL_DIR = Path(__file__).resolve().parents[2] / "third_party" / "smpl"
SMPL_DIR_ENV = "LGD_JAX_SMPL_DIR"
REGRESSOR_NAME = "J_regressor_h36m.npy"
SPIN_URL = "https://github.com/nkolot/SPIN (fetch_data.sh)"
# File names of the gendered models, smplx's first, lower-cased (the search ignores case).
_MODEL_NAMES = {
    g: tuple(f"{stem}{ext}" for stem in (f"smpl_{g}", f"basicmodel_{tag}_lbs_10_207_0_v1.1.0",
                                         f"basicmodel_{tag}_lbs_10_207_0_v1.0.0")
             for ext in (".pkl", ".npz"))
    for g, tag in (("male", "m"), ("female", "f"), ("neutral", "neutral"))}
_CHUNK = 4096  # frames per jitted ground-truth call


# ---------------------------------------------------------------------------------------------
# The user's SMPL files.
# ---------------------------------------------------------------------------------------------


def smpl_dir(directory: str | os.PathLike | None = None) -> Path:
  """The user's SMPL directory: ``directory``, else $LGD_JAX_SMPL_DIR, else third_party/smpl."""
  return Path(directory or os.environ.get(SMPL_DIR_ENV) or DEFAULT_SMPL_DIR)


def _find(directory: Path, names: tuple[str, ...]) -> Path | None:
  for folder in (directory, directory / "smpl"):  # smplx's model_path/smpl/ layout too
    if not folder.is_dir():
      continue
    present = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for name in names:
      if name in present:
        return present[name]
  return None


def model_path(gender: str, directory: str | os.PathLike | None = None) -> Path:
  """The SMPL model file of ``gender`` ("male", "female", "neutral" or 'm'/'f').

  Looks for smplx's names (SMPL_MALE.pkl, ...) and the official ones
  (basicmodel_m_lbs_10_207_0_v1.1.0.pkl, ...), as .pkl or .npz, in :func:`smpl_dir` and its
  ``smpl/`` subfolder.

  Raises:
    Pw3dError: no such file; the message says what to download and where to put it.
  """
  gender = GENDERS.get(gender, gender)
  if gender not in _MODEL_NAMES:
    raise Pw3dError(f"unknown gender {gender!r}, expected 'male', 'female' or 'neutral'")
  folder = smpl_dir(directory)
  found = _find(folder, _MODEL_NAMES[gender])
  if found is None:
    smplx = f"SMPL_{gender.upper()}.pkl"
    official = _MODEL_NAMES[gender][2]
    raise Pw3dError.at(folder, f"no {gender} SMPL model ({smplx}, {official} or an .npz "
                       f"conversion); download SMPL from {SMPL_URL} and put {smplx} in {folder} "
                       f"(or set {SMPL_DIR_ENV})")
  return found


def regressor_path(directory: str | os.PathLike | None = None) -> Path | None:
  """SPIN's ``J_regressor_h36m.npy`` in :func:`smpl_dir`, or None if it is not there."""
  return _find(smpl_dir(directory), (REGRESSOR_NAME.lower(),))


def missing_regressor_message(directory: str | os.PathLike | None = None) -> str:
  """The one-line error for a missing ``J_regressor_h36m.npy``: what to download, where to."""
  folder = smpl_dir(directory)
  return (f"{folder / REGRESSOR_NAME}: no such file; the 14- and 17-joint protocols need SPIN's "
          f"Human3.6M joint regressor: download it with SPIN's data ({SPIN_URL}) and put "
          f"{REGRESSOR_NAME} in {folder} (or set {SMPL_DIR_ENV})")


# ---------------------------------------------------------------------------------------------
# The data set.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pw3dData:
  """The valid frames of a 3DPW split, one row per (actor, frame).

  Attributes:
    kp2d: (N, 18, 2) OpenPose COCO-18 detections, pixels (order :data:`KEYPOINT_NAMES`).
    conf: (N, 18) their confidences.
    pose: (N, 72) ground-truth SMPL pose, global orientation in our frame.
    betas: (N, 10) ground-truth shape.
    gender: (N,) "male" or "female".
    joints: (N, 24, 3) ground-truth SMPL joints of the gendered model, our frame, pelvis-centred.
    vertices: (N, V, 3) ground-truth vertices (pelvis-centred), or None unless asked for.
    joint_positions: (N, 24, 3) the file's ``jointPositions`` in our frame, pelvis-centred, or
      None; a check of the SMPL files (they should agree with ``joints`` to a few millimetres).
    intrinsics: (N, 3, 3) camera matrices, or None where the files lack ``cam_intrinsics``.
    sequence: (N,) sequence names.
    frame: (N,) image frame index (imageFiles/<sequence>/image_<frame:05d>.jpg).
    actor: (N,) actor index within the sequence.
    files: the sequence files read.
    models: gender -> SMPL model file used for the ground truth.
    body_models: gender -> the loaded :class:`~lgd_jax.body.BodyModel`.
  """

  kp2d: np.ndarray
  conf: np.ndarray
  pose: np.ndarray
  betas: np.ndarray
  gender: np.ndarray
  joints: np.ndarray
  vertices: np.ndarray | None
  joint_positions: np.ndarray | None
  intrinsics: np.ndarray | None
  sequence: np.ndarray
  frame: np.ndarray
  actor: np.ndarray
  files: tuple[str, ...]
  models: dict
  body_models: dict

  keypoint_names = COCO18_NAMES

  def __len__(self) -> int:
    return self.kp2d.shape[0]

  def image_names(self) -> list[str]:
    return [f"imageFiles/{s}/image_{f:05d}.jpg" for s, f in zip(self.sequence, self.frame)]


def sequence_files(path: str | os.PathLike, split: str = "test") -> list[str]:
  """The .pkl files of ``path``: a 3DPW root (holding sequenceFiles/), sequenceFiles/ itself, one
  split's directory, or a single .pkl (``split`` is used for the first two)."""
  if split not in SPLITS:
    raise Pw3dError(f"3DPW split {split!r}: expected one of {', '.join(SPLITS)}")
  p = Path(path)
  if p.is_file():
    if p.suffix.lower() != ".pkl":
      raise Pw3dError.at(p, "is not a .pkl file, expected a 3DPW root directory, its "
                         "sequenceFiles/ or a sequence .pkl")
    return [str(p)]
  if not p.is_dir():
    raise Pw3dError.at(p, "no such file or directory, expected the 3DPW root (holding "
                       "sequenceFiles/), a sequenceFiles/<split> directory or a sequence .pkl")
  for candidate in (p / "sequenceFiles" / split, p / split, p):
    files = sorted(str(f) for f in candidate.glob("*.pkl")) if candidate.is_dir() else []
    if files:
      return files
  raise Pw3dError.at(p, f"no 3DPW sequence files, expected {p / 'sequenceFiles' / split}/*.pkl (or "
                     "a directory of .pkl files)")


@functools.partial(jax.jit, static_argnames=("with_vertices",))
def _smpl_points(model: body.BodyModel, pose, betas, with_vertices: bool):
  """Pelvis-centred joints (B, 24, 3) and, if asked, vertices (B, V, 3)."""
  if not with_vertices:
    joints = body.keypoints(model, pose, betas, None, "smpl24")
    return joints - joints[..., :1, :], None
  out = body.forward(model, pose, betas)
  pelvis = out.joints[..., :1, :]
  return out.joints - pelvis, out.vertices - pelvis


def smpl_points(model: body.BodyModel, pose: np.ndarray, betas: np.ndarray,
                with_vertices: bool = False, chunk: int = _CHUNK):
  """:func:`_smpl_points` over a large array in fixed-size jitted chunks (NumPy in and out)."""
  joints, verts = [], []
  n = pose.shape[0]
  # Padded to a power of two (at most ``chunk``), so that few shapes are ever compiled.
  size = min(chunk, 1 << max(3, int(np.ceil(np.log2(max(n, 1))))))
  for start in range(0, n, size):
    stop = min(start + size, n)
    pad = size - (stop - start)
    p = np.pad(pose[start:stop], ((0, pad), (0, 0)), mode="edge")
    b = np.pad(betas[start:stop], ((0, pad), (0, 0)), mode="edge")
    # Without its name (static, a file path), male and female models share compiled programs.
    j, v = jax.device_get(_smpl_points(model.replace(name=""), p.astype(np.float32),
                                       b.astype(np.float32), with_vertices))
    joints.append(j[:stop - start])
    if with_vertices:
      verts.append(v[:stop - start])
  empty = np.zeros((0, 24, 3), np.float32)
  return (np.concatenate(joints) if joints else empty,
          (np.concatenate(verts) if verts else None) if with_vertices else None)


def load_models(genders, directory: str | os.PathLike | None = None) -> dict:
  """{gender: BodyModel} for the given genders, from the user's SMPL files (10 betas)."""
  models = {}
  for gender in sorted(set(genders)):
    path = model_path(gender, directory)
    models[gender] = body.load_model(path, num_betas=NUM_BETAS)
  return models


def _ground_truth(models: dict, gender: np.ndarray, pose: np.ndarray, betas: np.ndarray,
                  with_vertices: bool):
  """Pelvis-centred joints (N, 24, 3) and, if asked, vertices (N, V, 3) of each row's gendered
  model (else None)."""
  joints = np.zeros((pose.shape[0], 24, 3), np.float32)
  vertices = None
  for g in sorted(set(gender)):
    idx = np.flatnonzero(gender == g)
    j, v = smpl_points(models[g], pose[idx], betas[idx], with_vertices)
    joints[idx] = j
    if with_vertices:
      if vertices is None:
        vertices = np.zeros((pose.shape[0],) + v.shape[1:], np.float32)
      if v.shape[1:] != vertices.shape[1:]:
        raise Pw3dError(f"the male and female SMPL models have different vertex counts "
                        f"({vertices.shape[1]} and {v.shape[1]}), expected the same mesh")
      vertices[idx] = v
  return joints, vertices


def load(path: str | os.PathLike, split: str = "test", smpl_dir: str | os.PathLike | None = None,
         with_vertices: bool = False, models: dict | None = None) -> Pw3dData:
  """Reads a 3DPW split and computes its ground truth with the gendered SMPL models.

  Args:
    path: the 3DPW root (holding sequenceFiles/), sequenceFiles/, a split directory or one .pkl.
    split: "train", "validation" or "test" (used when ``path`` is a directory above the split).
    smpl_dir: the directory of SMPL_MALE/SMPL_FEMALE (see :func:`model_path`); default
      $LGD_JAX_SMPL_DIR or third_party/smpl.
    with_vertices: also return the (N, 6890, 3) ground-truth meshes (large: 80 KB per frame).
    models: optional {gender: BodyModel} to use instead of the files (e.g. already loaded).

  Returns:
    A :class:`Pw3dData`.

  Raises:
    Pw3dError: a missing or malformed file, or a missing SMPL model (the message says which file,
      which key and what was expected, or what to download and where to put it).
    ModelFileError: an SMPL file that exists but cannot be read.
  """
  files = sequence_files(path, split)
  parts = [read_sequence(f) for f in files]
  parts = [p for p in parts if p["pose"].shape[0]]
  if not parts:
    raise Pw3dError.at(path, "no valid frames (campose_valid is false everywhere), expected at "
                       "least one frame with an aligned camera pose")
  gender = np.concatenate([p["gender"] for p in parts])
  if models is None:
    models = load_models(gender, smpl_dir)
  missing = sorted(set(gender) - set(models))
  if missing:
    raise Pw3dError(f"{path}: no body model given for gender {missing[0]}")
  sources = {g: models[g].name for g in sorted(set(gender))}
  pose = np.concatenate([p["pose"] for p in parts])
  pose[:, :3] = Rotation.from_matrix(CAMERA_TO_WORLD @ Rotation.from_rotvec(
      pose[:, :3]).as_matrix()).as_rotvec()
  betas = np.concatenate([p["betas"] for p in parts])
  joints, vertices = _ground_truth(models, gender, pose, betas, with_vertices)
  joint_positions = None
  if all(p["joint_positions"] is not None for p in parts):
    jp = CAMERA_TO_WORLD @ np.concatenate([p["joint_positions"] for p in parts])[..., None]
    jp = jp[..., 0]
    joint_positions = (jp - jp[:, :1]).astype(np.float32)
  intrinsics = None
  if all(p["intrinsics"] is not None for p in parts):
    intrinsics = np.concatenate([np.tile(p["intrinsics"], (p["pose"].shape[0], 1, 1))
                                 for p in parts]).astype(np.float32)
  return Pw3dData(
      kp2d=np.concatenate([p["kp2d"] for p in parts]).astype(np.float32),
      conf=np.concatenate([p["conf"] for p in parts]).astype(np.float32),
      pose=pose.astype(np.float32), betas=betas.astype(np.float32), gender=gender,
      joints=joints, vertices=vertices, joint_positions=joint_positions, intrinsics=intrinsics,
      sequence=np.concatenate([np.full(p["pose"].shape[0], p["sequence"]) for p in parts]),
      frame=np.concatenate([p["frame"] for p in parts]),
      actor=np.concatenate([p["actor"] for p in parts]),
      files=tuple(files), models=sources,
      body_models={g: models[g] for g in sorted(set(gender))})
