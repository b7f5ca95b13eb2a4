"""What fitting detections reads (:func:`lgd_jax.eval.detections.fit_file`): the checks of its
arguments, the keypoints in the checkpoint's keypoint set, each frame's image (or canvas) and
camera, and who is fitted and who skipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lgd_jax import body, build
from lgd_jax.data.detection_files import DetectionError, Detections, load, to_keypoint_set
from lgd_jax.eval.detection_outputs import _find_image, _image_index, _safe_name, canvas, image_size
from lgd_jax.fitting import objective, refine
from lgd_jax.geometry.translation import default_focal


class Inputs(NamedTuple):
  """A keypoint file read for fitting.

  Attributes:
    det: the detections as read (:func:`lgd_jax.data.detection_files.load`).
    keypoints: (P, K, 2) pixel keypoints in the checkpoint's keypoint set.
    conf: (P, K) their confidences (0 = missing).
    names: (K,) the keypoint set's joint names.
    stems: per frame, a file-name-safe unique stem.
    frames: per frame a dict: ``image`` (its path or None), ``box`` ((x0, y0, W, H) pixels),
      ``kind`` ("image", "image_size" or "canvas": where the size came from), ``focal`` (pixels)
      and ``center`` ((cx, cy) pixels).
    num_conf: (P,) confident joints of every person.
    refine_kpset: the keypoint set the refinement fits (:func:`refine_keypoint_set`).
    refine_keypoints: (P, K', 2) pixel keypoints in it (``keypoints`` when it is the
      checkpoint's set).
    refine_conf: (P, K') their confidences.
  """

  det: Detections
  keypoints: np.ndarray
  conf: np.ndarray
  names: Sequence[str]
  stems: list[str]
  frames: list[dict]
  num_conf: np.ndarray
  refine_kpset: str
  refine_keypoints: np.ndarray
  refine_conf: np.ndarray

  def stem(self, i: int) -> str:
    """The output files' stem of person ``i``: ``<frame>_p<k>``."""
    return f"{self.stems[self.det.person_frame[i]]}_p{self.det.person_index[i]}"


def check_args(num_steps, batch_size, focal_length, min_joints) -> None:
  """fit_file's arguments checked before anything is read."""
  if num_steps is not None and (not isinstance(num_steps, (int, np.integer)) or num_steps < 1):
    raise DetectionError(f"num_steps: expected a positive integer, got {num_steps!r}")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise DetectionError(f"batch_size: expected a positive integer, got {batch_size!r}")
  if focal_length is not None and not (np.isfinite(focal_length) and focal_length > 0):
    raise DetectionError(f"focal_length: expected a positive number of pixels, got "
                         f"{focal_length!r}")
  if not isinstance(min_joints, (int, np.integer)) or min_joints < 2:
    raise DetectionError(f"min_joints: expected an integer >= 2, got {min_joints!r}")


def settings(restored, num_steps, until_converged, refine_steps, confidence, tol, prior, log):
  """fit_file's (num_steps, refine_steps, prior) with their defaults (refine_steps:
  :data:`lgd_jax.fitting.refine.DEFAULT_STEPS`), the other options checked."""
  window = int(restored.config.num_steps)
  if num_steps is None:
    num_steps = 10 * window if until_converged else window
  num_steps = int(num_steps)
  refine_steps = refine.DEFAULT_STEPS if refine_steps is None else int(refine_steps)
  if refine_steps < 0:
    raise DetectionError(f"refine_steps: expected an integer >= 0, got {refine_steps!r}")
  if confidence not in objective.CONFIDENCE_RULES:
    raise DetectionError(f"confidence: expected one of {objective.CONFIDENCE_RULES}, got "
                         f"{confidence!r}")
  if not (np.isfinite(tol) and tol > 0):
    raise DetectionError(f"tol: expected a positive number, got {tol!r}")
  if isinstance(prior, str) and prior == "default":
    prior = build.config_pose_prior(restored.config, log=log) if refine_steps else None
  return num_steps, refine_steps, prior


def _frame_stems(frames: Sequence[str]) -> list[str]:
  """File-name-safe, unique stems of the frames."""
  seen, out = {}, []
  for f in frames:
    s = _safe_name(f)
    n = seen.get(s, 0)
    seen[s] = n + 1
    out.append(s if n == 0 else f"{s}_{n}")
  return out


# The keypoint set the refinement fits for each source format, with refine_keypoints="detections":
# every joint the detector gives that the body model can produce. BODY_25's six foot keypoints
# (toes, heels) fix the feet's orientation, which the checkpoint's COCO-18 set leaves free; the
# COCO formats give nothing beyond COCO-18 (COCO-17 + the neck derived from the shoulders).
REFINE_SETS = {"openpose_body25": "body25"}
REFINE_KEYPOINTS = ("detections", "checkpoint")


def refine_keypoint_set(det_format: str, kpset: str, refine_keypoints: str = "detections") -> str:
  """The keypoint set the refinement fits: with "detections" the source format's own (see
  :data:`REFINE_SETS`; else ``kpset``), with "checkpoint" the checkpoint's ``kpset``."""
  if refine_keypoints not in REFINE_KEYPOINTS:
    raise DetectionError(f"refine_keypoints: expected one of {REFINE_KEYPOINTS}, got "
                         f"{refine_keypoints!r}")
  return REFINE_SETS.get(det_format, kpset) if refine_keypoints == "detections" else kpset


def read(path: str | os.PathLike, kpset: str, images: str | os.PathLike | None = None,
         focal_length: float | None = None, refine_keypoints: str = "detections") -> Inputs:
  """Reads a keypoint file or directory (see :func:`lgd_jax.data.detection_files.load`) into the
  keypoint set ``kpset`` (and the refinement's set, :func:`refine_keypoint_set`), with each
  frame's image (matched by stem in ``images``) and camera."""
  det = load(path)
  kp, conf = to_keypoint_set(det, kpset)
  refine_kpset = refine_keypoint_set(det.format, kpset, refine_keypoints)
  kp_r, conf_r = (kp, conf) if refine_kpset == kpset else to_keypoint_set(det, refine_kpset)
  names = body.get_keypoint_set(kpset).names
  index = _image_index(images)
  stems = _frame_stems(det.frames)
  frames = [_frame_camera(det, f, _find_image(index, frame, det.image_ids[f]), kp, conf,
                          focal_length) for f, frame in enumerate(det.frames)]
  return Inputs(det, kp, conf, names, stems, frames, (conf > 0).sum(-1), refine_kpset, kp_r,
                conf_r)


def _frame_camera(det: Detections, f: int, image, kp: np.ndarray, conf: np.ndarray,
                  focal_length: float | None) -> dict:
  """Frame ``f``'s image size (from its image, else the COCO file, else a canvas around its
  persons' keypoints) and camera (``focal_length``, else sqrt(W² + H²); the box's centre)."""
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
  return dict(image=image, box=box, kind=kind, focal=fl, center=center)


def select(inputs: Inputs, min_joints: int, min_extent_px: float,
           kpset: str) -> tuple[list[int], list[dict]]:
  """(persons to fit, skipped): the frames without persons, and the persons with fewer than
  ``min_joints`` confident joints or whose confident joints span less than ``min_extent_px``
  pixels, each skipped with the reason."""
  det, kp, conf, num_conf = inputs.det, inputs.keypoints, inputs.conf, inputs.num_conf
  skipped, todo = [], []
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
                            reason=f"{int(num_conf[i])} confident {kpset} joints, "
                                   f"fewer than {min_joints}"))
      elif extent[i] < min_extent_px:
        skipped.append(dict(frame=frame, person=int(det.person_index[i]), file=det.frame_files[f],
                            reason=f"the confident keypoints span {float(extent[i]):.2g} px, "
                                   f"less than {min_extent_px:g}"))
      else:
        todo.append(int(i))
  return todo, skipped
