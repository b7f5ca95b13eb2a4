"""The training loss over the unrolled fit: 2D and 3D keypoint terms, parameter terms, the per-step
weights and the fixed-point term.
"""

from __future__ import annotations

import jax.numpy as jnp

from lgd_jax.data.batches import Batch
from lgd_jax.fitting import lgd, objective
from lgd_jax.fitting.objective import Problem


def step_weights(length, num_states: int, gamma: float) -> jnp.ndarray:
  """(num_states,) weights of the states 0..M of an unroll of ``length`` steps: gamma^(n-k) on
  the states k <= n, 0 after, normalised to sum 1."""
  k = jnp.arange(num_states)
  w = jnp.where(k <= length, jnp.power(gamma, (length - k).astype(jnp.float32)), 0.0)
  return w / jnp.sum(w)


# ----------------------------------------------------------------------------------------------
# The loss and the train step.


def training_loss(problem: Problem, traj: lgd.Trajectory, batch: Batch, weights,
                  step_w=None, fixed_point=None, length=None) -> tuple:
  """The official training loss over the steps 0..n (initial guess included).

  0.3 · weighted L1(2D) + 0.3 · weighted L1(3D keypoints) + 1.0 · L1(θ) + 1.0 · L1(β)
  (+ weight · L1(transl) when the translation is fitted); the weights come from ``weights``.
  ``step_w`` (M+1,) weighs the states (default: the mean over all of them). With
  ``fixed_point`` (B,) bool and ``weights["update"]`` > 0, the mean |Θ_{k+1} - Θ_k| of the
  fixed-point rows over the ``length`` steps taken is added: near the truth the update should
  vanish.
  """
  jw = jnp.asarray(objective.joint_weights(problem.kpset))[:, None]
  p = objective.split(problem, traj.theta)
  gt = objective.split(problem, batch.theta)
  # The 2D target is the rendering of the truth (for clean inputs exactly the input), not the
  # detector-like input: the fit should find the true body, not the noise.
  target2d = objective.to_2d(problem, batch.kp3d, batch.conf)
  parts = {
      "kp2d": jnp.mean(jw * jnp.abs(traj.kp2d - target2d), axis=(1, 2, 3)),
      "kp3d": jnp.mean(jw * jnp.abs(traj.kp3d - batch.kp3d), axis=(1, 2, 3)),
      "pose": jnp.mean(jnp.abs(p.pose - gt.pose), axis=(1, 2)),
      "betas": jnp.mean(jnp.abs(p.betas - gt.betas), axis=(1, 2)),
  }
  if problem.fit_translation:
    parts["transl"] = jnp.mean(jnp.abs(p.transl - gt.transl), axis=(1, 2))
  m1 = traj.theta.shape[0]
  step_w = jnp.full((m1,), 1.0 / m1) if step_w is None else step_w
  out = {k: jnp.sum(step_w * v) for k, v in parts.items()}
  loss = sum(weights[k] * v for k, v in out.items())
  if fixed_point is not None and weights.get("update", 0.0) > 0:
    steps = jnp.mean(jnp.abs(jnp.diff(traj.theta, axis=0)), axis=-1)  # (M, B)
    taken = (jnp.arange(m1 - 1) < (m1 - 1 if length is None else length))[:, None]
    fp = fixed_point[None, :] & taken
    out["update"] = jnp.sum(jnp.where(fp, steps, 0.0)) / jnp.maximum(jnp.sum(fp), 1)
    loss = loss + weights["update"] * out["update"]
  return loss, out


def loss_weights(config) -> dict:
  return {k: float(v) for k, v in config.loss.items()}
