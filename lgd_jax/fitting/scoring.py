"""Scores of a fit against the ground truth: per-step MPJPE and PA-MPJPE on the SMPL joints, 2D
error, and means over batches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import body, metrics
from lgd_jax.fitting import lgd, objective
from lgd_jax.fitting.objective import Problem

# ----------------------------------------------------------------------------------------------
# Evaluation of a batch (used by validation and evaluate.py).


def smpl_joints(problem: Problem, theta: jnp.ndarray) -> jnp.ndarray:
  """The 24 SMPL joints (..., 24, 3) of parameters (..., P), in the body frame."""
  p = objective.split(problem, theta)
  return body.keypoints(problem.model, p.pose, p.betas, None, "smpl24")


def trajectory_metrics(problem: Problem, traj: lgd.Trajectory, gt_theta: jnp.ndarray) -> dict:
  """Per-step means over the batch: mpjpe_mm, pa_mpjpe_mm, pck150, auc, reproj; each (M+1,)."""
  gt = smpl_joints(problem, gt_theta)
  pred = jax.vmap(lambda t: smpl_joints(problem, t))(traj.theta)
  return {"mpjpe_mm": metrics.mpjpe(pred, gt[None]).mean(-1),
          "pa_mpjpe_mm": metrics.pa_mpjpe(pred, gt[None]).mean(-1),
          "pck150": metrics.pck(pred, gt[None]).mean(-1),
          "auc": metrics.auc(pred, gt[None]).mean(-1),
          "reproj": traj.loss.mean(-1)}


@functools.partial(jax.jit, static_argnames=("learner", "num_steps"))
def eval_lgd(learner, variables, problem, batch, num_steps: int):
  """Per-step metrics of the learned fit (inference mode) and its parameters (M+1, B, P); ``batch``
  has the ground truth ``theta`` and the inputs ``kp2d`` and ``conf`` (a data.batches.Batch)."""
  traj, _ = lgd.fit(learner, variables, problem, batch.kp2d, batch.conf, num_steps, train=False)
  return trajectory_metrics(problem, traj, batch.theta), traj.theta


def mean_over_batches(results: list[dict], sizes: list[int]) -> dict:
  total = sum(sizes)
  return {k: (sum(np.asarray(r[k], np.float64) * n for r, n in zip(results, sizes)) / total)
          for k in results[0]}
