"""Fitting SMPL-layout bodies to real 2D detections with a trained learned optimiser.

    from lgd_jax import detections, evaluation
    restored = evaluation.restore("runs/demo")
    summary = detections.fit_file(restored, "openpose_json/", "fits/", images="frames/")

Inputs (:func:`load`):

* OpenPose JSON, one file per frame (``<name>_keypoints.json``; the frame is ``<name>``), or a
  directory of them (sorted by name): ``{"version": ..., "people": [{"pose_keypoints_2d":
  [x, y, c, ...]}, ...]}`` with 25 (BODY_25) or 18 (COCO-18) joints, told apart by the length.
* A COCO-format keypoint results file, a JSON list of ``{"image_id", "category_id",
  "keypoints": [51 numbers, COCO-17 x, y, score], "score"}``, or a full COCO annotation file
  (``"annotations"``, and ``"images"`` for file names and sizes; visibility flags v > 0 count as
  confidence 1, so labelled-but-occluded joints are used).

Every source format is mapped by joint NAME to the checkpoint's keypoint set. Names absent from the
source get confidence 0; "neck" (absent from COCO-17) is the shoulders' midpoint and "mid_hip" /
"pelvis" the hips' midpoint when both are confident (confidence: the smaller of the two), else 0.
Confidences go through :func:`lgd_jax.objective.observe`, the input function of training and
the benchmark protocols, with the official code's test-time rule (its ``validation_step``): a
score >= :data:`lgd_jax.camera.CONFIDENCE_THRESHOLD` (0.01) becomes 1 and anything lower 0, so
the objective's weights and the network's input are the {0, 1} values it was trained on, whatever
the detector's score scale; a missing joint is placed at 0.5 with weight 0 and cannot pull the
fit. ``confidence="raw"`` (``--confidence raw``) keeps the scores as weights instead.

Fitting (:func:`fit_batch`): all persons of all frames are stacked and fitted in fixed-size
batches (the last one padded), one compiled program for the whole file. The learned fit predicts
pose and shape from unit-box-normalised keypoints, with no camera (``num_steps`` learned steps,
or with ``until_converged`` until each person's objective stops changing). To place the body in
the image, a perspective camera is assumed and the translation solved in closed form (below);
then, by default, :data:`DEFAULT_REFINE_STEPS` iterations of a classical refinement in the
image's camera (:mod:`lgd_jax.refine`: robust re-projection, anchored at the learned fit, pose
and shape priors) make the 2D fit tight (``refine_steps=0``, ``--refine-steps 0``, skips it).
The summary records each person's learned and refinement iterations and final error.

* focal length: ``focal_length`` if given, else sqrt(W² + H²) pixels for an image of W × H (the
  estimate CLIFF, Li et al. ECCV 2022, uses for full frames: a diagonal field of view of about
  53°, typical of consumer cameras); principal point at the image centre;
* translation: weighted linear least squares on the confident joints, SPIN's
  ``estimate_translation_np``: from x = f X / Z + c, each joint gives the two linear equations
  t_a - x̂_a t_z = x̂_a Z - X_a (a = x, y; x̂ = (x - c) / f) weighted by its confidence;
* image size: read from the image (``images=DIR``, matched by file stem; PNG or JPEG, read with
  Pillow); else the COCO file's ``images`` entry; else a canvas: the box from min(0, lowest
  keypoint - margin) to the highest keypoint + margin on each axis, margin = 10 % of the keypoints'
  larger extent (keypoints are pixel coordinates of an image whose corner is the origin).

Outputs (:func:`fit_file`), per person ``<frame>_p<k>`` (k = the person's index in its frame):

* ``.npz`` with smplx's names: ``global_orient`` (3), ``body_pose`` (69), ``betas`` (B),
  ``transl`` (3); and ``focal_length`` (), ``camera_center`` (2), ``image_size`` (2),
  ``keypoints_2d`` (K, 2, the input in pixels), ``confidence`` (K), ``keypoint_names`` (K),
  ``keypoints_2d_fit`` (K, 2, the fit projected, pixels), ``reproj_px`` (mean pixel distance over
  the confident joints).
* ``.obj``: the mesh (1-based faces) in the camera frame.
* ``.png``: the projected mesh with the detected (green) and fitted (red) keypoints over the
  image or a blank canvas.

Coordinates: the parameters are expressed in the camera frame of OpenCV (and of smplx's usual
use): x to the right, y down, z forward, metres; ``smplx.SMPL(...)(global_orient=..., body_pose=...,
betas=..., transl=...)`` (each with a leading batch axis of 1) gives vertices V_cam, and
x_pixel = f · V_cam[:2] / V_cam[2] + camera_center. For OpenGL-style renderers (pyrender) flip
the y and z axes. The body model of the checkpoint (the free built-in model unless its config names
an SMPL file) must be used with these parameters.

``summary.json`` lists every fit (frame, person, source file, reproj_px, the normalised objective
reproj, the number of confident joints, the files), every skipped frame or person with the reason,
totals and wall times. An existing ``summary.json`` or output file is never overwritten unless
``overwrite=True``; every file is written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import body, camera, lgd, objective, parallel, refine, rotations
from lgd_jax.body.keypoint_sets import BODY25_NAMES, COCO17_NAMES, COCO18_NAMES
from lgd_jax.numerics import full_precision
from lgd_jax.objective import Problem

# Joints per person of each source format, and their names in order.
SOURCE_NAMES = {"openpose_body25": BODY25_NAMES, "openpose_coco18": COCO18_NAMES,
                "coco17": COCO17_NAMES}
_OPENPOSE_BY_JOINTS = {25: "openpose_body25", 18: "openpose_coco18"}
_LABELS = {"openpose_body25": "BODY_25", "openpose_coco18": "COCO-18", "coco17": "COCO-17"}
# Keypoints that a source without them gets as the midpoint of two confident joints.
_MIDPOINTS = {"neck": ("left_shoulder", "right_shoulder"), "mid_hip": ("left_hip", "right_hip"),
              "pelvis": ("left_hip", "right_hip")}
_ALIASES = {"pelvis": "mid_hip"}  # target name -> source name with the same meaning
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_JOINTS = 4  # persons with fewer confident joints are skipped
MIN_EXTENT_PX = 1.0  # and those whose confident joints (nearly) coincide
CANVAS_MARGIN = 0.1  # of the keypoints' larger extent, around the canvas without an image
DEFAULT_TOL = 1e-4  # the stopping rule's relative change of the objective
# Tight 2D fits by default: the learned steps, then this many iterations of the classical
# refinement in the image's camera (lgd_jax/refine.py); measured in tools/detection_benchmark.py.
DEFAULT_REFINE_STEPS = refine.DEFAULT_STEPS
SMPLIFY_ORIENT_STEPS = 30  # the SMPLify-style baseline's orientation stage (start="zero")
PNG_MAX_SIDE_PX = 800


class DetectionError(ValueError):
  """A keypoint file, an image or an output directory that cannot be used; the message is one
  complete line naming the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class Detections:
  """2D detections of a file or directory, in the source's joint order.

  Attributes:
    path: the file or directory read.
    format: "openpose_body25", "openpose_coco18" or "coco17".
    names: (J,) joint names of the source format.
    frames: every frame in order, empty ones included (OpenPose: file stem without
      "_keypoints"; COCO: the image's file stem, else its image id).
    frame_files: the keypoint file each frame came from.
    image_sizes: per frame (W, H) in pixels when the source says it (COCO "images"), else None.
    image_ids: per frame the COCO image id, else None.
    person_frame: (P,) index into ``frames`` of every person.
    person_index: (P,) index of every person within its frame.
    keypoints: (P, J, 2) pixel coordinates.
    conf: (P, J) confidences (>= 0).
  """

  path: str
  format: str
  names: tuple[str, ...]
  frames: tuple[str, ...]
  frame_files: tuple[str, ...]
  image_sizes: tuple[tuple[int, int] | None, ...]
  image_ids: tuple[int | None, ...]
  person_frame: np.ndarray
  person_index: np.ndarray
  keypoints: np.ndarray
  conf: np.ndarray

  @property
  def num_persons(self) -> int:
    return int(self.keypoints.shape[0])

  def persons_in(self, frame: int) -> np.ndarray:
    """Indices of the persons of frame ``frame``."""
    return np.flatnonzero(self.person_frame == frame)


# ---------------------------------------------------------------------------------------------
# Readers.


def _read_json(path: Path):
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DetectionError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column "
                         f"{e.colno}); expected an OpenPose or COCO keypoint file") from None
  except UnicodeDecodeError:
    raise DetectionError(f"{path}: not a UTF-8 text file; expected an OpenPose or COCO keypoint "
                         "JSON file") from None
  except OSError as e:
    raise DetectionError(f"{path}: cannot read ({e.strerror})") from None


def _triples(values, path: Path, where: str, formats: dict[int, str]):
  """Checks a flat [x, y, c, ...] list; returns (format, keypoints (J, 2), conf (J,))."""
  expected = " or ".join(f"{3 * n} values ({n} {_LABELS[f]} joints × x, y, confidence)"
                         for n, f in formats.items())
  if not isinstance(values, list) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    raise DetectionError(f"{path}: {where} is not a flat list of numbers; expected {expected}")
  n = len(values)
  if n % 3:
    raise DetectionError(f"{path}: {where} has {n} values, not a multiple of 3; expected "
                         f"{expected}")
  if n // 3 not in formats:
    raise DetectionError(f"{path}: {where} has {n // 3} joints ({n} values); expected {expected}")
  fmt = formats[n // 3]
  arr = np.asarray(values, np.float64).reshape(-1, 3)
  bad = np.flatnonzero(~np.isfinite(arr).all(1))
  if bad.size:
    j = int(bad[0])
    raise DetectionError(f"{path}: {where} has NaN or infinite values at joint {j} "
                         f"({SOURCE_NAMES[fmt][j]}); expected finite numbers")
  neg = np.flatnonzero(arr[:, 2] < 0)
  if neg.size:
    j = int(neg[0])
    raise DetectionError(f"{path}: {where} has confidence {arr[j, 2]:g} at joint {j} "
                         f"({SOURCE_NAMES[fmt][j]}); expected confidences >= 0")
  return fmt, arr[:, :2], arr[:, 2]


def _openpose_frame(path: Path) -> str:
  stem = path.stem
  return stem[:-len("_keypoints")] if stem.endswith("_keypoints") and stem != "_keypoints" \
      else stem


def read_openpose(path: str | os.PathLike, data=None):
  """One OpenPose JSON file -> (format or None when empty, [(keypoints (J, 2), conf (J,))])."""
  path = Path(path)
  data = _read_json(path) if data is None else data
  if not isinstance(data, dict) or not isinstance(data.get("people"), list):
    raise DetectionError(f"{path}: no 'people' list; expected OpenPose JSON "
                         '{"version": ..., "people": [{"pose_keypoints_2d": [x, y, c, ...]}]}')
  fmt, persons = None, []
  for k, person in enumerate(data["people"]):
    key = next((key for key in ("pose_keypoints_2d", "pose_keypoints")
                if isinstance(person, dict) and key in person), None)
    if key is None:
      raise DetectionError(f"{path}: people[{k}] has no 'pose_keypoints_2d'; expected a list of "
                           "x, y, confidence triples per person")
    f, kp, conf = _triples(person[key], path, f"people[{k}].{key}", _OPENPOSE_BY_JOINTS)
    if fmt is not None and f != fmt:
      raise DetectionError(f"{path}: people[{k}] is {_LABELS[f]} but people[0] is "
                           f"{_LABELS[fmt]}; expected one keypoint format per file")
    fmt = f
    persons.append((kp, conf))
  return fmt, persons


def _coco_entry(entry, path: Path, where: str, flags: bool):
  if not isinstance(entry, dict) or "keypoints" not in entry or "image_id" not in entry:
    raise DetectionError(f"{path}: {where} has no 'image_id' and 'keypoints'; expected "
                         '{"image_id": ..., "category_id": 1, "keypoints": [51 numbers]}')
  _, kp, conf = _triples(entry["keypoints"], path, f"{where}.keypoints", {17: "coco17"})
  if flags:  # annotation visibility flags: 0 = not labelled, 1 = occluded, 2 = visible
    conf = (conf > 0).astype(np.float64)
  image_id = entry["image_id"]
  if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
    raise DetectionError(f"{path}: {where}.image_id is {image_id!r}; expected an integer or string")
  return image_id, kp, conf


def read_coco(path: str | os.PathLike, data=None) -> Detections:
  """A COCO keypoint results list or a COCO annotation file (COCO-17 keypoints)."""
  path = Path(path)
  data = _read_json(path) if data is None else data
  images: dict = {}
  if isinstance(data, list):
    entries = [_coco_entry(e, path, f"entry {i}", flags=False) for i, e in enumerate(data)]
  elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
    entries = [_coco_entry(e, path, f"annotations[{i}]", flags=True)
               for i, e in enumerate(data["annotations"])]
    for i, im in enumerate(data.get("images") or []):
      if not isinstance(im, dict) or "id" not in im:
        raise DetectionError(f"{path}: images[{i}] has no 'id'; expected "
                             '{"id": ..., "file_name": ..., "width": ..., "height": ...}')
      images[im["id"]] = im
  else:
    raise DetectionError(f"{path}: neither a COCO results list nor a COCO annotation file with "
                         "'annotations'; expected [{\"image_id\", \"keypoints\", ...}, ...]")
  order = list(images) + sorted({e[0] for e in entries if e[0] not in images}, key=str)
  frames, sizes, index = [], [], {}
  for image_id in order:
    im = images.get(image_id, {})
    name = Path(str(im["file_name"])).stem if im.get("file_name") else str(image_id)
    size = None
    w, h = im.get("width"), im.get("height")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
      size = (int(w), int(h))
    index[image_id] = len(frames)
    frames.append(name)
    sizes.append(size)
  person_frame, person_index, counts = [], [], {}
  for image_id, _, _ in entries:
    f = index[image_id]
    person_frame.append(f)
    person_index.append(counts.get(f, 0))
    counts[f] = counts.get(f, 0) + 1
  kp = np.stack([e[1] for e in entries]) if entries else np.zeros((0, 17, 2))
  conf = np.stack([e[2] for e in entries]) if entries else np.zeros((0, 17))
  return Detections(str(path), "coco17", COCO17_NAMES, tuple(frames), (str(path),) * len(frames),
                    tuple(sizes), tuple(int(i) if isinstance(i, int) else None for i in order),
                    np.asarray(person_frame, np.int64), np.asarray(person_index, np.int64),
                    kp.astype(np.float32), conf.astype(np.float32))


def _openpose_detections(path: str, files: Sequence[tuple[Path, object]]) -> Detections:
  fmt, fmt_file = None, None
  frames, frame_files, person_frame, person_index, kps, confs = [], [], [], [], [], []
  for f, data in files:
    file_fmt, persons = read_openpose(f, data)
    if file_fmt is not None:
      if fmt is not None and file_fmt != fmt:
        raise DetectionError(f"{f}: {_LABELS[file_fmt]} keypoints, but {fmt_file} has "
                             f"{_LABELS[fmt]}; expected one keypoint format per directory")
      fmt, fmt_file = file_fmt, f
    for k, (kp, conf) in enumerate(persons):
      person_frame.append(len(frames))
      person_index.append(k)
      kps.append(kp)
      confs.append(conf)
    frames.append(_openpose_frame(f))
    frame_files.append(str(f))
  fmt = fmt or "openpose_body25"
  j = len(SOURCE_NAMES[fmt])
  return Detections(
      path, fmt, SOURCE_NAMES[fmt], tuple(frames), tuple(frame_files), (None,) * len(frames),
      (None,) * len(frames), np.asarray(person_frame, np.int64), np.asarray(person_index, np.int64),
      (np.stack(kps) if kps else np.zeros((0, j, 2))).astype(np.float32),
      (np.stack(confs) if confs else np.zeros((0, j))).astype(np.float32))


def load(path: str | os.PathLike) -> Detections:
  """Reads an OpenPose JSON file, a directory of them, or a COCO keypoint file.

  Raises:
    DetectionError: one line naming the file and what was expected.
  """
  path = Path(path)
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    if not files:
      raise DetectionError(f"{path}: no .json keypoint files in this directory; expected OpenPose "
                           "<name>_keypoints.json files")
    return _openpose_detections(str(path), [(f, _read_json(f)) for f in files])
  if not path.is_file():
    raise DetectionError(f"{path}: no such file or directory; expected OpenPose JSON or a COCO "
                         "keypoint file")
  data = _read_json(path)
  if isinstance(data, dict) and "people" in data:
    return _openpose_detections(str(path), [(path, data)])
  if isinstance(data, list) or (isinstance(data, dict) and "annotations" in data):
    return read_coco(path, data)
  raise DetectionError(f"{path}: neither OpenPose JSON (a 'people' list) nor a COCO keypoint file "
                       "(a results list or 'annotations'); expected one of them")


def to_keypoint_set(det: Detections, kpset: str) -> tuple[np.ndarray, np.ndarray]:
  """Maps detections by joint name to a keypoint set, missing joints at confidence 0.

  Returns:
    keypoints (P, K, 2) pixels (0 where missing) and conf (P, K), confidences below the
    official threshold set to 0.
  """
  target = body.get_keypoint_set(kpset).names
  src = {n: i for i, n in enumerate(det.names)}
  conf_src = np.where(det.conf >= camera.CONFIDENCE_THRESHOLD, det.conf, 0.0)
  p = det.num_persons
  kp = np.zeros((p, len(target), 2), np.float32)
  conf = np.zeros((p, len(target)), np.float32)
  mapped = 0
  for k, name in enumerate(target):
    name_src = name if name in src else _ALIASES.get(name)
    if name_src in src:
      kp[:, k] = det.keypoints[:, src[name_src]]
      conf[:, k] = conf_src[:, src[name_src]]
      mapped += 1
    elif name in _MIDPOINTS and all(n in src for n in _MIDPOINTS[name]):
      a, b = (src[n] for n in _MIDPOINTS[name])
      kp[:, k] = 0.5 * (det.keypoints[:, a] + det.keypoints[:, b])
      conf[:, k] = np.minimum(conf_src[:, a], conf_src[:, b])
      mapped += 1
  if mapped < MIN_JOINTS:
    raise DetectionError(f"{det.path}: its {_LABELS[det.format]} joints give only {mapped} of "
                         f"the checkpoint's {len(target)} {kpset} keypoints; expected at least "
                         f"{MIN_JOINTS}")
  kp = np.where(conf[..., None] > 0, kp, 0.0).astype(np.float32)
  return kp, conf


# ---------------------------------------------------------------------------------------------
# Camera and fitting (jitted, batched).


def default_focal(width, height):
  """sqrt(W² + H²) pixels (CLIFF's full-frame estimate)."""
  return np.sqrt(np.square(np.asarray(width, np.float64)) + np.square(np.asarray(height,
                                                                                  np.float64)))


def _translation_one(points, kp, w, focal, center):
  xn = (kp - center) / focal  # (K, 2)
  k = points.shape[0]
  eye = jnp.broadcast_to(jnp.eye(2, 3, dtype=points.dtype), (k, 2, 3))
  a = eye.at[:, :, 2].set(-xn).reshape(2 * k, 3)
  b = (xn * points[:, 2:3] - points[:, :2]).reshape(2 * k)
  aw = a * jnp.repeat(w, 2)[:, None]
  return jnp.linalg.solve(aw.T @ a, aw.T @ b)


@jax.jit
@full_precision
def estimate_translation(points: jnp.ndarray, keypoints: jnp.ndarray, weights: jnp.ndarray,
                         focal: jnp.ndarray, center: jnp.ndarray) -> jnp.ndarray:
  """The camera-frame translation t that best projects points + t onto the keypoints.

  Weighted linear least squares (SPIN's ``estimate_translation_np``): each joint gives
  t_a - x̂_a t_z = x̂_a Z - X_a for a = x, y with x̂ = (x - c) / f, weighted by its confidence.
  Exact for exact projections; needs at least two joints of non-zero weight.

  Args:
    points: (B, K, 3) points in the camera's orientation (x right, y down, z forward).
    keypoints: (B, K, 2) pixel coordinates.
    weights: (B, K) non-negative weights (0 = missing).
    focal: (B,) focal lengths in pixels.
    center: (B, 2) principal points in pixels.

  Returns:
    (B, 3) translations.
  """
  return jax.vmap(_translation_one)(points, keypoints, weights, focal, center)


class Placement(NamedTuple):
  """A fit placed in the camera frame (all batched over persons B).

  Attributes:
    global_orient: (B, 3) smplx's global orientation in the camera frame.
    body_pose: (B, 69).
    betas: (B, num_betas).
    transl: (B, 3) smplx's translation in the camera frame.
    cam_translation: (B, 3) t with X_cam = R · X_fit + t (R: the problem camera's rotation).
    keypoints_3d: (B, K, 3) camera-frame keypoints.
    keypoints_2d: (B, K, 2) their projections, pixels.
    reproj_px: (B,) mean pixel distance to the confident input keypoints.
    in_front: (B,) every keypoint has positive depth.
  """

  global_orient: jnp.ndarray
  body_pose: jnp.ndarray
  betas: jnp.ndarray
  transl: jnp.ndarray
  cam_translation: jnp.ndarray
  keypoints_3d: jnp.ndarray
  keypoints_2d: jnp.ndarray
  reproj_px: jnp.ndarray
  in_front: jnp.ndarray


@jax.jit
@full_precision
def place(problem: Problem, theta: jnp.ndarray, keypoints: jnp.ndarray, conf: jnp.ndarray,
          focal: jnp.ndarray, center: jnp.ndarray, keypoints_3d: jnp.ndarray | None = None,
          translation: jnp.ndarray | None = None) -> Placement:
  """Puts fitted parameters into a pinhole camera by solving for the translation.

  The fit lives in the problem's world frame, seen by the problem camera's rotation R (the
  official camera's diag(1, -1, -1)). The camera-frame body is X_cam = R X_fit + t, t from
  :func:`estimate_translation`; smplx's parameters of that body are R∘global_orient and
  transl = R (J_0 + transl_fit) - J_0 + t, J_0 the shape's rest root joint (smplx rotates about it).

  Args:
    problem: the fitting problem.
    theta: (B, P) fitted parameters.
    keypoints: (B, K, 2) detected keypoints, pixels.
    conf: (B, K) confidences (0 = missing).
    focal: (B,) focal lengths, pixels.
    center: (B, 2) principal points, pixels.
    keypoints_3d: optional (B, K, 3) ``objective.keypoints_3d(problem, theta)`` if known.
    translation: optional (B, 3) camera translation t to use instead of solving for it.
  """
  p = objective.split(problem, theta)
  rot = problem.camera.rotation
  if keypoints_3d is None:
    keypoints_3d = objective.keypoints_3d(problem, theta)
  points = keypoints_3d @ rot.T
  weights = jnp.where(conf >= camera.CONFIDENCE_THRESHOLD, conf, 0.0)
  t = estimate_translation(points, keypoints, weights, focal, center) if translation is None \
      else translation
  cam = points + t[:, None]
  pix = focal[:, None, None] * cam[..., :2] / cam[..., 2:3] + center[:, None]
  visible = weights > 0
  err = jnp.linalg.norm(pix - keypoints, axis=-1)
  reproj = jnp.sum(jnp.where(visible, err, 0.0), -1) / jnp.maximum(jnp.sum(visible, -1), 1)
  model = problem.model
  root = rotations.axis_angle_to_matrix(p.pose[:, :3])
  global_orient = rotations.matrix_to_axis_angle(rot @ root)
  j0 = model.j_template[0] + jnp.einsum("cb,nb->nc", model.j_shapedirs[0], p.betas)
  fit_transl = 0.0 if p.transl is None else p.transl
  transl = (j0 + fit_transl) @ rot.T - j0 + t
  return Placement(global_orient, p.pose[:, 3:], p.betas, transl, t, cam, pix, reproj,
                   jnp.all(cam[..., 2] > 0, -1))


def normalise_input(problem: Problem, keypoints: jnp.ndarray, conf: jnp.ndarray,
                    focal: jnp.ndarray, center: jnp.ndarray, confidence: str = "binary"):
  """Pixel keypoints (B, K, 2) and scores (B, K) to the fit's input (kp2d, weights) through
  :func:`lgd_jax.objective.observe`, the input function of training and the protocols: the
  official code's confidence rule and the unit box of the confident joints (or (x - c) / f when
  the problem fits a translation)."""
  return objective.observe(problem, keypoints, conf, focal[:, None], center, confidence)


class BatchFit(NamedTuple):
  """:func:`fit_batch`'s result.

  Attributes:
    placement: the fit placed in the camera (:class:`Placement`).
    reproj: (B,) the normalised objective after the learned steps.
    vertices: (B, V, 3) camera-frame meshes (empty unless asked for).
    learned_steps: (B,) learned iterations each person got (its stop with the stopping rule).
    refine_steps: () classical refinement iterations (0: none).
    reproj_px_learned: (B,) re-projection error in pixels before the refinement.
    weights: (B, K) the confidences the fit used (after the confidence rule).
  """

  placement: Placement
  reproj: jnp.ndarray
  vertices: jnp.ndarray
  learned_steps: jnp.ndarray
  refine_steps: jnp.ndarray
  reproj_px_learned: jnp.ndarray
  weights: jnp.ndarray


@functools.partial(jax.jit, static_argnames=("num_steps", "with_vertices", "confidence",
                                             "until_converged", "refine_steps", "start"))
def fit_batch(learner: lgd.Learner, variables, problem: Problem, keypoints: jnp.ndarray,
              conf: jnp.ndarray, focal: jnp.ndarray, center: jnp.ndarray, num_steps: int,
              with_vertices: bool = True, confidence: str = "binary",
              until_converged: bool = False, tol=DEFAULT_TOL, min_steps: int = 1,
              refine_steps: int = 0, prior=None,
              refine_weights: refine.RefineWeights = refine.DEFAULT_WEIGHTS,
              start: str = "learned") -> BatchFit:
  """Fits a batch of detections with the learned optimiser (inference mode) and places it.

  Args:
    learner, variables, problem: from :func:`lgd_jax.evaluation.restore`.
    keypoints: (B, K, 2) pixel keypoints in the problem's keypoint set.
    conf: (B, K) detector scores (0 = missing).
    focal: (B,) focal lengths, pixels.
    center: (B, 2) principal points, pixels.
    num_steps: learned update steps (static); with ``until_converged`` the most.
    with_vertices: also compute the camera-frame meshes (else ``vertices`` is empty).
    confidence: "binary" (the official rule) or "raw" (static).
    until_converged: stop each person's learned fit when its objective's relative change falls
      below ``tol`` (:func:`lgd_jax.lgd.fit_until_converged`, not before ``min_steps``).
    refine_steps: iterations of the classical refinement in the image's camera
      (:func:`lgd_jax.refine.refine`, static; 0 = none).
    prior: its pose prior (a :class:`lgd_jax.baselines.GMMPrior` or None).
    refine_weights: its constants.
    start: "learned" (the learned fit), or "zero": no learned step — the zero pose turned by
      SPIN's orientation stage (:func:`lgd_jax.baselines.smplify`'s stage 1, the best of 8
      turns), the start of the SMPLify-style baseline (static).
  """
  kp2d, w = normalise_input(problem, keypoints, conf, focal, center, confidence)
  if start == "zero":
    from lgd_jax import baselines
    traj = baselines.smplify(problem, kp2d, w, (SMPLIFY_ORIENT_STEPS, 0), pose_prior=prior)
    steps = jnp.zeros(keypoints.shape[:1], jnp.int32)
  elif until_converged:
    traj, stop = lgd.fit_until_converged(learner, variables, problem, kp2d, w, num_steps, tol,
                                         min_steps)
    steps = stop.steps
  else:
    traj, _ = lgd.fit(learner, variables, problem, kp2d, w, num_steps, train=False)
    steps = jnp.full(keypoints.shape[:1], num_steps, jnp.int32)
  theta = traj.theta[-1]
  placement = place(problem, theta, keypoints, w, focal, center, traj.kp3d[-1])
  learned_px = placement.reproj_px
  if refine_steps:
    theta, t, _ = refine.refine(problem, theta, placement.cam_translation, keypoints, w, focal,
                                center, refine_steps, prior, refine_weights)
    placement = place(problem, theta, keypoints, w, focal, center, translation=t)
  if with_vertices:
    pose = jnp.concatenate([placement.global_orient, placement.body_pose], -1)
    vertices = body.forward(problem.model, pose, placement.betas, placement.transl).vertices
  else:
    vertices = jnp.zeros(keypoints.shape[:1] + (0, 3), keypoints.dtype)
  return BatchFit(placement, traj.loss[-1], vertices, steps, jnp.int32(refine_steps), learned_px,
                  w)


# ---------------------------------------------------------------------------------------------
# Images and canvases.


def _image_index(images: str | os.PathLike | None) -> dict[str, Path]:
  if images is None:
    return {}
  root = Path(images)
  if not root.is_dir():
    raise DetectionError(f"{root}: not a directory; expected a directory of PNG or JPEG images")
  return {p.stem: p for p in sorted(root.iterdir())
          if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _find_image(index: dict[str, Path], frame: str, image_id: int | None) -> Path | None:
  if frame in index:
    return index[frame]
  if image_id is not None:  # COCO results: 000000397133.jpg for image_id 397133
    for stem, p in index.items():
      if stem.isdigit() and int(stem) == image_id:
        return p
  return None


def image_size(path: Path) -> tuple[int, int]:
  """(W, H) of an image file, read from its header."""
  try:
    from PIL import Image
    with Image.open(path) as im:
      return int(im.size[0]), int(im.size[1])
  except ImportError:
    return tuple(read_image(path).shape[1::-1])
  except Exception as e:  # Pillow raises several types for unreadable files
    raise DetectionError(f"{path}: cannot read the image ({type(e).__name__}); expected a PNG "
                         "or JPEG file") from None


def read_image(path: Path) -> np.ndarray:
  """(H, W, 3 or 4) pixels of a PNG or JPEG image."""
  try:
    try:
      from PIL import Image
      with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
    except ImportError:
      import matplotlib.image
      return matplotlib.image.imread(path)
  except Exception as e:
    raise DetectionError(f"{path}: cannot read the image ({type(e).__name__}); expected a PNG "
                         "or JPEG file") from None


def canvas(keypoints: np.ndarray, conf: np.ndarray, margin: float = CANVAS_MARGIN):
  """A blank canvas around the confident keypoints (..., K, 2): (x0, y0, W, H) in pixels.

  It spans min(0, lowest - m) to highest + m on each axis, m = ``margin`` times the larger
  extent of the keypoints (at least one pixel).
  """
  pts = keypoints[conf > 0].reshape(-1, 2)
  if not len(pts):
    return 0.0, 0.0, 1.0, 1.0
  lo, hi = pts.min(0), pts.max(0)
  m = margin * max(float(np.max(hi - lo)), 1.0)
  lo = np.minimum(0.0, np.floor(lo - m))
  hi = np.ceil(hi + m)
  return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


# ---------------------------------------------------------------------------------------------
# Writing.


def _atomic(path: Path, write: Callable) -> None:
  tmp = path.with_name(path.name + ".tmp")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def _save_npz(path: Path, arrays: dict) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  _atomic(path, write)


def obj_text(vertices: np.ndarray, faces: np.ndarray) -> str:
  """A Wavefront OBJ of a triangle mesh (faces 0-based in, 1-based out)."""
  # One %-format over the flat arrays: about 10x faster than np.savetxt's loop over rows.
  v = np.asarray(vertices, np.float64).reshape(-1, 3)
  f = np.asarray(faces, np.int64).reshape(-1, 3) + 1
  return ("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel().tolist()) + (
      "f %d %d %d\n" * len(f)) % tuple(f.ravel().tolist())


def _save_text(path: Path, text: str) -> None:
  _atomic(path, lambda tmp: tmp.write_text(text))


def draw_fit(path: Path, vertices: np.ndarray, faces: np.ndarray, focal: float, center,
             box, keypoints: np.ndarray, conf: np.ndarray, fitted: np.ndarray,
             image: np.ndarray | None = None, title: str = "") -> None:
  """The projected mesh, the detected (green) and fitted (red) keypoints, over the image
  (placed at [0, W] × [0, H]) or a blank canvas ``box`` = (x0, y0, W, H); a canvas grows to
  show the whole projected mesh (by at most its own size on each side)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from lgd_jax import render
  x0, y0, w, h = box
  if image is None:
    v = np.asarray(vertices, np.float64)
    v = v[v[:, 2] > 1e-6]
    if len(v):
      proj = focal * v[:, :2] / v[:, 2:3] + np.asarray(center, np.float64)
      lo = np.maximum(np.minimum([x0, y0], proj.min(0)), [x0 - w, y0 - h])
      hi = np.minimum(np.maximum([x0 + w, y0 + h], proj.max(0)), [x0 + 2 * w, y0 + 2 * h])
      x0, y0, w, h = lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]
  scale = PNG_MAX_SIDE_PX / max(w, h)
  fig = plt.figure(figsize=(max(w * scale, 64) / 100, max(h * scale, 64) / 100), dpi=100)
  ax = fig.add_axes((0, 0, 1, 1))
  if image is not None:
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0), interpolation="bilinear")
  render.draw_mesh_camera(ax, vertices, faces, focal, center, alpha=0.65, zorder=2)
  vis = conf > 0
  for a, b in zip(keypoints[vis], fitted[vis]):
    ax.plot([a[0], b[0]], [a[1], b[1]], color="yellow", lw=0.8, zorder=3)
  ax.scatter(*keypoints[vis].T, s=14, color="limegreen", edgecolors="k", linewidths=0.4,
             zorder=4, label="detected")
  ax.scatter(*fitted[vis].T, s=16, color="red", marker="x", linewidths=1.0, zorder=5,
             label="fitted")
  ax.set_xlim(x0, x0 + w)
  ax.set_ylim(y0 + h, y0)
  ax.set_axis_off()
  if title:
    ax.text(0.01, 0.99, title, transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.7, lw=0))
  ax.legend(loc="lower right", fontsize=7)

  def write(tmp):
    fig.savefig(tmp, format="png", dpi=100, facecolor="white")
  try:
    _atomic(path, write)
  finally:
    plt.close(fig)


def _safe_name(name: str) -> str:
  return re.sub(r"[^\w.-]", "_", name) or "frame"


def _frame_stems(frames: Sequence[str]) -> list[str]:
  """File-name-safe, unique stems of the frames."""
  seen, out = {}, []
  for f in frames:
    s = _safe_name(f)
    n = seen.get(s, 0)
    seen[s] = n + 1
    out.append(s if n == 0 else f"{s}_{n}")
  return out


def _check_args(num_steps, batch_size, focal_length, min_joints) -> None:
  if num_steps is not None and (not isinstance(num_steps, (int, np.integer)) or num_steps < 1):
    raise DetectionError(f"num_steps: expected a positive integer, got {num_steps!r}")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise DetectionError(f"batch_size: expected a positive integer, got {batch_size!r}")
  if focal_length is not None and not (np.isfinite(focal_length) and focal_length > 0):
    raise DetectionError(f"focal_length: expected a positive number of pixels, got "
                         f"{focal_length!r}")
  if not isinstance(min_joints, (int, np.integer)) or min_joints < 2:
    raise DetectionError(f"min_joints: expected an integer >= 2, got {min_joints!r}")


# ---------------------------------------------------------------------------------------------
# The whole file.


def fit_file(restored, path: str | os.PathLike, out_dir: str | os.PathLike,
             images: str | os.PathLike | None = None, num_steps: int | None = None,
             batch_size: int = 64, focal_length: float | None = None, overwrite: bool = False,
             log=print, min_joints: int = MIN_JOINTS, draw: bool = True,
             confidence: str = "binary", until_converged: bool = False, tol: float = DEFAULT_TOL,
             refine_steps: int | None = None, prior="default",
             refine_weights: refine.RefineWeights = refine.DEFAULT_WEIGHTS,
             start: str = "learned") -> dict:
  """Fits every person of a keypoint file or directory and writes the results to ``out_dir``.

  Args:
    restored: :func:`lgd_jax.evaluation.restore`'s result.
    path: OpenPose JSON file or directory, or a COCO keypoint file (see :func:`load`).
    out_dir: output directory (created).
    images: optional directory of the frames' images (matched by file stem).
    num_steps: learned update steps; default the checkpoint's training window N.
    batch_size: persons per compiled batch (the last batch is padded).
    focal_length: pixels; default sqrt(W² + H²) of each image (or canvas).
    overwrite: replace the results of an earlier run in ``out_dir``.
    log: progress messages (None: silent).
    min_joints: persons with fewer confident joints are skipped.
    draw: write the PNGs.
    confidence: "binary" (the official rule: score >= 0.01 -> 1, else 0) or "raw".
    until_converged: learned steps until each person's objective stops changing (relative
      change <= ``tol``), at most ``num_steps`` (default then: 10 N), at least N.
    tol: the stopping rule's tolerance.
    refine_steps: iterations of the classical refinement in the image's camera (default
      :data:`DEFAULT_REFINE_STEPS`; 0 = none).
    prior: the refinement's pose prior: "default" (fitted to the checkpoint's training poses,
      :func:`lgd_jax.baselines.config_pose_prior`), a :class:`lgd_jax.baselines.GMMPrior`, or
      None.
    refine_weights: the refinement's constants.
    start: "learned", or "zero" for the SMPLify-style baseline (see :func:`fit_batch`).

  Returns:
    The summary written to ``out_dir/summary.json``.

  Raises:
    DetectionError: a bad keypoint file, image or argument, or an output directory that holds
      another run's results.
  """
  t_start = time.perf_counter()
  log = log or (lambda *_: None)
  _check_args(num_steps, batch_size, focal_length, min_joints)
  out = Path(out_dir)
  summary_path = out / "summary.json"
  if summary_path.exists() and not overwrite:
    raise DetectionError(f"{summary_path}: the output directory holds an earlier run's results; "
                         "expected an empty directory or overwrite=True (--overwrite)")
  problem = restored.problem
  window = int(restored.config.num_steps)
  if num_steps is None:
    num_steps = 10 * window if until_converged else window
  num_steps = int(num_steps)
  refine_steps = DEFAULT_REFINE_STEPS if refine_steps is None else int(refine_steps)
  if refine_steps < 0:
    raise DetectionError(f"refine_steps: expected an integer >= 0, got {refine_steps!r}")
  if confidence not in objective.CONFIDENCE_RULES:
    raise DetectionError(f"confidence: expected one of {objective.CONFIDENCE_RULES}, got "
                         f"{confidence!r}")
  if not (np.isfinite(tol) and tol > 0):
    raise DetectionError(f"tol: expected a positive number, got {tol!r}")
  if isinstance(prior, str) and prior == "default":
    from lgd_jax import baselines
    prior = baselines.config_pose_prior(restored.config, log=log) if refine_steps else None

  det = load(path)
  kp, conf = to_keypoint_set(det, problem.kpset)
  names = body.get_keypoint_set(problem.kpset).names
  index = _image_index(images)
  stems = _frame_stems(det.frames)

  # Each frame's image (or canvas) and camera.
  frame_info = []
  for f, frame in enumerate(det.frames):
    image = _find_image(index, frame, det.image_ids[f])
    persons = det.persons_in(f)
    if image is not None:
      w, h = image_size(image)
      box, kind = (0.0, 0.0, float(w), float(h)), "image"
    elif det.image_sizes[f] is not None:
      w, h = det.image_sizes[f]
      box, kind = (0.0, 0.0, float(w), float(h)), "image_size"
    else:
      box, kind = canvas(kp[persons], conf[persons]), "canvas"
    fl = float(focal_length) if focal_length is not None else float(default_focal(box[2], box[3]))
    center = (box[0] + 0.5 * box[2], box[1] + 0.5 * box[3])
    frame_info.append(dict(image=image, box=box, kind=kind, focal=fl, center=center))

  # Who is fitted, who is skipped.
  skipped, todo = [], []
  num_conf = (conf > 0).sum(-1)
  lo = np.where(conf[..., None] > 0, kp, np.inf).min(1)
  hi = np.where(conf[..., None] > 0, kp, -np.inf).max(1)
  with np.errstate(invalid="ignore"):
    extent = np.where(num_conf > 0, (hi - lo).max(-1), 0.0)
  for f, frame in enumerate(det.frames):
    persons = det.persons_in(f)
    if not len(persons):
      skipped.append(dict(frame=frame, person=None, file=det.frame_files[f],
                          reason="no person detected"))
    for i in persons:
      if num_conf[i] < min_joints:
        skipped.append(dict(frame=frame, person=int(det.person_index[i]), file=det.frame_files[f],
                            reason=f"{int(num_conf[i])} confident {problem.kpset} joints, "
                                   f"fewer than {min_joints}"))
      elif extent[i] < MIN_EXTENT_PX:
        skipped.append(dict(frame=frame, person=int(det.person_index[i]), file=det.frame_files[f],
                            reason=f"the confident keypoints span {float(extent[i]):.2g} px, "
                                   f"less than {MIN_EXTENT_PX:g}"))
      else:
        todo.append(int(i))

  def stem(i):
    return f"{stems[det.person_frame[i]]}_p{det.person_index[i]}"

  suffixes = (".npz", ".obj") + ((".png",) if draw else ())
  if not overwrite:
    for i in todo:
      for s in suffixes:
        if (out / (stem(i) + s)).exists():
          raise DetectionError(f"{out / (stem(i) + s)}: exists already; expected a fresh output "
                               "directory or overwrite=True (--overwrite)")
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DetectionError(f"{out}: cannot create the output directory ({e.strerror}); expected "
                         "a writable directory path") from None
  t_loaded = time.perf_counter()
  no_image = sum(info["kind"] != "image" for info in frame_info)
  if images is not None and no_image:
    log(f"  no image in {images} for {no_image} of {len(det.frames)} frames: a canvas is used")
  how = (f"up to {num_steps} learned steps until converged (tol {tol:g})" if until_converged
         else f"{num_steps} learned steps")
  log(f"{det.path}: {len(det.frames)} frames, {det.num_persons} persons "
      f"({_LABELS[det.format]}); fitting {len(todo)} with {how} (training window N = {window})"
      + (f" and {refine_steps} refinement steps" if refine_steps else "")
      + f", {len(skipped)} skipped")

  # Fit in fixed-size batches; the last one is padded with copies of the first person.
  results = []
  t_fit = 0.0
  if todo:
    bsz = min(batch_size, len(todo))
    mesh = parallel.make_mesh()  # persons split over every device (restored params replicated)
    focal_all = np.array([frame_info[det.person_frame[i]]["focal"] for i in todo], np.float32)
    center_all = np.array([frame_info[det.person_frame[i]]["center"] for i in todo], np.float32)
    for start in range(0, len(todo), bsz):
      idx = todo[start:start + bsz]
      pad = np.concatenate([np.arange(len(idx)), np.zeros(bsz - len(idx), np.int64)])
      rows = np.asarray(idx)[pad]
      sel = slice(start, start + len(idx))
      t0 = time.perf_counter()
      inputs = parallel.shard_batch((kp[rows], conf[rows], focal_all[sel][pad],
                                     center_all[sel][pad]), mesh)
      res = fit_batch(restored.learner, restored.variables, problem, *inputs, num_steps,
                      with_vertices=True, confidence=confidence, until_converged=until_converged,
                      tol=tol, min_steps=min(window, num_steps), refine_steps=refine_steps,
                      prior=prior, refine_weights=refine_weights, start=start)
      res = jax.device_get(res)
      t_fit += time.perf_counter() - t0
      results.append((idx, res))
      log(f"  fitted {min(start + bsz, len(todo))}/{len(todo)}")

  # Write.
  t_write0 = time.perf_counter()
  faces = np.asarray(problem.model.faces)
  fits, image_cache = [], {}
  for idx, res in results:
    pl = res.placement
    finite = np.all(np.isfinite(np.concatenate(
        [pl.global_orient, pl.body_pose, pl.betas, pl.transl, pl.reproj_px[:, None]], -1)), -1)
    for b, i in enumerate(idx):
      f = int(det.person_frame[i])
      info = frame_info[f]
      s = stem(i)
      if not finite[b]:  # e.g. keypoints that all coincide: no translation can be solved
        skipped.append(dict(frame=det.frames[f], person=int(det.person_index[i]),
                            file=det.frame_files[f], reason="the fit is not finite "
                            "(degenerate keypoints)"))
        continue
      if not pl.in_front[b]:
        log(f"  warning: {s}: some fitted keypoints lie behind the camera")
      _save_npz(out / f"{s}.npz", dict(
          global_orient=pl.global_orient[b], body_pose=pl.body_pose[b], betas=pl.betas[b],
          transl=pl.transl[b], focal_length=np.float32(info["focal"]),
          camera_center=np.asarray(info["center"], np.float32),
          image_size=np.asarray(info["box"][2:], np.float32),
          keypoints_2d=kp[i], confidence=conf[i], weights=res.weights[b],
          keypoint_names=np.asarray(names), keypoints_2d_fit=pl.keypoints_2d[b],
          reproj_px=np.float32(pl.reproj_px[b]), learned_steps=np.int32(res.learned_steps[b]),
          refine_steps=np.int32(res.refine_steps)))
      _save_text(out / f"{s}.obj", obj_text(res.vertices[b], faces))
      files = [f"{s}.npz", f"{s}.obj"]
      if draw:
        image = None
        if info["image"] is not None:
          if f not in image_cache:
            image_cache.clear()
            image_cache[f] = read_image(info["image"])
          image = image_cache[f]
        draw_fit(out / f"{s}.png", res.vertices[b], faces, info["focal"], info["center"],
                 info["box"], kp[i], conf[i], pl.keypoints_2d[b], image,
                 f"{det.frames[f]} person {det.person_index[i]}: "
                 f"{float(pl.reproj_px[b]):.1f} px")
        files.append(f"{s}.png")
      fits.append(dict(
          frame=det.frames[f], person=int(det.person_index[i]), file=det.frame_files[f],
          reproj_px=float(pl.reproj_px[b]), reproj=float(res.reproj[b]),
          reproj_px_learned=float(res.reproj_px_learned[b]),
          learned_steps=int(res.learned_steps[b]), refine_steps=int(res.refine_steps),
          num_confident_joints=int(num_conf[i]), in_front_of_camera=bool(pl.in_front[b]),
          focal_length=info["focal"], camera_center=list(info["center"]),
          image=None if info["image"] is None else str(info["image"]),
          image_size=list(info["box"][2:]), size_from=info["kind"], files=files))
  t_end = time.perf_counter()

  errs = np.array([fit["reproj_px"] for fit in fits])
  summary = dict(
      checkpoint=restored.path, checkpoint_step=int(restored.step), keypoints_file=det.path,
      format=det.format, keypoint_set=problem.kpset, num_steps=num_steps, training_window=window,
      until_converged=bool(until_converged), tol=float(tol) if until_converged else None,
      refine_steps=refine_steps, confidence=confidence,
      focal_length=(f"{float(focal_length):g} px (given)" if focal_length is not None
                    else "sqrt(W^2 + H^2) of the image or canvas"),
      fits=fits, skipped=skipped,
      totals=dict(
          frames=len(det.frames), persons=det.num_persons, fitted=len(fits),
          skipped_frames=sum(s["person"] is None for s in skipped),
          skipped_persons=sum(s["person"] is not None for s in skipped),
          frames_without_image=sum(info["kind"] != "image" for info in frame_info),
          behind_camera=sum(not fit["in_front_of_camera"] for fit in fits),
          mean_reproj_px=float(errs.mean()) if len(errs) else None,
          median_reproj_px=float(np.median(errs)) if len(errs) else None),
      wall_time_s=dict(load=t_loaded - t_start, fit=t_fit, write=t_end - t_write0,
                       total=t_end - t_start),
  )
  _save_text(summary_path, json.dumps(summary, indent=1))
  log(f"{len(fits)} fits in {out} (mean re-projection error "
      f"{summary['totals']['mean_reproj_px'] if len(errs) else float('nan'):.2f} px; "
      f"fit {t_fit:.2f} s, total {t_end - t_start:.1f} s); summary: {summary_path}")
  return summary


def table(summary: dict) -> str:
  """The summary's fits and skips as text lines."""
  lines = [f"{'frame':24s} {'person':>6s} {'joints':>6s} {'learned':>7s} {'refine':>6s} "
           f"{'reproj_px':>10s}"]
  for fit in summary["fits"]:
    lines.append(f"{fit['frame'][:24]:24s} {fit['person']:6d} {fit['num_confident_joints']:6d} "
                 f"{fit.get('learned_steps', summary['num_steps']):7d} "
                 f"{fit.get('refine_steps', 0):6d} {fit['reproj_px']:10.2f}")
  for s in summary["skipped"]:
    who = "-" if s["person"] is None else str(s["person"])
    lines.append(f"{s['frame'][:24]:24s} {who:>6s} skipped: {s['reason']}")
  return "\n".join(lines)


__all__ = ["DetectionError", "Detections", "BatchFit", "Placement", "canvas", "default_focal",
           "draw_fit", "estimate_translation", "fit_batch", "fit_file", "load", "normalise_input",
           "obj_text", "place", "read_coco", "read_openpose", "table", "to_keypoint_set"]
