"""A SMPLify-style two-stage fit (SPIN's batched SMPLify) on this project's objective.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgd_jax import body
from lgd_jax.fitting import lgd, objective
from lgd_jax.fitting.lgd import Trajectory
from lgd_jax.fitting.objective import Problem
from lgd_jax.fitting.priors import GMMPrior, angle_prior, gmof
from lgd_jax.geometry import camera, rotations

# SMPLify (SPIN) defaults.
SPIN_LEARNING_RATE = 1e-2
SPIN_SIGMA_PX = 100.0
SPIN_POSE_PRIOR_WEIGHT = 4.78
SPIN_SHAPE_PRIOR_WEIGHT = 5.0
SPIN_ANGLE_PRIOR_WEIGHT = 15.2
SPIN_PIXELS_PER_UNIT = 200.0  # a person's longer side in SPIN's 224-pixel crops
BODY_HEIGHT_M = 1.7  # a person's extent, for the focal-normalised units of a fitted translation
STAGE1_JOINTS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
YAW_CANDIDATES = 8
PRIOR_SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)  # the global prior scale's tuning grid


# ----------------------------------------------------------------------------------------------
# The SMPLify-style fit.


class SmplifyWeights(NamedTuple):
  """SPIN's loss constants in the objective's 2D units (the loss uses the weights squared)."""

  sigma: float | jnp.ndarray
  pose: float | jnp.ndarray
  shape: float | jnp.ndarray
  angle: float | jnp.ndarray


def pixels_per_unit(problem: Problem) -> float:
  """SPIN's crop pixels per unit of the objective's 2D frame (see the module docstring)."""
  if not problem.fit_translation:
    return SPIN_PIXELS_PER_UNIT
  return SPIN_PIXELS_PER_UNIT * camera.OFFICIAL_DISTANCE / BODY_HEIGHT_M


def spin_weights(problem: Problem, prior_scale=1.0) -> SmplifyWeights:
  """SPIN's sigma and prior weights rescaled to ``problem``'s units; the priors times
  sqrt(``prior_scale``) (so their squared weights scale by ``prior_scale``)."""
  s = pixels_per_unit(problem)
  w = jnp.sqrt(jnp.asarray(prior_scale, jnp.float32)) / s
  return SmplifyWeights(SPIN_SIGMA_PX / s, SPIN_POSE_PRIOR_WEIGHT * w,
                        SPIN_SHAPE_PRIOR_WEIGHT * w, SPIN_ANGLE_PRIOR_WEIGHT * w)


def _joint_mask(problem: Problem, names: Sequence[str]) -> np.ndarray:
  kp_names = body.get_keypoint_set(problem.kpset).names
  mask = np.array([n in names for n in kp_names], np.float32)
  if mask.sum() < 2:  # a set without shoulders and hips: orient on every keypoint
    mask[:] = 1.0
  return mask


def stage1_objective(problem: Problem, theta, kp2d, conf, mask):
  """SPIN's camera-stage loss for one sample: the summed squared re-projection error of the
  shoulders and hips (``mask``), both sides normalised over those joints alone."""
  c = conf * mask
  pred = objective.to_2d(problem, objective.keypoints_3d(problem, theta), c)
  target = kp2d if problem.fit_translation else camera.normalize_unit_box(kp2d, c)
  return jnp.sum(c[:, None] * jnp.square(pred - target))


def smplify_objective(problem: Problem, theta, kp2d, conf, prior: GMMPrior,
                      weights: SmplifyWeights):
  """SPIN's body-fitting loss for one sample, in the objective's units.

  Args:
    problem: the :class:`Problem`.
    theta: (P,) parameters.
    kp2d: (K, 2) normalised target keypoints.
    conf: (K,) confidences.
    prior: the pose prior.
    weights: :class:`SmplifyWeights`.

  Returns:
    Σ_k conf_k² Σ_xy ρ_σ(pred - target) + w_pose² nll(body pose) + w_angle² Σ angle prior
    + w_shape² ||β||².
  """
  pred = objective.to_2d(problem, objective.keypoints_3d(problem, theta), conf)
  data = jnp.sum(jnp.square(conf) * jnp.sum(gmof(pred - kp2d, weights.sigma), -1))
  p = objective.split(problem, theta)
  return (data + jnp.square(weights.pose) * prior.nll(p.pose[3:])
          + jnp.square(weights.angle) * jnp.sum(angle_prior(p.pose))
          + jnp.square(weights.shape) * jnp.sum(jnp.square(p.betas)))


def _yaw_starts(problem: Problem, theta0, num: int):
  """(num, B, P): ``theta0`` with its root turned by 2πk/num about the vertical axis."""
  yaws = 2.0 * jnp.pi * jnp.arange(num, dtype=theta0.dtype) / num
  zero = jnp.zeros(theta0.shape[:1], theta0.dtype)
  turn = lambda y: theta0.at[:, :3].set(  # noqa: E731
      rotations.rotate_root(theta0[:, :3], zero + y, zero, zero))
  return jax.vmap(turn)(yaws).at[0].set(theta0)  # the start itself, not a round trip of it


def smplify(problem: Problem, kp2d: jnp.ndarray, conf: jnp.ndarray,
            num_iters: tuple[int, int] = (100, 100), pose_prior: GMMPrior | None = None,
            prior_scale=1.0, lr=SPIN_LEARNING_RATE, theta0: jnp.ndarray | None = None,
            yaw_candidates: int = YAW_CANDIDATES, weights: SmplifyWeights | None = None):
  """A SMPLify-style two-stage fit, SPIN's batched SMPLify on this objective.

  Args:
    problem: the objective's :class:`Problem`.
    kp2d: (B, K, 2) normalised target keypoints.
    conf: (B, K) confidences.
    num_iters: (stage 1, stage 2) Adam iterations (static).
    pose_prior: a :class:`GMMPrior` (e.g. ``GMMPrior.load("gmm_08.pkl")``, or
      :func:`lgd_jax.build.synthetic_pose_prior`, what :func:`lgd_jax.eval.methods.run_method`
      uses when none is given); only None when stage 2 has no iterations.
    prior_scale: one global factor on the squared prior weights.
    lr: Adam's learning rate (SPIN: 1e-2).
    theta0: (B, P) start; None = zeros (the zero pose and mean shape).
    yaw_candidates: stage 1 starts from the best of this many turns of ``theta0`` about the
      vertical axis (static; 1 = ``theta0`` itself).
    weights: explicit :class:`SmplifyWeights`; None = :func:`spin_weights` with ``prior_scale``.

  Returns:
    :class:`Trajectory` over steps 0..M (M = stage 1 + stage 2) with the official objective's
    loss and gradient norm; step 0 is ``theta0``.
  """
  if pose_prior is None and num_iters[1] > 0:
    raise ValueError("smplify: stage 2 needs a pose_prior (a GMMPrior: "
                     "GMMPrior.load('gmm_08.pkl'), "
                     "lgd_jax.build.config_pose_prior(config) or build.synthetic_pose_prior())")
  return _smplify(problem, kp2d, conf, tuple(num_iters), pose_prior, prior_scale, lr, theta0,
                  yaw_candidates, weights)


@functools.partial(jax.jit, static_argnames=("num_iters", "yaw_candidates"))
def _smplify(problem, kp2d, conf, num_iters, prior, prior_scale, lr, theta0, yaw_candidates,
             weights):
  s1, s2 = num_iters
  w = spin_weights(problem, prior_scale) if weights is None else weights
  if theta0 is None:
    theta0 = jnp.zeros(kp2d.shape[:1] + (problem.num_params,), kp2d.dtype)
  mask = jnp.asarray(_joint_mask(problem, STAGE1_JOINTS))
  s1_fn = lambda t, x, c: stage1_objective(problem, t, x, c, mask)  # noqa: E731
  s2_fn = lambda t, x, c: smplify_objective(problem, t, x, c, prior, w)  # noqa: E731

  # Stage 1 moves the global orientation (and translation) only.
  free = np.zeros(problem.num_params, np.float32)
  free[:3] = 1.0
  if problem.fit_translation:
    free[-3:] = 1.0
  free = jnp.asarray(free)

  start = theta0
  if yaw_candidates > 1:
    cands = _yaw_starts(problem, theta0, yaw_candidates)
    vals = jax.vmap(lambda t: jax.vmap(s1_fn)(t, kp2d, conf))(cands)  # (Y, B)
    start = cands[jnp.argmin(vals, 0), jnp.arange(theta0.shape[0])]

  def run_stage(theta, fn, length, grad_mask):
    tx = optax.adam(lr, b1=0.9, b2=0.999)
    # Each sample's loss depends on its own Θ only: the gradient of the sum is per sample.
    grad_fn = jax.grad(lambda t: jnp.sum(jax.vmap(fn)(t, kp2d, conf)))

    def step(carry, _):
      theta, state = carry
      g = grad_fn(theta) * grad_mask
      upd, state = tx.update(g, state, theta)
      theta = optax.apply_updates(theta, upd)
      return (theta, state), lgd.grad_and_record(problem, theta, kp2d, conf)[1]

    (theta, _), hist = jax.lax.scan(step, (theta, tx.init(theta)), None, length=length)
    return theta, hist

  _, first = lgd.grad_and_record(problem, theta0, kp2d, conf)
  theta, hist1 = run_stage(start, s1_fn, s1, free)
  parts = [jax.tree.map(lambda a: a[None], first), hist1]
  if s2 > 0:  # without stage 2 there may be no prior to trace
    parts.append(run_stage(theta, s2_fn, s2, jnp.ones_like(free))[1])
  return Trajectory(*jax.tree.map(lambda *h: jnp.concatenate(h, 0), *parts))


def smplify_stages(num_steps: int) -> tuple[int, int]:
  """How ``num_steps`` iterations are split between the stages: half and half (SPIN: 100 + 100)."""
  return num_steps // 2, num_steps - num_steps // 2
