"""The classical methods as evaluation runs them: one entry point per method name, per-step metrics,
the SMPLify prior-scale tuning and the benchmark tables' classical anchor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import build
from lgd_jax.build import config_pose_prior
from lgd_jax.data import batches
from lgd_jax.fitting import scoring
from lgd_jax.fitting.lgd import Trajectory
from lgd_jax.fitting.linesearch import GD_LS_INIT_STEP, gd_line_search
from lgd_jax.fitting.objective import Problem
from lgd_jax.fitting.priors import GMMPrior
from lgd_jax.fitting.smplify import PRIOR_SCALES, SPIN_LEARNING_RATE, smplify, smplify_stages

METHODS = ("gd_ls", "smplify")


# ----------------------------------------------------------------------------------------------
# Evaluation, like heldout.eval_baseline.


def run_method(problem: Problem, method: str, settings: dict, theta0: jnp.ndarray,
               kp2d: jnp.ndarray, conf: jnp.ndarray, num_steps: int) -> Trajectory:
  """The trajectory of "gd_ls" or "smplify" from ``theta0`` (each a jitted program).

  Args:
    problem: the :class:`Problem`.
    method: "gd_ls" or "smplify".
    settings: for "gd_ls" {"init_step"} (optional "shrink", "c", "grow"); for "smplify"
      {"prior_scale"} (optional "lr", and "pose_prior": a :class:`GMMPrior`, default
      :func:`default_pose_prior`). The numbers are traced: changing them never recompiles.
    theta0: (B, P) start.
    kp2d: (B, K, 2) normalised target keypoints.
    conf: (B, K) confidences.
    num_steps: M; "smplify" splits it by :func:`smplify_stages`.

  Returns:
    :class:`Trajectory` over steps 0..M.
  """
  if method == "gd_ls":
    extra = {k: float(settings[k]) for k in ("shrink", "c", "grow") if k in settings}
    return gd_line_search(problem, theta0, kp2d, conf, num_steps,
                          init_step=float(settings.get("init_step", GD_LS_INIT_STEP)), **extra)[0]
  if method == "smplify":
    prior = settings.get("pose_prior")
    return smplify(problem, kp2d, conf, smplify_stages(num_steps),
                   pose_prior=build.synthetic_pose_prior() if prior is None else prior,
                   prior_scale=float(settings.get("prior_scale", 1.0)),
                   lr=float(settings.get("lr", SPIN_LEARNING_RATE)), theta0=theta0)
  raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


_trajectory_metrics = jax.jit(scoring.trajectory_metrics)


def eval_method(problem: Problem, method: str, settings: dict, batch: batches.Batch,
                num_steps: int):
  """Per-step metrics of "gd_ls" or "smplify" from the zero start, and the parameters, like
  :func:`lgd_jax.eval.heldout.eval_baseline`.

  Both parts are jitted programs (compiled once per method, batch shape and ``num_steps``).

  Args:
    problem: the :class:`Problem`.
    method: "gd_ls" or "smplify".
    settings: see :func:`run_method`.
    batch: a :class:`batches.Batch`.
    num_steps: M.

  Returns:
    (:func:`scoring.trajectory_metrics` dict of (M+1,) arrays, theta (M+1, B, P)).
  """
  theta0 = jnp.zeros_like(batch.theta)
  traj = run_method(problem, method, settings, theta0, batch.kp2d, batch.conf, num_steps)
  return _trajectory_metrics(problem, traj, batch.theta), traj.theta


def tune_smplify(problem: Problem, batch: batches.Batch, num_steps: int, window: int,
                 candidates=PRIOR_SCALES, pose_prior: GMMPrior | None = None):
  """The global prior scale with the lowest mean PA-MPJPE at step ``window`` on a tuning batch
  (the one ground-truth-informed choice), and the scores."""
  prior = build.synthetic_pose_prior() if pose_prior is None else pose_prior
  scores = {}
  for s in candidates:
    m, _ = eval_method(problem, "smplify", {"prior_scale": float(s), "pose_prior": prior}, batch,
                       num_steps)
    scores[float(s)] = float(m["pa_mpjpe_mm"][window])
  finite = {k: v for k, v in scores.items() if np.isfinite(v)}
  best = min(finite, key=finite.get) if finite else float(candidates[0])
  return best, scores


def protocol_methods(restored, prior_scale: float = 1.0) -> dict:
  """The classical anchor for benchmark tables (:func:`lgd_jax.eval.protocols.evaluate_dataset`'s
  ``extra_methods``): the SMPLify-style fit from the zero pose with SPIN's weights (scaled by
  ``prior_scale``; ground truth is never used to tune it on a benchmark), its iterations split
  half and half between the two stages, and the pose prior fitted to the checkpoint's training
  poses (:func:`default_pose_prior`)."""
  settings = {"prior_scale": float(prior_scale), "pose_prior": config_pose_prior(restored.config)}

  def smplify_fit(problem, kp2d, conf, num_steps):
    theta0 = jnp.zeros(kp2d.shape[:1] + (problem.num_params,), kp2d.dtype)
    return run_method(problem, "smplify", settings, theta0, kp2d, conf, num_steps).theta

  return {"smplify": smplify_fit}
