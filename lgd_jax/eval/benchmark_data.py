"""The benchmark protocols' data: the ``--data`` spec, the 2D inputs mapped into the checkpoint's
keypoint set and normalised as the fit takes them, and 3DPW's and SPIN's ground truth with the
J_regressor_h36m keypoints, ready to fit and score (:class:`ProtocolData`).

    data = benchmark_data.prepare(restored.problem, "3dpw", "/data/3DPW")

What each spec loads and how it is scored: :mod:`lgd_jax.eval.protocols`.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import body
from lgd_jax.body import keypoint_sets
from lgd_jax.data import pw3d, spin
from lgd_jax.errors import UserError, one_line
from lgd_jax.fitting import objective
from lgd_jax.fitting.objective import Problem
from lgd_jax.geometry import camera

PW3D_SPECS = {"3dpw": "test", "3dpw-test": "test", "3dpw-validation": "validation",
              "3dpw-train": "train"}
SPIN_SPECS = ("h36m-p1", "h36m-p2", "mpi-inf-3dhp")
PASS_THROUGH = ("synthetic", "amass")
# Metrics of each protocol kind, in table order.
METRICS = {
    "3dpw": ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "mpjpe14_mm", "pa_mpjpe14_mm", "reproj"),
    "h36m": ("mpjpe_mm", "pa_mpjpe_mm", "reproj"),
    "mpi": ("pck150", "auc", "mpjpe_mm", "pa_pck150", "pa_auc", "pa_mpjpe_mm", "reproj"),
}
# What the 2D input of each protocol kind is. Human3.6M's is the ground truth S projected through
# a nominal camera and MPI-INF-3DHP's SPIN's ground-truth ``part``: errors on them are not
# comparable with numbers fitted to detected keypoints, so every table and results file says so.
GROUND_TRUTH_2D = "ground-truth projection"
INPUT_2D = {"3dpw": "detections (OpenPose)", "h36m": GROUND_TRUTH_2D, "mpi": GROUND_TRUTH_2D}
# A 3DPW ground truth that differs from the file's jointPositions by more than this (mean, mm)
# suggests SMPL files other than 3DPW's.
GT_CHECK_WARN_MM = 10.0


class ProtocolError(UserError):
  """A data spec, regressor or checkpoint that cannot run a protocol; the message is one line."""


def parse_spec(spec: str | None) -> tuple[str, str | None]:
  """``"3dpw:PATH"`` -> ("3dpw", PATH); also 3dpw-validation, 3dpw-train, h36m-p1, h36m-p2,
  mpi-inf-3dhp. ``None``/"synthetic[:KIND]" -> ("synthetic", KIND or None) and "amass:DIR" ->
  ("amass", DIR) pass through for :mod:`lgd_jax.eval.heldout`.

  Raises:
    ProtocolError: an unknown name or a missing path.
  """
  if not spec or spec == "synthetic":
    return "synthetic", None
  name, sep, path = spec.partition(":")
  if name == "synthetic":
    return "synthetic", path or None
  known = ("synthetic", "synthetic:KIND", "amass:DIR") + tuple(
      f"{k}:PATH" for k in (*PW3D_SPECS, *SPIN_SPECS))
  if name not in PW3D_SPECS and name not in SPIN_SPECS and name != "amass":
    raise ProtocolError(f"--data {spec!r}: unknown data set {name!r}, expected one of "
                        f"{', '.join(known)}")
  if not sep or not path:
    raise ProtocolError(f"--data {spec!r}: expected {name}:{'DIR' if name == 'amass' else 'PATH'}")
  return name, path


# ---------------------------------------------------------------------------------------------
# 2D inputs.
# ---------------------------------------------------------------------------------------------


# The one name mapper (kp (N, K, 2), conf (N, K), wanted names without a source), by its
# protocols name.
map_keypoints = keypoint_sets.map_by_name


_observe = jax.jit(objective.observe, static_argnames=("confidence",))


def confidence_note(confidence: str) -> str:
  return ("binarised (>= 0.01 -> 1, the official rule)" if confidence == "binary" else
          "raw detector scores as weights")


def problem_inputs(problem: Problem, pix: np.ndarray, conf: np.ndarray,
                   intrinsics: np.ndarray | None = None, source: str = "",
                   confidence: str = "binary") -> tuple[np.ndarray, np.ndarray]:
  """Pixel keypoints (N, K, 2) and scores (N, K) -> the fit's input (kp2d, conf).

  Through :func:`lgd_jax.fitting.objective.observe`, the input function of training and detection
  fitting: the official code's confidence rule (score >= 0.01 -> 1, else 0) unless
  ``confidence="raw"``; the unit box of the visible joints (the official normalisation) unless
  the problem fits the translation, which needs the data's intrinsics (N, 3, 3).
  """
  focal = center = None
  if problem.fit_translation:
    if intrinsics is None:
      raise ProtocolError(f"{source}: the checkpoint fits the camera translation, which needs "
                          "the data's camera intrinsics; this file has none (use a checkpoint "
                          "trained with fit_translation=False)")
    focal = np.stack([intrinsics[:, 0, 0], intrinsics[:, 1, 1]], -1)
    center = intrinsics[:, :2, 2]
  kp2d, weights = _observe(problem, jnp.asarray(pix, jnp.float32), jnp.asarray(conf, jnp.float32),
                           focal, center, confidence=confidence)
  return np.asarray(kp2d, np.float32), np.asarray(weights, np.float32)


# ---------------------------------------------------------------------------------------------
# Protocol data.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ProtocolData:
  """A data set ready to fit and score.

  Attributes:
    name: the spec's name ("3dpw", "h36m-p2", ...).
    kind: "3dpw", "h36m" or "mpi" (which metrics).
    kp2d: (N, K, 2) normalised inputs in the problem's keypoint set.
    conf: (N, K) confidences.
    gt: per-sample ground truth arrays (leading axis N): "joints" always; for 3DPW also "pose",
      "betas" and "gender_index" (into ``gt_models``).
    gt_models: 3DPW's gendered ground-truth models (for vertices and regressed joints).
    regressor: the J_regressor_h36m keypoint set where the protocol uses it.
    pve: whether the vertex error is computed.
    description: what the protocol does, for results.json.

  The kind of 2D input (:data:`INPUT_2D`) is :attr:`input_2d`.
  """

  name: str
  kind: str
  kp2d: np.ndarray
  conf: np.ndarray
  gt: dict
  gt_models: tuple = ()
  regressor: body.KeypointSet | None = None
  pve: bool = False
  description: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return self.kp2d.shape[0]

  @property
  def input_2d(self) -> str:
    """"detections (OpenPose)" (3DPW) or "ground-truth projection" (Human3.6M, MPI-INF-3DHP)."""
    return INPUT_2D[self.kind]

  @property
  def metrics(self) -> tuple[str, ...]:
    names = METRICS[self.kind]
    if self.kind == "3dpw":
      names = tuple(m for m in names if (m != "pve_mm" or self.pve) and (
          "14" not in m or self.regressor is not None))
    return names


def _load_regressor(smpl_dir) -> tuple[body.KeypointSet | None, str | None]:
  path = pw3d.regressor_path(smpl_dir)
  if path is None:
    return None, None
  try:
    return body.regressor_keypoint_set(path), str(path)
  except (ValueError, FileNotFoundError) as e:
    raise ProtocolError(one_line(str(e))) from None


def _regressor_fits(regressor: body.KeypointSet, model: body.BodyModel) -> bool:
  return regressor.regressor.shape[1] == model.num_verts


def _subsample(n: int, max_samples: int | None) -> np.ndarray:
  """Evenly spaced indices (every part of the data set represented), all if ``max_samples`` is
  None or at least n."""
  if max_samples is None or max_samples >= n:
    return np.arange(n)
  if max_samples < 1:
    raise ProtocolError(f"max_samples: expected a positive integer, got {max_samples}")
  return np.unique(np.linspace(0, n - 1, max_samples).round().astype(np.int64))


def _mesh_metrics(problem: Problem, gt_models: tuple, smpl_dir):
  """Which of 3DPW's mesh-based metrics the checkpoint's and the ground truth's models allow:
  (PVE?, the J_regressor_h36m keypoint set or None, its path, notes on what is left out)."""
  num_verts = {m.num_verts for m in gt_models}
  notes = []
  pve = num_verts == {problem.model.num_verts}
  if not pve:
    notes.append(f"no PVE: the checkpoint's body model has {problem.model.num_verts} vertices, "
                 f"the ground truth {sorted(num_verts)}")
  regressor, reg_path = _load_regressor(smpl_dir)
  if regressor is None:
    notes.append(f"no 14-joint metrics: {pw3d.missing_regressor_message(smpl_dir)}")
  elif not (_regressor_fits(regressor, problem.model) and all(
      _regressor_fits(regressor, m) for m in gt_models)):
    notes.append(f"no 14-joint metrics: {reg_path} has {regressor.regressor.shape[1]} vertex "
                 f"columns, the checkpoint's model {problem.model.num_verts} vertices and the "
                 f"ground truth {sorted(num_verts)}")
    regressor = None
  return pve, regressor, reg_path, notes


def _check_ground_truth(data, keep: np.ndarray, log) -> float | None:
  """The mean distance (mm) of the ground-truth joints from the files' jointPositions (None
  without them); warns past :data:`GT_CHECK_WARN_MM`."""
  if data.joint_positions is None:
    return None
  gt_check = float(np.mean(np.linalg.norm(data.joints[keep] - data.joint_positions[keep],
                                          axis=-1)) * 1000.0)
  if gt_check > GT_CHECK_WARN_MM:
    log(f"warning: the ground-truth joints differ from the files' jointPositions by "
        f"{gt_check:.1f} mm on average: are {', '.join(data.models.values())} 3DPW's SMPL "
        "models (v1.0/v1.1 male and female)?")
  return gt_check


def _prepare_3dpw(problem: Problem, name: str, path: str, smpl_dir, max_samples, log,
                  confidence: str = "binary"):
  split = PW3D_SPECS[name]
  data = pw3d.load(path, split, smpl_dir)
  keep = _subsample(len(data), max_samples)
  genders = tuple(sorted(data.models))
  gt_models = tuple(data.body_models[g] for g in genders)
  gender_index = np.searchsorted(np.asarray(genders), data.gender[keep]).astype(np.int32)
  kp, conf, unmatched = map_keypoints(data.keypoint_names, data.kp2d[keep], data.conf[keep],
                                      body.get_keypoint_set(problem.kpset).names)
  intrinsics = None if data.intrinsics is None else data.intrinsics[keep]
  kp2d, conf = problem_inputs(problem, kp, conf, intrinsics, path, confidence)
  pve, regressor, reg_path, notes = _mesh_metrics(problem, gt_models, smpl_dir)
  gt_check = _check_ground_truth(data, keep, log)
  gt = {"joints": data.joints[keep], "pose": data.pose[keep], "betas": data.betas[keep],
        "gender_index": gender_index}
  description = {
      "name": name, "split": split, "path": os.fspath(path), "sequence_files": len(data.files),
      "input_2d": INPUT_2D["3dpw"],
      "frames": "campose_valid frames of every actor",
      "input": f"OpenPose COCO-18 poses2d, confidences {confidence_note(confidence)} -> "
               f"{problem.kpset}"
               + (f" (no source for {unmatched}: confidence 0)" if unmatched else ""),
      "ground_truth": "gendered SMPL joints (and vertices) from poses/betas, global orientation "
                      "in the camera frame, then diag(1,-1,-1); pelvis-centred",
      "joints": "24 SMPL joints; 14 LSP joints from J_regressor_h36m (SPIN) when available",
      "smpl_models": dict(data.models), "regressor": reg_path if regressor is not None else None,
      "frames_without_2d": int(np.sum(~np.any(conf >= camera.CONFIDENCE_THRESHOLD, axis=1))),
      "gt_vs_jointPositions_mm": gt_check, "notes": notes,
  }
  for note in notes:
    log(f"  {note}")
  return ProtocolData(name, "3dpw", kp2d, conf, gt, gt_models, regressor, pve, description)


def _prepare_spin(problem: Problem, name: str, path: str, smpl_dir, max_samples, log,
                  confidence: str = "binary"):
  regressor, reg_path = _load_regressor(smpl_dir)
  if regressor is None:
    raise ProtocolError(pw3d.missing_regressor_message(smpl_dir))
  if not _regressor_fits(regressor, problem.model):
    raise ProtocolError(
        f"{reg_path}: the regressor has {regressor.regressor.shape[1]} vertex columns but the "
        f"checkpoint's body model ({problem.model.name or 'built-in'}) has "
        f"{problem.model.num_verts} vertices; the {name} protocol regresses its joints from an "
        "SMPL mesh, so it needs a checkpoint trained on SMPL (6890 vertices)")
  data = spin.load(path, name)
  keep = _subsample(len(data), max_samples)
  kind = "mpi" if name == "mpi-inf-3dhp" else "h36m"
  joints = spin.ground_truth(data, name)[keep]
  kp, conf, unmatched = map_keypoints(data.keypoint_names, data.kp2d[keep], data.conf[keep],
                                      body.get_keypoint_set(problem.kpset).names)
  kp2d, conf = problem_inputs(problem, kp, conf, None, os.fspath(path), confidence)
  source = ("part (visibility as confidence)" if data.keypoints_source == "part" else
            f"S projected by a nominal camera {spin.NOMINAL_DEPTH_M:g} m away (no part key)")
  gt_map, pred_map = ("J24_TO_J17", "H36M_TO_J17") if kind == "mpi" else ("J24_TO_J14",
                                                                          "H36M_TO_J14")
  description = {
      "name": name, "path": os.fspath(path), "input_2d": INPUT_2D[kind],
      "input": f"SPIN 24-joint {source} -> {problem.kpset}"
               + (f" (no source for {unmatched}: confidence 0)" if unmatched else ""),
      "ground_truth": f"S[{gt_map}], pelvis-centred, camera frame then diag(1,-1,-1)",
      "prediction": f"J_regressor_h36m @ vertices, {pred_map}, centred on the regressed pelvis",
      "joints": 17 if kind == "mpi" else 14, "regressor": reg_path,
      "notes": [data.note] if data.note else [],
  }
  if data.note:
    log(f"  {data.note}")
  return ProtocolData(name, kind, kp2d, conf, {"joints": joints}, (), regressor, False,
                      description)


def prepare(problem: Problem, name: str, path: str, smpl_dir=None, max_samples: int | None = None,
            log=print, confidence: str = "binary") -> ProtocolData:
  """Loads a protocol's data set for ``problem`` (its keypoint set, body model and camera)."""
  if name in PW3D_SPECS:
    return _prepare_3dpw(problem, name, path, smpl_dir, max_samples, log, confidence)
  if name in SPIN_SPECS:
    return _prepare_spin(problem, name, path, smpl_dir, max_samples, log, confidence)
  raise ProtocolError(f"{name}: not a benchmark protocol, expected one of "
                      f"{', '.join((*PW3D_SPECS, *SPIN_SPECS))}")
