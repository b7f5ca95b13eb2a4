"""Benchmark protocols: a restored checkpoint fitted to 3DPW, Human3.6M or MPI-INF-3DHP keypoints
and scored as the papers score it.

    from lgd_jax.eval import protocols, restore
    restored = restore.restore("runs/paper")
    results = protocols.evaluate_dataset(restored, "3dpw:/data/3DPW", num_steps=20)
    print(protocols.table(results))

Data specs (:func:`lgd_jax.eval.benchmark_data.parse_spec`; that module prepares the inputs and the
ground truth, this one fits and scores them):

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
* What the 2D input is (:data:`~lgd_jax.eval.benchmark_data.INPUT_2D`) heads every table and is
  ``input_2d`` in the results: 3DPW's are detections, Human3.6M's and MPI-INF-3DHP's ground-truth
  projections.
* ``synthetic`` and ``amass:DIR`` pass through unchanged; :mod:`lgd_jax.eval.heldout` handles them.

Every method also reports ``reproj``, the objective it minimises. Predictions and ground truth are
compared in the fit's frame: camera-frame ground truth is rotated by diag(1, -1, -1) (see
:mod:`lgd_jax.data.pw3d`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lgd_jax import body, metrics, parallel
from lgd_jax.body.keypoint_sets import H36M_TO_J14
from lgd_jax.data import spin
from lgd_jax.eval.benchmark_data import (
  GROUND_TRUTH_2D,
  INPUT_2D,
  METRICS,
  PASS_THROUGH,
  PW3D_SPECS,
  SPIN_SPECS,
  ProtocolData,
  ProtocolError,
  confidence_note,
  map_keypoints,
  parse_spec,
  prepare,
  problem_inputs,
)
from lgd_jax.eval.reports import BENCHMARK_METHOD_LABELS, text_table
from lgd_jax.fitting import lgd, objective
from lgd_jax.fitting.objective import Problem

# The data side lives in lgd_jax.eval.benchmark_data; these names stay importable from here.
__all__ = ["GROUND_TRUTH_2D", "INPUT_2D", "METRICS", "PASS_THROUGH", "PW3D_SPECS", "SPIN_SPECS",
           "ProtocolData", "ProtocolError", "confidence_note", "map_keypoints", "parse_spec",
           "prepare", "problem_inputs", "COLUMN_LABELS", "ExtraMethod", "gt_mesh_points",
           "step_metrics", "reprojection", "run_method", "evaluate_dataset", "table"]

COLUMN_LABELS = {"mpjpe_mm": "MPJPE", "pa_mpjpe_mm": "PA-MPJPE", "pve_mm": "PVE",
                 "mpjpe14_mm": "MPJPE-14", "pa_mpjpe14_mm": "PA-MPJPE-14", "pck150": "PCK",
                 "auc": "AUC", "pa_pck150": "PA-PCK", "pa_auc": "PA-AUC", "reproj": "reproj"}

ExtraMethod = Callable[[Problem, jnp.ndarray, jnp.ndarray, int], jnp.ndarray]


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
    restored: :func:`lgd_jax.eval.restore.restore`'s result.
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
      (scores weigh the objective); see :func:`lgd_jax.fitting.objective.observe`.

  Returns:
    The results dictionary, laid out like :func:`lgd_jax.eval.heldout.evaluate`'s: "dataset",
    "num_samples", "checkpoint", "checkpoint_step", "num_steps", "training_window", "keypoints",
    "protocol" (what was done), "methods" {name: {metric: [value per step 0..M]}}, "wall_time_s".

  Raises:
    ProtocolError, pw3d.Pw3dError, spin.SpinDataError: bad spec, data or missing files.
  """
  name, path = parse_spec(spec)
  if name in PASS_THROUGH:
    raise ProtocolError(f"--data {spec!r}: not a benchmark data set; lgd_jax.eval.heldout.evaluate "
                        "handles synthetic and AMASS samples")
  window, num_steps = _check_settings(restored, num_steps, batch_size)
  problem = restored.problem
  t0 = time.perf_counter()
  data = prepare(problem, name, path, smpl_dir, max_samples, log, confidence)
  log(f"evaluating {restored.path} on {len(data)} {name} samples ({time.perf_counter() - t0:.1f} s "
      f"to load), {num_steps} steps (training window N = {window})")
  fits = _method_fits(restored, num_steps, extra_methods)
  methods, timing = _run_methods(data, problem, fits, num_steps, batch_size, window, log)
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


def _check_settings(restored, num_steps: int | None, batch_size: int) -> tuple[int, int]:
  """(training window N, iterations M: default max(20, 2N)); refuses non-positive M or batch."""
  window = int(restored.config.num_steps)
  num_steps = max(20, 2 * window) if num_steps is None else int(num_steps)
  if num_steps < 1:
    raise ProtocolError(f"--steps: expected a positive integer, got {num_steps}")
  if batch_size < 1:
    raise ProtocolError(f"--batch-size: expected a positive integer, got {batch_size}")
  return window, num_steps


def _method_fits(restored, num_steps: int, extra_methods: dict[str, ExtraMethod] | None) -> dict:
  """{method: fit_fn(kp2d, conf) -> (theta (M+1, B, P), loss or None)}: the learned fit first,
  then the extra methods (their objective is recomputed from theta)."""
  problem = restored.problem
  fits = {"lgd": lambda kp2d, conf: _fit_lgd(restored.learner, restored.variables, problem, kp2d,
                                             conf, num_steps)}
  for method, fn in (extra_methods or {}).items():
    if method in fits:
      raise ProtocolError(f"extra method {method!r}: the name is taken, choose another")
    fits[method] = functools.partial(lambda f, kp2d, conf: (f(problem, kp2d, conf, num_steps),
                                                            None), fn)
  return fits


def _run_methods(data: ProtocolData, problem: Problem, fits: dict, num_steps: int,
                 batch_size: int, window: int, log) -> tuple[dict, dict]:
  """Runs and scores every method: ({method: {metric: [value per step]}}, {method: seconds})."""
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
  return methods, timing


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
  rows = []
  for method, vals in results["methods"].items():
    cells = " | ".join(" ".join(f"{vals[k][s]:{w}.1f}" for k, w in zip(names, widths))
                       for s in steps)
    rows.append(f"{BENCHMARK_METHOD_LABELS.get(method, method)[:21]:22s}" + cells)
  lines += text_table([head1.rstrip(), head2], rows)
  units = "PCK and AUC in %, errors in mm" if "pck150" in names else "errors in mm"
  lines.append(f"({units}; PA = after Procrustes alignment)")
  return "\n".join(lines)
