"""A short classical refinement of a learned fit in the image's own camera (tight 2D fits).

The learned update fits the problem's normalised objective: the official camera (f = 256, 6 m
away) and the unit box of the visible joints. A real photograph is taken by another camera: at
4.5 m instead of 6 m the body's depth extent changes its perspective by a few percent of its
size, several pixels for a person 300 px tall, which no fit in the official camera can remove.
This stage continues from the learned result in the detections' pinhole camera (focal length f,
principal point c) and moves the parameters Θ and the camera translation t together, with Adam,
on

    E(Θ, t) = Σ_k w_k ρ_δ((π(R X_k(Θ) + t) - x_k) / s) / Σ_k w_k
              + λ_stay · mean((Θ - Θ_learned)²) + λ_pose · nll_GMM(body pose) / 69
              + λ_angle · Σ angle prior + λ_shape · mean(β²)

* ρ_δ: the pseudo-Huber penalty of the robust objective (:func:`lgd_jax.fitting.objective.penalty`),
  residuals in units of the person's size s (the longer side of the confident joints' box), so a
  swapped or outlying joint costs about its distance and a tight fit is quadratic; or, with
  ``sigma`` > 0, SMPLify's Geman-McClure penalty σ² d² / (σ² + d²) of each joint's distance d
  (redescending: a joint farther than a few σ stops pulling at all, which ignores a swapped limb
  at the price of a narrower basin);
* the stay term keeps the learned, plausible solution unless the image asks otherwise (the
  learned fit is the prior's mean), the pose prior (SMPLify's max-mixture negative
  log-likelihood, :class:`lgd_jax.fitting.priors.GMMPrior`), SPIN's elbow/knee angle prior and a
  shape
  prior keep the refined body plausible where the image constrains nothing (depth, missing joints).

The keypoints k are those of ``problem``'s keypoint set, which need not be the learned fit's:
detection fitting refines on every joint the detector gives (BODY_25's feet too).

It is the SMPLify recipe with the learned fit as its start and anchor; :data:`DEFAULT_WEIGHTS`
were chosen on synthetic detection sets (``tools/detection_benchmark.py``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgd_jax.fitting import objective, priors
from lgd_jax.fitting.objective import Problem
from lgd_jax.geometry.numerics import full_precision


class RefineWeights(NamedTuple):
  """The refinement's constants (all traced: changing them never recompiles)."""

  delta: float = 0.005  # ρ's δ, in units of the person's size (1.5 px of 300)
  stay: float = 0.1
  # The priors' weights from tools/detection_tuning.py (docs/detection_tuning.md: five sets of 48
  # people, exact, noisy and swapped; 1e-4 each before, pose 1e-3 before the refinement fitted
  # BODY_25's feet).
  pose: float = 3e-3
  angle: float = 1e-3
  shape: float = 1e-3
  lr: float = 0.01
  sigma: float = 0.0  # > 0: Geman-McClure penalty with this scale (person sizes) instead of ρ_δ


DEFAULT_WEIGHTS = RefineWeights()
DEFAULT_STEPS = 100


@full_precision
def camera_keypoints(problem: Problem, theta: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """(..., P), (..., 3) -> (..., K, 3) keypoints in the camera frame X_cam = R X + t."""
  return objective.keypoints_3d(problem, theta) @ problem.camera.rotation.T + t[..., None, :]


def project(points: jnp.ndarray, focal, center) -> jnp.ndarray:
  """Camera-frame points (..., K, 3) -> pixels (..., K, 2); focal (...,), center (..., 2)."""
  z = jnp.maximum(points[..., 2:3], 1e-3)
  return focal[..., None, None] * points[..., :2] / z + center[..., None, :]


def person_size(keypoints: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """The longer side of the confident keypoints' box (...,), pixels (at least 1)."""
  vis = (w > 0)[..., None]
  lo = jnp.min(jnp.where(vis, keypoints, jnp.inf), -2)
  hi = jnp.max(jnp.where(vis, keypoints, -jnp.inf), -2)
  size = jnp.max(jnp.where(jnp.isfinite(hi - lo), hi - lo, 0.0), -1)
  return jnp.maximum(size, 1.0)


def image_error(problem: Problem, theta, t, keypoints, w, focal, center, size, delta,
                sigma=0.0):
  """The data term of one sample: the weighted mean ρ_δ of the size-normalised residuals (or,
  with ``sigma`` > 0, the weighted mean Geman-McClure penalty of the joints' distances)."""
  pix = project(camera_keypoints(problem, theta, t), focal, center)
  r = (pix - keypoints) / size
  huber = jnp.sum(objective.penalty(r, "robust", delta), -1) / 2.0
  d2 = jnp.sum(jnp.square(r), -1)
  s2 = jnp.maximum(jnp.square(sigma), 1e-12)
  gmof = s2 * d2 / (s2 + d2)
  pen = jnp.where(sigma > 0, gmof, huber)
  return jnp.sum(w * pen) / jnp.maximum(jnp.sum(w), 1.0)


def energy(problem: Problem, theta, t, anchor, keypoints, w, focal, center, size, prior,
           weights: RefineWeights):
  """E(Θ, t) of one sample (see the module docstring)."""
  p = objective.split(problem, theta)
  e = image_error(problem, theta, t, keypoints, w, focal, center, size, weights.delta,
                  weights.sigma)
  e = e + weights.stay * jnp.mean(jnp.square(theta - anchor))
  if prior is not None:
    e = e + weights.pose * prior.nll(p.pose[3:]) / 69.0
  e = e + weights.angle * jnp.sum(priors.angle_prior(p.pose))
  return e + weights.shape * jnp.mean(jnp.square(p.betas))


@functools.partial(jax.jit, static_argnames=("num_steps",))
def refine(problem: Problem, theta0: jnp.ndarray, t0: jnp.ndarray, keypoints: jnp.ndarray,
           w: jnp.ndarray, focal: jnp.ndarray, center: jnp.ndarray, num_steps: int,
           prior=None, weights: RefineWeights = DEFAULT_WEIGHTS):
  """Refines a batch of fits in their image's camera.

  Args:
    problem: the fitting problem (body model, keypoint set, camera rotation).
    theta0: (B, P) the learned fit (also the stay term's anchor).
    t0: (B, 3) its camera translation (e.g. :func:`lgd_jax.eval.detections.place`'s).
    keypoints: (B, K, 2) detections, pixels.
    w: (B, K) weights (0 = missing).
    focal: (B,) focal lengths, pixels; center: (B, 2) principal points.
    num_steps: Adam iterations (static).
    prior: a :class:`lgd_jax.fitting.priors.GMMPrior`, or None for no pose prior.
    weights: :class:`RefineWeights`.

  Returns:
    (theta (B, P), t (B, 3), image_error (num_steps + 1, B): the data term per iteration).
  """
  size = person_size(keypoints, w)
  anchor = jax.lax.stop_gradient(theta0)
  fn = jax.vmap(lambda th, tt, a, k, ww, f, c, s: energy(problem, th, tt, a, k, ww, f, c, s, prior,
                                                         weights))
  data_fn = jax.vmap(lambda th, tt, k, ww, f, c, s: image_error(problem, th, tt, k, ww, f, c, s,
                                                                weights.delta, weights.sigma))
  grad_fn = jax.grad(lambda th, tt: jnp.sum(fn(th, tt, anchor, keypoints, w, focal, center, size)),
                     argnums=(0, 1))
  tx = optax.adam(weights.lr)

  def step(carry, _):
    params, state = carry
    g = grad_fn(*params)
    upd, state = tx.update(g, state, params)
    params = optax.apply_updates(params, upd)
    return (params, state), data_fn(*params, keypoints, w, focal, center, size)

  params = (theta0, t0)
  (params, _), hist = jax.lax.scan(step, (params, tx.init(params)), None, length=num_steps)
  first = data_fn(theta0, t0, keypoints, w, focal, center, size)
  return params[0], params[1], jnp.concatenate([first[None], hist], 0)

