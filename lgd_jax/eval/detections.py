"""Fitting SMPL-layout bodies to real 2D detections with a trained learned optimiser.

    from lgd_jax.eval import detections, restore
    restored = restore.restore("runs/demo")
    summary = detections.fit_file(restored, "openpose_json/", "fits/", images="frames/")

Inputs (:func:`lgd_jax.data.detection_files.load`):

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
Confidences go through :func:`lgd_jax.fitting.objective.observe`, the input function of training
and the benchmark protocols, with the official code's test-time rule (its ``validation_step``): a
score >= :data:`lgd_jax.geometry.camera.CONFIDENCE_THRESHOLD` (0.01) becomes 1 and anything lower
0, so the objective's weights and the network's input are the {0, 1} values it was trained on,
whatever the detector's score scale; a missing joint is placed at 0.5 with weight 0 and cannot
pull the fit. ``confidence="raw"`` (``--confidence raw``) keeps the scores as weights instead.

Fitting (:func:`fit_batch`): all persons of all frames are stacked and fitted in fixed-size
batches (the last one padded), one compiled program for the whole file. The learned fit predicts
pose and shape from unit-box-normalised keypoints, with no camera (``num_steps`` learned steps,
or with ``until_converged`` until each person's objective stops changing). To place the body in
the image, a perspective camera is assumed and the translation solved in closed form (below);
then, by default, :data:`DEFAULT_REFINE_STEPS` iterations of a classical refinement in the
image's camera (:mod:`lgd_jax.fitting.refine`: robust re-projection, anchored at the learned fit,
pose and shape priors) make the 2D fit tight (``refine_steps=0``, ``--refine-steps 0``, skips it).
The refinement fits every joint the detections give that the body model has (``refine_keypoints=
"detections"``, the default: BODY_25's toes and heels too, which fix the feet's orientation and
help a leg whose knee is missing; the checkpoint's COCO-18 set has no feet); after the limbs'
relabelling each foot's keypoints go with the ankle they are nearer
(:func:`lgd_jax.fitting.relabel.attach_feet`). ``refine_keypoints="checkpoint"`` refines on the
learned steps' keypoint set.
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

import functools
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import body, parallel
from lgd_jax.data.detection_files import _LABELS, MIN_JOINTS, DetectionError
from lgd_jax.eval import detection_inputs, detection_outputs
from lgd_jax.fitting import lgd, objective, refine, smplify
from lgd_jax.fitting import relabel as relabelling
from lgd_jax.fitting.objective import Problem
from lgd_jax.geometry import camera, rotations
from lgd_jax.geometry.numerics import full_precision
from lgd_jax.geometry.translation import estimate_translation

MIN_EXTENT_PX = 1.0  # and those whose confident joints (nearly) coincide
DEFAULT_TOL = 1e-4  # the stopping rule's relative change of the objective
# Tight 2D fits by default: the learned steps, then this many iterations of the classical
# refinement in the image's camera (lgd_jax/fitting/refine.py); measured in
# tools/detection_benchmark.py.
DEFAULT_REFINE_STEPS = refine.DEFAULT_STEPS
SMPLIFY_ORIENT_STEPS = 30  # the SMPLify-style baseline's orientation stage (start="zero")


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
  :func:`lgd_jax.fitting.objective.observe`, the input function of training and the protocols: the
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
    weights: (B, K) the confidences the fit used (after the confidence rule; in the labelling
      kept).
    labelling: (B,) the labelling of the limbs kept (an index into
      :func:`lgd_jax.fitting.relabel.hypotheses`; 0 = as given).
  """

  placement: Placement
  reproj: jnp.ndarray
  vertices: jnp.ndarray
  learned_steps: jnp.ndarray
  refine_steps: jnp.ndarray
  reproj_px_learned: jnp.ndarray
  weights: jnp.ndarray
  labelling: jnp.ndarray


@functools.partial(jax.jit, static_argnames=("num_steps", "with_vertices", "confidence",
                                             "until_converged", "refine_steps", "start",
                                             "relabel"))
def fit_batch(learner: lgd.Learner, variables, problem: Problem, keypoints: jnp.ndarray,
              conf: jnp.ndarray, focal: jnp.ndarray, center: jnp.ndarray, num_steps: int,
              with_vertices: bool = True, confidence: str = "binary",
              until_converged: bool = False, tol=DEFAULT_TOL, min_steps: int = 1,
              refine_steps: int = 0, prior=None,
              refine_weights: refine.RefineWeights = refine.DEFAULT_WEIGHTS,
              start: str = "learned", relabel: bool = False,
              relabel_margin=relabelling.DEFAULT_MARGIN, refine_problem: Problem | None = None,
              refine_keypoints: jnp.ndarray | None = None,
              refine_conf: jnp.ndarray | None = None) -> BatchFit:
  """Fits a batch of detections with the learned optimiser (inference mode) and places it.

  Args:
    learner, variables, problem: from :func:`lgd_jax.eval.restore.restore`.
    keypoints: (B, K, 2) pixel keypoints in the problem's keypoint set.
    conf: (B, K) detector scores (0 = missing).
    focal: (B,) focal lengths, pixels.
    center: (B, 2) principal points, pixels.
    num_steps: learned update steps (static); with ``until_converged`` the most.
    with_vertices: also compute the camera-frame meshes (else ``vertices`` is empty).
    confidence: "binary" (the official rule) or "raw" (static).
    until_converged: stop each person's learned fit when its objective's relative change falls
      below ``tol`` (:func:`lgd_jax.fitting.lgd.fit_until_converged`, not before ``min_steps``).
    refine_steps: iterations of the classical refinement in the image's camera
      (:func:`lgd_jax.fitting.refine.refine`, static; 0 = none).
    prior: its pose prior (a :class:`lgd_jax.fitting.priors.GMMPrior` or None).
    refine_weights: its constants.
    start: "learned" (the learned fit), or "zero": no learned step — the zero pose turned by
      SPIN's orientation stage (:func:`lgd_jax.fitting.smplify.smplify`'s stage 1, the best of 8
      turns), the start of the SMPLify-style baseline (static).
    relabel: fit every left/right labelling of the limbs with the learned steps and keep, per
      person, the labelling whose learned fit explains its keypoints best; only that one is
      refined (:mod:`lgd_jax.fitting.relabel`; static; costs one learned fit per labelling).
    relabel_margin: how much lower (relative) another labelling's score must be.
    refine_problem: the problem whose keypoint set the refinement fits (e.g. "body25", with the
      feet; the same body model and camera), with ``refine_keypoints`` (B, K', 2) and
      ``refine_conf`` (B, K') in that set (relabelled like the learned fit's input); None: the
      refinement fits ``keypoints`` in ``problem``'s set.
  """
  h = 1
  if relabel:
    perms, labels = relabelling.hypotheses(problem.kpset)
    h = perms.shape[0]
    keypoints, conf, focal, center = relabelling.expand(jnp.asarray(perms), keypoints, conf,
                                                        focal, center)
    if refine_problem is not None:  # the same labellings of the refinement's keypoints
      perms_r, labels_r = relabelling.hypotheses(refine_problem.kpset)
      if labels_r != labels:
        raise ValueError(f"relabel: the labellings of {refine_problem.kpset} ({labels_r}) differ "
                         f"from those of {problem.kpset} ({labels})")
      refine_keypoints, refine_conf = relabelling.expand(jnp.asarray(perms_r), refine_keypoints,
                                                         refine_conf)
  kp2d, w = normalise_input(problem, keypoints, conf, focal, center, confidence)
  if start == "zero":
    traj = smplify.smplify(problem, kp2d, w, (SMPLIFY_ORIENT_STEPS, 0), pose_prior=prior)
    steps = jnp.zeros(keypoints.shape[:1], jnp.int32)
  elif until_converged:
    traj, stop = lgd.fit_until_converged(learner, variables, problem, kp2d, w, num_steps, tol,
                                         min_steps)
    steps = stop.steps
  else:
    traj, _ = lgd.fit(learner, variables, problem, kp2d, w, num_steps, train=False)
    steps = jnp.full(keypoints.shape[:1], num_steps, jnp.int32)
  theta, kp3d, reproj = traj.theta[-1], traj.kp3d[-1], traj.loss[-1]
  labelling = jnp.zeros((keypoints.shape[0] // h,), jnp.int32)
  if relabel:  # each person's labelling whose learned fit explains its keypoints best
    labelling = relabelling.choose(reproj.reshape(h, -1), relabel_margin)
    (theta, kp3d, reproj, steps, keypoints, w, focal, center, refine_keypoints,
     refine_conf) = relabelling.select((theta, kp3d, reproj, steps, keypoints, w, focal, center,
                                        refine_keypoints, refine_conf), labelling, h)
  placement = place(problem, theta, keypoints, w, focal, center, kp3d)
  learned_px = placement.reproj_px
  if refine_steps:
    rp, kp_r, w_r = problem, keypoints, w
    if refine_problem is not None:
      rp, kp_r = refine_problem, refine_keypoints
      w_r = objective.confidence_weights(refine_conf, confidence)
      if relabel:  # each foot with its nearer ankle (the legs' labelling moves no foot)
        fitted = placement.keypoints_2d[:, list(relabelling.ankle_indices(problem.kpset))]
        kp_r, w_r = relabelling.attach_feet(rp.kpset, kp_r, w_r, fitted)
    theta, t, _ = refine.refine(rp, theta, placement.cam_translation, kp_r, w_r, focal,
                                center, refine_steps, prior, refine_weights)
    placement = place(problem, theta, keypoints, w, focal, center, translation=t)
  if with_vertices:
    pose = jnp.concatenate([placement.global_orient, placement.body_pose], -1)
    vertices = body.forward(problem.model, pose, placement.betas, placement.transl).vertices
  else:
    vertices = jnp.zeros(placement.betas.shape[:1] + (0, 3), keypoints.dtype)
  return BatchFit(placement, reproj, vertices, steps, jnp.int32(refine_steps), learned_px, w,
                  labelling)


# ---------------------------------------------------------------------------------------------
# The whole file.


def fit_file(restored, path: str | os.PathLike, out_dir: str | os.PathLike,
             images: str | os.PathLike | None = None, num_steps: int | None = None,
             batch_size: int = 64, focal_length: float | None = None, overwrite: bool = False,
             log=print, min_joints: int = MIN_JOINTS, draw: bool = True,
             confidence: str = "binary", until_converged: bool = False, tol: float = DEFAULT_TOL,
             refine_steps: int | None = None, prior="default",
             refine_weights: refine.RefineWeights = refine.DEFAULT_WEIGHTS,
             start: str = "learned", relabel: bool = True,
             relabel_margin: float = relabelling.DEFAULT_MARGIN,
             refine_keypoints: str = "detections") -> dict:
  """Fits every person of a keypoint file or directory and writes the results to ``out_dir``.

  Args:
    restored: :func:`lgd_jax.eval.restore.restore`'s result.
    path: OpenPose JSON file or directory, or a COCO keypoint file (see
      :func:`lgd_jax.data.detection_files.load`).
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
      :func:`lgd_jax.build.config_pose_prior`), a :class:`lgd_jax.fitting.priors.GMMPrior`, or
      None.
    refine_weights: the refinement's constants.
    start: "learned", or "zero" for the SMPLify-style baseline (see :func:`fit_batch`).
    relabel: also fit the detections with the left and right of the arms, and of the legs,
      exchanged, and keep each person's most plausible fit (:mod:`lgd_jax.fitting.relabel`;
      default); ``relabel_margin``: by how much another labelling must win.
    refine_keypoints: the keypoints the refinement fits: "detections" (default: every joint of
      the source format the body model can produce, BODY_25's feet included;
      :func:`lgd_jax.eval.detection_inputs.refine_keypoint_set`) or "checkpoint" (the
      checkpoint's keypoint set, the learned steps' input).

  Returns:
    The summary written to ``out_dir/summary.json``.

  Raises:
    DetectionError: a bad keypoint file, image or argument, or an output directory that holds
      another run's results.
  """
  t_start = time.perf_counter()
  log = log or (lambda *_: None)
  detection_inputs.check_args(num_steps, batch_size, focal_length, min_joints)
  out = Path(out_dir)
  summary_path = out / "summary.json"
  if summary_path.exists() and not overwrite:
    raise DetectionError(f"{summary_path}: the output directory holds an earlier run's results; "
                         "expected an empty directory or overwrite=True (--overwrite)")
  window = int(restored.config.num_steps)
  num_steps, refine_steps, prior = detection_inputs.settings(
      restored, num_steps, until_converged, refine_steps, confidence, tol, prior, log)
  problem = restored.problem
  inputs = detection_inputs.read(path, problem.kpset, images, focal_length, refine_keypoints)
  todo, skipped = detection_inputs.select(inputs, min_joints, MIN_EXTENT_PX, problem.kpset)
  detection_outputs.prepare(out, [inputs.stem(i) for i in todo], draw, overwrite)
  t_loaded = time.perf_counter()
  _log_start(log, inputs, images, len(todo), len(skipped), num_steps, window, until_converged,
             tol, refine_steps)
  results, t_fit = _fit_persons(
      restored, inputs, todo, batch_size, log, num_steps, confidence=confidence,
      until_converged=until_converged, tol=tol, min_steps=min(window, num_steps),
      refine_steps=refine_steps, prior=prior, refine_weights=refine_weights, start=start,
      relabel=relabel, relabel_margin=relabel_margin)
  t_write0 = time.perf_counter()
  fits = detection_outputs.write_fits(out, inputs, results, np.asarray(problem.model.faces), draw,
                                      skipped, log, relabelling.hypotheses(problem.kpset)[1])
  t_end = time.perf_counter()
  summary = detection_outputs.summary(
      restored, inputs, fits, skipped, num_steps=num_steps, window=window,
      until_converged=until_converged, tol=tol, refine_steps=refine_steps, confidence=confidence,
      focal_length=focal_length,
      wall_time_s=dict(load=t_loaded - t_start, fit=t_fit, write=t_end - t_write0,
                       total=t_end - t_start))
  detection_outputs.save_summary(summary_path, summary)
  log(f"{len(fits)} fits in {out} (mean re-projection error "
      f"{summary['totals']['mean_reproj_px'] if fits else float('nan'):.2f} px; "
      f"fit {t_fit:.2f} s, total {t_end - t_start:.1f} s); summary: {summary_path}")
  return summary


def _log_start(log, inputs, images, num_todo, num_skipped, num_steps, window, until_converged,
               tol, refine_steps) -> None:
  """What was read and what is fitted, before the fit."""
  det = inputs.det
  no_image = sum(info["kind"] != "image" for info in inputs.frames)
  if images is not None and no_image:
    log(f"  no image in {images} for {no_image} of {len(det.frames)} frames: a canvas is used")
  how = (f"up to {num_steps} learned steps until converged (tol {tol:g})" if until_converged
         else f"{num_steps} learned steps")
  log(f"{det.path}: {len(det.frames)} frames, {det.num_persons} persons "
      f"({_LABELS[det.format]}); fitting {num_todo} with {how} (training window N = {window})"
      + (f" and {refine_steps} refinement steps" if refine_steps else "")
      + f", {num_skipped} skipped")


def _fit_persons(restored, inputs, todo: list[int], batch_size: int, log, num_steps: int,
                 **fit_kwargs) -> tuple[list, float]:
  """Fits the persons ``todo`` of ``inputs`` with :func:`fit_batch` in fixed-size batches (the
  last one padded with copies of its first person; persons split over every device, the
  restored parameters replicated): ``(persons, BatchFit)`` pairs on the host and the fit's
  seconds."""
  results, t_fit = [], 0.0
  if not todo:
    return results, t_fit
  det, kp, conf = inputs.det, inputs.keypoints, inputs.conf
  problem = restored.problem
  refine_problem = (None if inputs.refine_kpset == problem.kpset
                    else problem.replace(kpset=inputs.refine_kpset))
  bsz = min(batch_size, len(todo))
  mesh = parallel.make_mesh()
  focal_all = np.array([inputs.frames[det.person_frame[i]]["focal"] for i in todo], np.float32)
  center_all = np.array([inputs.frames[det.person_frame[i]]["center"] for i in todo], np.float32)
  for first in range(0, len(todo), bsz):
    idx = todo[first:first + bsz]
    pad = np.concatenate([np.arange(len(idx)), np.zeros(bsz - len(idx), np.int64)])
    rows = np.asarray(idx)[pad]
    sel = slice(first, first + len(idx))
    t0 = time.perf_counter()
    batch = parallel.shard_batch((kp[rows], conf[rows], focal_all[sel][pad],
                                  center_all[sel][pad]), mesh)
    extra = {}
    if refine_problem is not None:  # the refinement's own keypoint set
      kp_r, conf_r = parallel.shard_batch((inputs.refine_keypoints[rows],
                                           inputs.refine_conf[rows]), mesh)
      extra = dict(refine_problem=refine_problem, refine_keypoints=kp_r, refine_conf=conf_r)
    res = fit_batch(restored.learner, restored.variables, problem, *batch, num_steps,
                    with_vertices=True, **fit_kwargs, **extra)
    res = jax.device_get(res)
    t_fit += time.perf_counter() - t0
    results.append((idx, res))
    log(f"  fitted {min(first + bsz, len(todo))}/{len(todo)}")
  return results, t_fit


table = detection_outputs.table  # the summary's fits and skips as text lines
