"""Benchmark protocols: a restored checkpoint fitted to 3DPW, Human3.6M or MPI-INF-3DHP keypoints
and scored as the papers score it.

    from lgd_jax import evaluation, protocols
    restored = evaluation.restore("runs/paper")
    results = protocols.evaluate_dataset(restored, "3dpw:/data/3DPW", num_steps=20)
    print(protocols.table(results))

Data specs (:func:`parse_spec`):

* ``3dpw:PATH``: the 3DPW test split (``3dpw-validation:PATH``, ``3dpw-train:PATH`` for the
  others); PATH is the 3DPW root, sequenceFiles/, a split directory or one .pkl. Input: OpenPose
  COCO-18 ``poses2d`` with their confidences. Metrics on the 24 SMPL joints (LGD's protocol):
  ``mpjpe_mm`` (pelvis-centred), ``pa_mpjpe_mm``; ``pve_mm`` when the checkpoint's body model has
  the ground truth's vertex count; ``mpjpe14_mm``/``pa_mpjpe14_mm`` on SPIN's 14 joints when
  ``J_regressor_h36m.npy`` is there and fits both meshes.
* ``h36m-p1:PATH``, ``h36m-p2:PATH``: SPIN's ``h36m_valid_protocol{1,2}.npz``; 14 joints,
  ``mpjpe_mm`` and ``pa_mpjpe_mm`` (needs the regressor and an SMPL-topology checkpoint model).
* ``mpi-inf-3dhp:PATH``: SPIN's ``mpi_inf_3dhp_valid.npz``; 17 joints, ``pck150``, ``auc`` and
  ``mpjpe_mm`` after pelvis centring, and the same after Procrustes alignment (``pa_pck150``,
  ``pa_auc``, ``pa_mpjpe_mm``; SPIN's "rigid alignment" columns, which the LGD supplementary's
  92.0 / 52.9 / 73.8 match in magnitude).
* What the 2D input is (:data:`INPUT_2D`) heads every table and is ``input_2d`` in the results:
  3DPW's are detections, Human3.6M's and MPI-INF-3DHP's ground-truth projections.
* ``synthetic`` and ``amass:DIR`` pass through unchanged; :mod:`lgd_jax.evaluation` handles them.

Every method also reports ``reproj``, the objective it minimises. Predictions and ground truth are
compared in the fit's frame: camera-frame ground truth is rotated by diag(1, -1, -1) (see
:mod:`lgd_jax.data.pw3d`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lgd_jax import body, camera, lgd, metrics, objective, parallel
from lgd_jax.body.keypoint_sets import H36M_TO_J14
from lgd_jax.data import pw3d, spin
from lgd_jax.objective import Problem

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
COLUMN_LABELS = {"mpjpe_mm": "MPJPE", "pa_mpjpe_mm": "PA-MPJPE", "pve_mm": "PVE",
                 "mpjpe14_mm": "MPJPE-14", "pa_mpjpe14_mm": "PA-MPJPE-14", "pck150": "PCK",
                 "auc": "AUC", "pa_pck150": "PA-PCK", "pa_auc": "PA-AUC", "reproj": "reproj"}
METHOD_LABELS = {"lgd": "learned (ours)", "gd": "gradient descent", "adam": "Adam"}
# What the 2D input of each protocol kind is. Human3.6M's is the ground truth S projected through
# a nominal camera and MPI-INF-3DHP's SPIN's ground-truth ``part``: errors on them are not
# comparable with numbers fitted to detected keypoints, so every table and results file says so.
GROUND_TRUTH_2D = "ground-truth projection"
INPUT_2D = {"3dpw": "detections (OpenPose)", "h36m": GROUND_TRUTH_2D, "mpi": GROUND_TRUTH_2D}
# A 3DPW ground truth that differs from the file's jointPositions by more than this (mean, mm)
# suggests SMPL files other than 3DPW's.
GT_CHECK_WARN_MM = 10.0

ExtraMethod = Callable[[Problem, jnp.ndarray, jnp.ndarray, int], jnp.ndarray]


class ProtocolError(ValueError):
  """A data spec, regressor or checkpoint that cannot run a protocol; the message is one line."""


def parse_spec(spec: str | None) -> tuple[str, str | None]:
  """``"3dpw:PATH"`` -> ("3dpw", PATH); also 3dpw-validation, 3dpw-train, h36m-p1, h36m-p2,
  mpi-inf-3dhp. ``None``/"synthetic[:KIND]" -> ("synthetic", KIND or None) and "amass:DIR" ->
  ("amass", DIR)
  pass through for :mod:`lgd_jax.evaluation`.

  Raises:
    ProtocolError: an unknown name or a missing path.
  """
  if not spec or spec == "synthetic":
    return "synthetic", None
  name, sep, path = spec.partition(":")
  if name == "synthetic":
    return "synthetic", path or None
  known = ("synthetic", "synthetic:KIND", "amass:DIR") + tuple(f"{k}:PATH" for k in (*PW3D_SPECS, *SPIN_SPECS))
  if name not in PW3D_SPECS and name not in SPIN_SPECS and name != "amass":
    raise ProtocolError(f"--data {spec!r}: unknown data set {name!r}, expected one of "
                        f"{', '.join(known)}")
  if not sep or not path:
    raise ProtocolError(f"--data {spec!r}: expected {name}:{'DIR' if name == 'amass' else 'PATH'}")
  return name, path


# ---------------------------------------------------------------------------------------------
# 2D inputs.
# ---------------------------------------------------------------------------------------------


def map_keypoints(src_names, kp: np.ndarray, conf: np.ndarray, dst_names, aliases=None):
  """Reorders keypoints by name into another set.

  Args:
    src_names: names of the source keypoints.
    kp: (N, S, 2) source keypoints.
    conf: (N, S) confidences.
    dst_names: names of the wanted keypoints.
    aliases: optional {wanted name: (source names to try in order)}; per sample the first with a
      positive confidence is used.

  Returns:
    (kp (N, K, 2), conf (N, K), names of wanted keypoints without a source): missing keypoints
    have confidence 0.
  """
  aliases = aliases or {}
  src = {n: i for i, n in enumerate(src_names)}
  n = kp.shape[0]
  out_kp = np.zeros((n, len(dst_names), 2), np.float32)
  out_conf = np.zeros((n, len(dst_names)), np.float32)
  unmatched = []
  for k, name in enumerate(dst_names):
    idx = [src[c] for c in aliases.get(name, (name,)) if c in src]
    if not idx:
      unmatched.append(name)
      continue
    cand = conf[:, idx]
    first = np.argmax(cand > 0, axis=1)
    out_kp[:, k] = kp[np.arange(n), np.asarray(idx)[first]]
    out_conf[:, k] = cand[np.arange(n), first]
  return out_kp, out_conf, unmatched


_observe = jax.jit(objective.observe, static_argnames=("confidence",))


def confidence_note(confidence: str) -> str:
  return ("binarised (>= 0.01 -> 1, the official rule)" if confidence == "binary" else
          "raw detector scores as weights")


def problem_inputs(problem: Problem, pix: np.ndarray, conf: np.ndarray,
                   intrinsics: np.ndarray | None = None, source: str = "",
                   confidence: str = "binary") -> tuple[np.ndarray, np.ndarray]:
  """Pixel keypoints (N, K, 2) and scores (N, K) -> the fit's input (kp2d, conf).

  Through :func:`lgd_jax.objective.observe`, the input function of training and detection
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
    raise ProtocolError(" ".join(str(e).split())) from None


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
  gt_check = None
  if data.joint_positions is not None:
    gt_check = float(np.mean(np.linalg.norm(data.joints[keep] - data.joint_positions[keep],
                                            axis=-1)) * 1000.0)
    if gt_check > GT_CHECK_WARN_MM:
      log(f"warning: the ground-truth joints differ from the files' jointPositions by "
          f"{gt_check:.1f} mm on average: are {', '.join(data.models.values())} 3DPW's SMPL "
          "models (v1.0/v1.1 male and female)?")
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
                                      body.get_keypoint_set(problem.kpset).names,
                                      spin.KEYPOINT_ALIASES)
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


# ---------------------------------------------------------------------------------------------
# Metrics (jitted, batched).
# ---------------------------------------------------------------------------------------------


def _centred_regressed(model, pose, betas, regressor, select):
  reg = body.keypoints(model, pose, betas, None, regressor)
  return reg[..., select, :] - reg[..., :1, :]


@functools.partial(jax.jit, static_argnames=("regressor", "pve"))
def gt_mesh_points(gt_models: tuple, pose, betas, gender_index, regressor=None, pve=False) -> dict:
  """3DPW's per-batch mesh-based ground truth: pelvis-centred vertices (B, V, 3) if ``pve`` and
  SPIN's 14 regressed joints (B, 14, 3) if ``regressor``, each from the sample's gendered model."""
  out = {}
  for i, model in enumerate(gt_models):
    sel = (gender_index == i)[:, None, None]
    if pve:
      o = body.forward(model, pose, betas)
      v = o.vertices - o.joints[..., :1, :]
      out["vertices"] = v if i == 0 else jnp.where(sel, v, out["vertices"])
    if regressor is not None:
      j = _centred_regressed(model, pose, betas, regressor, H36M_TO_J14)
      out["joints14"] = j if i == 0 else jnp.where(sel, j, out["joints14"])
  return out


@functools.partial(jax.jit, static_argnames=("kind", "regressor", "pve"))
def step_metrics(problem: Problem, theta: jnp.ndarray, gt: dict, kind: str, regressor=None,
                 pve: bool = False) -> dict:
  """Per-step, per-sample protocol metrics of a trajectory.

  Args:
    problem: the fitting problem (its body model makes the prediction's joints and mesh).
    theta: (M+1, B, P) parameters per step.
    gt: the batch's ground truth: "joints" (B, J, 3) pelvis-centred; for 3DPW optionally
      "vertices" and "joints14" (see :func:`gt_mesh_points`).
    kind: "3dpw", "h36m" or "mpi".
    regressor: the J_regressor_h36m keypoint set (static), needed by "h36m" and "mpi".
    pve: compute the vertex error (3DPW).

  Returns:
    {metric: (M+1, B)} in millimetres or percent.
  """

  def one(th):
    p = objective.split(problem, th)
    out = {}
    if kind == "3dpw":
      joints = body.keypoints(problem.model, p.pose, p.betas, None, "smpl24")
      out["mpjpe_mm"] = metrics.mpjpe(joints, gt["joints"], root=0)
      out["pa_mpjpe_mm"] = metrics.pa_mpjpe(joints, gt["joints"])
      if pve:
        o = body.forward(problem.model, p.pose, p.betas)
        out["pve_mm"] = metrics.pve(o.vertices - o.joints[..., :1, :], gt["vertices"])
      if regressor is not None:
        j14 = _centred_regressed(problem.model, p.pose, p.betas, regressor, H36M_TO_J14)
        out["mpjpe14_mm"] = metrics.mpjpe(j14, gt["joints14"], root=None)
        out["pa_mpjpe14_mm"] = metrics.pa_mpjpe(j14, gt["joints14"])
      return out
    select = spin.H36M_TO_J17 if kind == "mpi" else H36M_TO_J14
    pred = _centred_regressed(problem.model, p.pose, p.betas, regressor, select)
    out["mpjpe_mm"] = metrics.mpjpe(pred, gt["joints"], root=None)
    out["pa_mpjpe_mm"] = metrics.pa_mpjpe(pred, gt["joints"])
    if kind == "mpi":
      aligned = metrics.procrustes_align(pred, gt["joints"])
      out["pck150"] = metrics.pck(pred, gt["joints"], root=None)
      out["auc"] = metrics.auc(pred, gt["joints"], root=None)
      out["pa_pck150"] = metrics.pck(aligned, gt["joints"], root=None)
      out["pa_auc"] = metrics.auc(aligned, gt["joints"], root=None)
    return out

  return jax.lax.map(one, theta)


@functools.partial(jax.jit, static_argnames=("learner", "num_steps"))
def _fit_lgd(learner, variables, problem, kp2d, conf, num_steps: int):
  traj, _ = lgd.fit(learner, variables, problem, kp2d, conf, num_steps, train=False)
  return traj.theta, traj.loss


@jax.jit
def reprojection(problem: Problem, theta: jnp.ndarray, kp2d: jnp.ndarray, conf: jnp.ndarray):
  """The objective of every step (M+1, B) of a trajectory theta (M+1, B, P)."""
  per_sample = jax.vmap(lambda t, k, c: objective.objective(problem, t, k, c)[0])
  return jax.vmap(per_sample, in_axes=(0, None, None))(theta, kp2d, conf)


# ---------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to ``size`` by repeating the last row (finite, discarded later)."""
  extra = size - x.shape[0]
  return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, 0)], 0)


def run_method(data: ProtocolData, problem: Problem, fit_fn, num_steps: int, batch_size: int,
               desc: str = "") -> dict:
  """Fits every batch with ``fit_fn(kp2d, conf) -> (theta (M+1, B, P), loss (M+1, B) or None)``
  and returns the per-step means {metric: (M+1,)} over the data set."""
  n = len(data)
  size = min(batch_size, n)
  sums: dict[str, np.ndarray] = {}
  mesh = parallel.make_mesh()  # batches split over every device (restored params replicated)
  starts = range(0, n, size)
  for start in tqdm(starts, desc=desc, leave=False, disable=None if len(starts) > 1 else True):
    stop = min(start + size, n)
    kp2d = jnp.asarray(_pad(data.kp2d[start:stop], size))
    conf = jnp.asarray(_pad(data.conf[start:stop], size))
    gt = {k: jnp.asarray(_pad(v[start:stop], size)) for k, v in data.gt.items()}
    kp2d, conf, gt = parallel.shard_batch((kp2d, conf, gt), mesh)
    theta, loss = fit_fn(kp2d, conf)
    if theta.ndim != 3 or theta.shape[1:] != (size, problem.num_params):
      raise ProtocolError(f"method {desc!r} returned parameters of shape {theta.shape}, expected "
                          f"(M+1, {size}, {problem.num_params})")
    if data.kind == "3dpw" and (data.pve or data.regressor is not None):
      gt.update(gt_mesh_points(data.gt_models, gt["pose"], gt["betas"], gt["gender_index"],
                               data.regressor, data.pve))
    gt_used = {k: v for k, v in gt.items() if k in ("joints", "vertices", "joints14")}
    values = step_metrics(problem, theta, gt_used, data.kind, data.regressor, data.pve)
    values["reproj"] = reprojection(problem, theta, kp2d, conf) if loss is None else loss
    for k, v in jax.device_get(values).items():
      total = np.asarray(v, np.float64)[:, :stop - start].sum(axis=1)
      sums[k] = total if k not in sums else sums[k] + total
  return {k: sums[k] / n for k in data.metrics}


def evaluate_dataset(restored, spec: str, num_steps: int | None = None, batch_size: int = 512,
                     max_samples: int | None = None, log=print,
                     extra_methods: dict[str, ExtraMethod] | None = None,
                     smpl_dir: str | os.PathLike | None = None,
                     confidence: str = "binary") -> dict:
  """Fits a restored checkpoint (and optional other methods) to a benchmark and scores every step.

  Args:
    restored: :func:`lgd_jax.evaluation.restore`'s result.
    spec: a data spec, e.g. "3dpw:/data/3DPW" (see :func:`parse_spec`).
    num_steps: iterations M (default max(20, 2N), past the training window N).
    batch_size: samples per jitted fit (the last batch is padded, so one program serves all).
    max_samples: evaluate an evenly spaced subset of this many samples (None: all).
    log: where progress lines go.
    extra_methods: {name: fn(problem, kp2d (B, K, 2), conf (B, K), num_steps) -> theta (M+1, B, P)}
      run on the same inputs and scored alike (e.g. classical baselines).
    smpl_dir: where the SMPL files and J_regressor_h36m.npy are (default $LGD_JAX_SMPL_DIR or
      third_party/smpl).
    confidence: "binary" (the official rule: detector score >= 0.01 -> 1, else 0) or "raw"
      (scores weigh the objective); see :func:`lgd_jax.objective.observe`.

  Returns:
    The results dictionary, laid out like :func:`lgd_jax.evaluation.evaluate`'s: "dataset",
    "num_samples", "checkpoint", "checkpoint_step", "num_steps", "training_window", "keypoints",
    "protocol" (what was done), "methods" {name: {metric: [value per step 0..M]}}, "wall_time_s".

  Raises:
    ProtocolError, pw3d.Pw3dError, spin.SpinDataError: bad spec, data or missing files.
  """
  name, path = parse_spec(spec)
  if name in PASS_THROUGH:
    raise ProtocolError(f"--data {spec!r}: not a benchmark data set; lgd_jax.evaluation.evaluate "
                        "handles synthetic and AMASS samples")
  window = int(restored.config.num_steps)
  num_steps = max(20, 2 * window) if num_steps is None else int(num_steps)
  if num_steps < 1:
    raise ProtocolError(f"--steps: expected a positive integer, got {num_steps}")
  if batch_size < 1:
    raise ProtocolError(f"--batch-size: expected a positive integer, got {batch_size}")
  problem = restored.problem
  t0 = time.perf_counter()
  data = prepare(problem, name, path, smpl_dir, max_samples, log, confidence)
  log(f"evaluating {restored.path} on {len(data)} {name} samples ({time.perf_counter() - t0:.1f} s "
      f"to load), {num_steps} steps (training window N = {window})")

  fits = {"lgd": lambda kp2d, conf: _fit_lgd(restored.learner, restored.variables, problem, kp2d,
                                             conf, num_steps)}
  for method, fn in (extra_methods or {}).items():
    if method in fits:
      raise ProtocolError(f"extra method {method!r}: the name is taken, choose another")
    fits[method] = functools.partial(lambda f, kp2d, conf: (f(problem, kp2d, conf, num_steps),
                                                            None), fn)
  methods, timing = {}, {}
  for method, fit_fn in fits.items():
    t0 = time.perf_counter()
    values = run_method(data, problem, fit_fn, num_steps, batch_size, method)
    timing[method] = time.perf_counter() - t0
    methods[method] = {k: [float(x) for x in v] for k, v in values.items()}
    main = "pa_mpjpe_mm"
    log(f"  {method}: {COLUMN_LABELS[main]} {values[main][min(window, num_steps)]:.1f} mm at step "
        f"{min(window, num_steps)}, {values[main][-1]:.1f} mm at step {num_steps} "
        f"({timing[method]:.1f} s)")
  return {
      "dataset": name,
      "num_samples": len(data),
      "checkpoint": restored.path,
      "checkpoint_step": int(restored.step),
      "num_steps": num_steps,
      "training_window": window,
      "keypoints": problem.kpset,
      "input_2d": data.input_2d,
      "protocol": {**data.description, "metrics": list(data.metrics)},
      "methods": methods,
      "wall_time_s": timing,
  }


def table(results: dict) -> str:
  """The results laid out like the paper's tables: one row per method, the protocol's metrics at
  the training window N and at the last step M (3DPW and Human3.6M: MPJPE, PA-MPJPE; MPI-INF-3DHP:
  PCK, AUC, MPJPE, without and with Procrustes alignment), under a line that names the 2D input
  ("2D input: ground-truth projection" or "2D input: detections (OpenPose)")."""
  m_steps, window = results["num_steps"], results["training_window"]
  steps = sorted({min(window, m_steps), m_steps})
  names = [k for k in results["protocol"]["metrics"] if k != "reproj"]
  widths = [max(7, len(COLUMN_LABELS.get(k, k))) for k in names]
  group = " ".join(f"{COLUMN_LABELS.get(k, k):>{w}s}" for k, w in zip(names, widths))
  title = (f"{results['dataset']}: {results['num_samples']} samples, keypoints "
           f"{results['keypoints']}, training window N = {window}")
  head1 = f"{'':22s}" + " | ".join(
      f"{('step ' + str(s) + (' (N)' if s == window else '')):^{len(group)}s}" for s in steps)
  head2 = f"{'method':22s}" + " | ".join(group for _ in steps)
  lines = [title]
  kind = results.get("input_2d") or results["protocol"].get("input_2d")
  if kind:
    lines.append(f"2D input: {kind}" + (" (not comparable with numbers fitted to detected "
                                         "keypoints)" if kind == GROUND_TRUTH_2D else ""))
  lines += [head1.rstrip(), head2, "-" * len(head2)]
  for method, vals in results["methods"].items():
    cells = " | ".join(" ".join(f"{vals[k][s]:{w}.1f}" for k, w in zip(names, widths))
                       for s in steps)
    lines.append(f"{METHOD_LABELS.get(method, method)[:21]:22s}" + cells)
  units = "PCK and AUC in %, errors in mm" if "pck150" in names else "errors in mm"
  lines.append(f"({units}; PA = after Procrustes alignment)")
  return "\n".join(lines)
