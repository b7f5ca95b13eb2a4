"""Gradient descent with a backtracking (Armijo) line search, per sample, on the fitting objective.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lgd_jax.fitting import lgd, objective
from lgd_jax.fitting.objective import Problem

# Line search defaults.
GD_LS_INIT_STEP = 100.0  # first trial step; the gradient of the mean-L1 objective is small
GD_LS_SHRINK = 0.5
GD_LS_ARMIJO_C = 1e-4
GD_LS_MAX_BACKTRACKS = 20  # 2**-20 of the first trial at the smallest
GD_LS_GROW = 2.0  # the next iteration's first trial, relative to the last accepted step


# ----------------------------------------------------------------------------------------------
# Gradient descent with a backtracking (Armijo) line search.


class LineSearchInfo(NamedTuple):
  """Per-iteration line-search statistics (leading axis: iteration 0..M-1).

  Attributes:
    step_size: (M, B) accepted step α (0 where no trial was accepted and Θ stayed).
    num_evals: (M, B) objective evaluations of the iteration for that sample: 1 value and
      gradient plus the trials it needed (the parallel form always does every trial).
    accepted: (M, B) whether the Armijo condition held for a trial.
    batch_trials: (M,) batched forward passes the iteration ran (the while loop runs until the
      slowest sample accepts).
  """

  step_size: jnp.ndarray
  num_evals: jnp.ndarray
  accepted: jnp.ndarray
  batch_trials: jnp.ndarray


def _values(problem: Problem, theta, kp2d, conf):
  """The objective of every sample, forward only: (B, P) -> (B,)."""
  return jax.vmap(lambda t, x, c: objective.objective(problem, t, x, c)[0])(theta, kp2d, conf)


def _backtrack_while(problem, theta, grad, f0, kp2d, conf, alpha0, shrink, c, max_backtracks):
  gg = jnp.sum(jnp.square(grad), -1)
  b = theta.shape[0]

  def cond(s):
    k, _, done, *_ = s
    return (k <= max_backtracks) & ~jnp.all(done)

  def body(s):
    k, alpha, done, theta_new, trials = s
    cand = theta - alpha[:, None] * grad
    ok = (_values(problem, cand, kp2d, conf) <= f0 - c * alpha * gg) & ~done
    theta_new = jnp.where(ok[:, None], cand, theta_new)
    trials = trials + (~done).astype(jnp.int32)
    done = done | ok
    alpha = jnp.where(done, alpha, alpha * shrink)
    return k + 1, alpha, done, theta_new, trials

  init = (jnp.int32(0), alpha0, jnp.zeros(b, bool), theta, jnp.zeros(b, jnp.int32))
  k, alpha, done, theta_new, trials = jax.lax.while_loop(cond, body, init)
  return theta_new, alpha, done, trials, k


def _backtrack_parallel(problem, theta, grad, f0, kp2d, conf, alpha0, shrink, c, max_backtracks):
  gg = jnp.sum(jnp.square(grad), -1)
  powers = shrink ** jnp.arange(max_backtracks + 1, dtype=theta.dtype)
  alphas = alpha0[None] * powers[:, None]  # (T, B)
  cands = theta[None] - alphas[..., None] * grad[None]
  f = jax.vmap(lambda t: _values(problem, t, kp2d, conf))(cands)
  ok = f <= f0[None] - c * alphas * gg[None]
  first = jnp.argmax(ok, axis=0)
  done = jnp.any(ok, axis=0)
  cols = jnp.arange(theta.shape[0])
  theta_new = jnp.where(done[:, None], cands[first, cols], theta)
  alpha = jnp.where(done, alphas[first, cols], alphas[-1] * shrink)
  trials = jnp.full(theta.shape[:1], max_backtracks + 1, jnp.int32)
  return theta_new, alpha, done, trials, jnp.int32(max_backtracks + 1)


@functools.partial(jax.jit, static_argnames=("num_steps", "max_backtracks", "parallel"))
def gd_line_search(problem: Problem, theta0: jnp.ndarray, kp2d: jnp.ndarray, conf: jnp.ndarray,
                   num_steps: int, init_step=GD_LS_INIT_STEP, shrink=GD_LS_SHRINK,
                   c=GD_LS_ARMIJO_C, max_backtracks: int = GD_LS_MAX_BACKTRACKS,
                   grow=GD_LS_GROW, parallel: bool = False):
  """Gradient descent with a backtracking Armijo line search, per sample.

  Iteration n tries α = α_n, α_n·shrink, α_n·shrink², ... (at most ``max_backtracks`` + 1 trials)
  and accepts the first with f(Θ - α g) ≤ f(Θ) - c α ||g||²; a sample with no accepted trial
  stays where it is, so the objective never increases. α_0 = ``init_step``,
  α_{n+1} = ``grow`` × (the accepted, or last tried, step).

  Args:
    problem: the objective's :class:`Problem`.
    theta0: (B, P) starting parameters.
    kp2d: (B, K, 2) normalised target keypoints.
    conf: (B, K) confidences.
    num_steps: M iterations (static).
    init_step: the first trial step.
    shrink: factor per backtrack, in (0, 1).
    c: Armijo's sufficient-decrease constant.
    max_backtracks: backtracks per iteration at most (static).
    grow: the next iteration's first trial relative to the last step.
    parallel: evaluate all trials at once instead of a while loop (static; see the module
      docstring for why the loop is the default).

  Returns:
    (:class:`Trajectory` over steps 0..M, :class:`LineSearchInfo`).
  """
  search = _backtrack_parallel if parallel else _backtrack_while
  alpha0 = jnp.full(theta0.shape[:1], init_step, theta0.dtype)

  def step(carry, _):
    theta, alpha = carry
    grad, out = lgd.grad_and_record(problem, theta, kp2d, conf)
    theta_new, alpha, done, trials, k = search(problem, theta, grad, out[1], kp2d, conf, alpha,
                                               shrink, c, max_backtracks)
    info = LineSearchInfo(jnp.where(done, alpha, 0.0), 1 + trials, done, k)
    return (theta_new, grow * alpha), (out, info)

  (theta, _), (hist, info) = jax.lax.scan(step, (theta0, alpha0), None, length=num_steps)
  return lgd.finish_trajectory(problem, hist, theta, kp2d, conf), info
