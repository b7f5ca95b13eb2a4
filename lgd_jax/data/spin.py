"""Human3.6M and MPI-INF-3DHP in SPIN's preprocessed ``.npz`` layout (Kolotouros et al., 2019).

SPIN's ``datasets/preprocess/{h36m,mpi_inf_3dhp}.py`` write one ``.npz`` per evaluation set
(``h36m_valid_protocol1.npz``, ``h36m_valid_protocol2.npz``, ``mpi_inf_3dhp_valid.npz`` or
``mpi_inf_3dhp_test.npz``) with these keys, N samples:

    imgname   (N,)         image path (Human3.6M: ``images/S9_Walking.60457274_000001.jpg``)
    center    (N, 2)       bounding-box centre, pixels
    scale     (N,)         bounding-box size / 200
    part      (N, 24, 3)   2D keypoints in SPIN's 24-joint order: x, y (pixels), visibility
    S         (N, 24, 4)   3D joints, camera frame, metres, root-centred, plus visibility
    pose, shape, has_smpl  optional SMPL fits

Human3.6M's files carry no ``part`` (SPIN evaluates from images): the 2D input is then the
projection of ``S`` through a nominal pinhole camera :data:`NOMINAL_DEPTH_M` in front of the root
(after LGD's unit-box normalisation only the perspective of that depth remains). The 3D joints are
returned in the frame our fits predict in, diag(1, -1, -1) times the camera frame (see
:mod:`lgd_jax.data.pw3d`), centred on the pelvis.

The evaluation protocols (SPIN's ``eval.py``): Human3.6M compares 14 joints, the ground truth as
``S[J24_TO_J14]`` and the prediction as ``J_regressor_h36m @ vertices`` by ``H36M_TO_J14``, each
centred on its pelvis; MPI-INF-3DHP likewise 17 joints with ``J24_TO_J17`` and ``H36M_TO_J17``.
Protocol 1 of Human3.6M uses every camera, protocol 2 only camera 60457274 (the p2 file already
holds only that camera; :func:`load` filters a p1 file by ``imgname`` if given one).

Every problem with a file raises :class:`SpinDataError` with a one-line message naming the file, the
key and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from lgd_jax.body.keypoint_sets import H36M_TO_J14
from lgd_jax.errors import UserError

# SPIN's 24 ground-truth joints (constants.JOINT_NAMES[25:]), under our keypoint names.
SPIN24_NAMES = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck", "head_top", "pelvis", "thorax", "spine", "jaw", "head", "nose", "left_eye",
    "right_eye", "left_ear", "right_ear")
PELVIS = SPIN24_NAMES.index("pelvis")
# SPIN's joint selectors (constants.py).
H36M_TO_J17 = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9)
J24_TO_J17 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17)
J24_TO_J14 = J24_TO_J17[:14]
assert H36M_TO_J17[:14] == H36M_TO_J14

DATASETS = ("h36m-p1", "h36m-p2", "mpi-inf-3dhp")
H36M_P2_CAMERA = "60457274"
# The nominal camera that renders S when a file has no 2D keypoints: Human3.6M's focal length
# (about 1145 px) and a typical subject distance.
NOMINAL_FOCAL_PX = 1145.0
NOMINAL_DEPTH_M = 5.0
CAMERA_TO_WORLD = np.diag([1.0, -1.0, -1.0])


class SpinDataError(UserError):
  """A SPIN-format .npz that cannot be used; the message is one line naming file and key."""


@dataclasses.dataclass(frozen=True)
class SpinData:
  """One SPIN evaluation file.

  Attributes:
    kp2d: (N, 24, 2) 2D keypoints in SPIN's order (:data:`SPIN24_NAMES`), pixels.
    conf: (N, 24) their visibility (0 or 1).
    joints: (N, 24, 3) 3D joints in our frame (diag(1, -1, -1) x camera frame), metres, centred
      on the pelvis; rows with ``joints_visible`` 0 are meaningless.
    joints_visible: (N, 24) the visibility column of ``S``.
    imgname: (N,) image names, or None if the file has none.
    keypoints_source: "part" or "S projected" (files without ``part``).
    path: the file.
    dataset: "h36m-p1", "h36m-p2", "mpi-inf-3dhp" or None.
    note: what :func:`load` changed (e.g. frames filtered to one camera), or "".
  """

  kp2d: np.ndarray
  conf: np.ndarray
  joints: np.ndarray
  joints_visible: np.ndarray
  imgname: np.ndarray | None
  keypoints_source: str
  path: str
  dataset: str | None
  note: str = ""

  keypoint_names = SPIN24_NAMES

  def __len__(self) -> int:
    return self.kp2d.shape[0]


def _open(source: str):
  if not os.path.exists(source):
    raise SpinDataError.at(source, "no such file, expected SPIN's preprocessed .npz (e.g. "
                           "h36m_valid_protocol2.npz or mpi_inf_3dhp_valid.npz)")
  if os.path.isdir(source):
    raise SpinDataError.at(source, "is a directory, expected SPIN's preprocessed .npz file")
  try:
    archive = np.load(source, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise SpinDataError.at(source, f"cannot be read as an .npz archive ({type(e).__name__}: {e}), "
                           "expected SPIN's preprocessed .npz") from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise SpinDataError.at(source, "holds a single array, expected an .npz archive with keys "
                           "imgname, S, part, ...")
  return archive


def _read(archive, source: str, key: str, shape: tuple, what: str) -> np.ndarray:
  try:
    arr = archive[key]
  except KeyError:
    raise SpinDataError.at(source, f"missing key '{key}', expected {what} (keys present: "
                           f"{', '.join(sorted(archive.files))})") from None
  except Exception as e:  # noqa: BLE001  zip/zlib/format errors of a damaged member.
    raise SpinDataError.at(source, f"key '{key}' cannot be read ({type(e).__name__}: {e}), "
                           f"expected {what}") from None
  if arr.dtype.kind not in "iuf" or arr.ndim != len(shape) or any(
      s is not None and s != a for s, a in zip(shape, arr.shape)):
    raise SpinDataError.at(source, f"key '{key}' has shape {arr.shape} and dtype {arr.dtype}, "
                           f"expected {what}")
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)):
    raise SpinDataError.at(source, f"key '{key}' holds NaN or Inf, expected finite {what}")
  return arr


def _names(archive, source: str, n: int) -> np.ndarray | None:
  if "imgname" not in archive.files:
    return None
  try:
    names = archive["imgname"]
  except ValueError:  # an object array (pickled); the names are optional
    return None
  if names.shape != (n,):
    raise SpinDataError.at(source, f"key 'imgname' has shape {names.shape}, expected ({n},) like "
                           "'S'")
  return names.astype(str)


def project_nominal(joints_cam: np.ndarray) -> np.ndarray:
  """Root-centred camera-frame joints (..., J, 3) -> pixels (..., J, 2) seen by the nominal camera
  :data:`NOMINAL_DEPTH_M` in front of the root."""
  depth = joints_cam[..., 2:3] + NOMINAL_DEPTH_M
  return NOMINAL_FOCAL_PX * joints_cam[..., :2] / depth


def load(path: str | os.PathLike, dataset: str | None = None) -> SpinData:
  """Reads a SPIN evaluation ``.npz``.

  Args:
    path: the file.
    dataset: "h36m-p1", "h36m-p2", "mpi-inf-3dhp" or None. "h36m-p2" keeps only camera
      60457274's frames when ``imgname`` names other cameras too (a protocol-1 file).

  Returns:
    A :class:`SpinData`.

  Raises:
    SpinDataError: missing file or key, wrong shape, NaN, no frame of the protocol's camera.
  """
  source = os.fspath(path)
  if dataset is not None and dataset not in DATASETS:
    raise SpinDataError(f"unknown SPIN data set {dataset!r}, expected one of {DATASETS}")
  with _open(source) as archive:
    what = "(N, 24, 4) 3D joints in metres plus visibility"
    s = _read(archive, source, "S", (None, 24, None), what)
    width = s.shape[-1]
    if width not in (3, 4):
      raise SpinDataError.at(source, f"key 'S' has shape {s.shape}, expected {what}")
    n = s.shape[0]
    part = None
    if "part" in archive.files:
      part = _read(archive, source, "part", (n, 24, 3),
                   f"({n}, 24, 3) 2D keypoints x, y, visibility")
    names = _names(archive, source, n)
  visible = s[..., 3] if width == 4 else np.ones(s.shape[:2])
  cam = s[..., :3] - s[:, PELVIS:PELVIS + 1, :3]
  if part is not None and np.any(part[..., 2] > 0):
    kp2d, conf, kp_source = part[..., :2], part[..., 2], "part"
  else:
    kp2d, conf, kp_source = project_nominal(cam), visible, "S projected"
  if not np.any(visible[:, PELVIS] > 0) and n:
    raise SpinDataError.at(source, "key 'S' has no visible pelvis (joint 14), expected "
                           "root-centred 3D joints as SPIN writes them")
  joints = cam @ CAMERA_TO_WORLD.T
  keep, note = np.arange(n), ""
  if dataset == "h36m-p2" and names is not None:
    on_camera = np.array([H36M_P2_CAMERA in name for name in names], bool)
    if not on_camera.any():
      raise SpinDataError.at(source, f"key 'imgname' names no frame of camera {H36M_P2_CAMERA}, "
                             "expected Human3.6M protocol 2 (h36m_valid_protocol2.npz)")
    if not on_camera.all():
      keep = np.flatnonzero(on_camera)
      note = f"kept the {keep.size} of {n} frames of camera {H36M_P2_CAMERA} (protocol 2)"
  return SpinData(
      kp2d=kp2d[keep].astype(np.float32), conf=conf[keep].astype(np.float32),
      joints=joints[keep].astype(np.float32), joints_visible=visible[keep].astype(np.float32),
      imgname=None if names is None else names[keep], keypoints_source=kp_source, path=source,
      dataset=dataset, note=note)


def ground_truth(data: SpinData, dataset: str) -> np.ndarray:
  """The protocol's ground-truth joints: (N, 14, 3) for Human3.6M, (N, 17, 3) for MPI-INF-3DHP,
  our frame, pelvis-centred, metres."""
  select = J24_TO_J17 if dataset == "mpi-inf-3dhp" else J24_TO_J14
  missing = np.flatnonzero(~np.all(data.joints_visible[:, select] > 0, axis=0))
  if missing.size:
    raise SpinDataError.at(data.path, f"key 'S' has joint {select[int(missing[0])]} "
                           f"({SPIN24_NAMES[select[int(missing[0])]]}) invisible in some frames, "
                           f"expected all {len(select)} joints of the {dataset} protocol in every "
                           "frame")
  return data.joints[:, select]
