"""Which unroll each training batch runs: its length (fixed or sampled, masked so the step compiles
once), its starts (zero pose, late-iteration states from the fit buffer, near-truth fixed-point
samples) and the buffer of states earlier fits reached.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lgd_jax.data.batches import Batch
from lgd_jax.fitting import lgd
from lgd_jax.fitting.objective import Problem
from lgd_jax.train_state import FitBuffer, UnrollSettings


def sample_length(key, u: UnrollSettings):
  """The number of steps of this batch's unroll: a traced int32 scalar in [min, max]."""
  if u.length == "fixed" or u.min_steps == u.max_steps:
    return jnp.int32(u.max_steps)
  if u.length == "uniform":
    return jax.random.randint(key, (), u.min_steps, u.max_steps + 1)
  lo, hi = math.log(u.min_steps), math.log(u.max_steps + 1)
  n = jnp.floor(jnp.exp(jax.random.uniform(key, (), minval=lo, maxval=hi))).astype(jnp.int32)
  return jnp.clip(n, u.min_steps, u.max_steps)


def _rows(a, start, n):
  return jax.lax.dynamic_slice_in_dim(a, start, n, axis=0)


def _set_rows(a, rows, start):
  return jax.lax.dynamic_update_slice_in_dim(a, rows, start, axis=0)


class UnrollPlan(NamedTuple):
  """What a train step fits: the batch (ground truth and input) and where each sample starts."""

  batch: Batch
  theta0: jnp.ndarray  # (B, P) starting states (fresh rows: the learner's initial guess)
  start_iteration: jnp.ndarray  # (B,) iteration index of theta0
  continued: jnp.ndarray  # (B,) bool: the row continues a stored fit
  fixed_point: jnp.ndarray  # (B,) bool: the row starts near its ground truth
  nominal0: lgd.NominalState | None = None  # the nominal term's starting state (None: fresh)


def plan_unroll(problem: Problem, batch: Batch, theta0, buffer: FitBuffer | None, step, key,
                u: UnrollSettings, learner: lgd.Learner | None = None) -> UnrollPlan:
  """Replaces the batch's last rows by continued fits and fixed-point starts (all traced).

  Layout: [fresh | late (``u.late`` rows) | fixed point (``u.fixed_point`` rows)]. A continued
  fit also continues its nominal term's state (``learner``'s, when it keeps one); the other rows
  start it afresh.
  """
  b = batch.theta.shape[0]
  nominal0 = None if learner is None else lgd.nominal_init(learner, theta0)
  start_it = jnp.zeros((b,), jnp.int32)
  continued = jnp.zeros((b,), bool)
  fixed = jnp.zeros((b,), bool)
  lo_fp = b - u.fixed_point
  if u.late:
    lo = lo_fp - u.late
    slot = (step % u.rounds) * u.late
    valid = (_rows(buffer.age, slot, u.late) >= 0) & (_rows(buffer.age, slot, u.late) < u.max_age)

    def take(fresh, stored):
      rows = jnp.where(valid.reshape((-1,) + (1,) * (fresh.ndim - 1)),
                       _rows(stored, slot, u.late), fresh[lo:lo_fp])
      return fresh.at[lo:lo_fp].set(rows)

    batch = batch.replace(theta=take(batch.theta, buffer.theta_gt),
                          kp3d=take(batch.kp3d, buffer.kp3d),
                          kp2d=take(batch.kp2d, buffer.kp2d), conf=take(batch.conf, buffer.conf))
    theta0 = take(theta0, jax.lax.stop_gradient(buffer.theta))
    if nominal0 is not None:
      nominal0 = jax.tree.map(take, nominal0, buffer.nominal)
    start_it = start_it.at[lo:lo_fp].set(jnp.where(valid, _rows(buffer.age, slot, u.late), 0))
    continued = continued.at[lo:lo_fp].set(valid)
  if u.fixed_point:
    k_noise, k_age = jax.random.split(key)
    gt = batch.theta[lo_fp:]
    noise = u.fixed_point_noise * jax.random.normal(k_noise, gt.shape, gt.dtype)
    theta0 = theta0.at[lo_fp:].set(gt + noise)
    age = jax.random.randint(k_age, (u.fixed_point,), 0, max(u.max_age, u.max_steps) + 1)
    start_it = start_it.at[lo_fp:].set(age)
    fixed = fixed.at[lo_fp:].set(True)
  return UnrollPlan(batch, theta0, start_it, continued, fixed, nominal0)


def update_buffer(buffer: FitBuffer | None, plan: UnrollPlan, final_theta, length, step,
                  u: UnrollSettings, final_nominal=None) -> FitBuffer | None:
  """Writes the late rows' reached states (their nominal states too, and their samples) back
  into the visited slots."""
  if not u.late:
    return buffer
  b = plan.batch.theta.shape[0]
  lo, hi = b - u.fixed_point - u.late, b - u.fixed_point
  slot = (step % u.rounds) * u.late
  put = lambda a, rows: _set_rows(a, jax.lax.stop_gradient(rows), slot)  # noqa: E731
  return FitBuffer(put(buffer.theta_gt, plan.batch.theta[lo:hi]),
                   put(buffer.kp3d, plan.batch.kp3d[lo:hi]),
                   put(buffer.kp2d, plan.batch.kp2d[lo:hi]),
                   put(buffer.conf, plan.batch.conf[lo:hi]),
                   put(buffer.theta, final_theta[lo:hi]),
                   put(buffer.age, plan.start_iteration[lo:hi] + length),
                   None if final_nominal is None else jax.tree.map(
                       lambda a, rows: put(a, rows[lo:hi]), buffer.nominal, final_nominal))
