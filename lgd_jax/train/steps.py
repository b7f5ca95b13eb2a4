"""The training state and the jitted training step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from lgd_jax import parallel
from lgd_jax.build import (
  OptimizerSettings,
  _adam,
  detector_settings,
  learning_rate_schedule,
  optimizer_settings,
)
from lgd_jax.data import augment
from lgd_jax.data.batches import PoseSource, make_batch
from lgd_jax.fitting import lgd
from lgd_jax.fitting.objective import Problem
from lgd_jax.train.losses import loss_weights, step_weights, training_loss
from lgd_jax.train.unrolling import plan_unroll, sample_length, update_buffer
from lgd_jax.train_state import TrainState, UnrollSettings, unroll_settings


class StepSettings(NamedTuple):
  """The static part of a train step (hashable: one compiled program per distinct value)."""

  batch_size: int
  num_steps: int
  augment: ml_collections.FrozenConfigDict
  loss_weights: tuple
  optimizer: OptimizerSettings
  mesh: Mesh | None = None  # split the batch over this mesh's devices
  on_nonfinite: str = "stop"  # "stop": freeze after the first bad step; "skip": skip bad steps
  unroll: UnrollSettings | None = None  # None: the fixed N-step unroll
  detector: augment.DetectorSettings = augment.DetectorSettings()  # detector-like 2D input


# How train_step is compiled (tests compile a trace-counting copy of it the same way).
TRAIN_STEP_JIT = {"static_argnames": ("learner", "settings"), "donate_argnums": (0,)}


def _schedule_count(opt_state) -> jnp.ndarray:
  """The update count of the learning-rate schedule in Adam's state (the schedule's argument)."""
  is_count = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
  return next(s.count for s in jax.tree.leaves(opt_state, is_leaf=is_count) if is_count(s))


@functools.partial(jax.jit, **TRAIN_STEP_JIT)
def train_step(state: TrainState, problem: Problem, source: PoseSource, base_key, *,
               learner: lgd.Learner, settings: StepSettings):
  """One training step: sampling, augmentation, the unrolled fit, the loss, its gradient and the
  Adam update, all in one compiled program; the state's buffers are donated. The step's random
  key is ``fold_in(base_key, state.step)``, made here: the caller passes the same base key every
  step. An "epoch" source gives the rows of step ``state.step`` of its order (the caller sets the
  epoch's order). The metrics include the learning rate this step's update used.

  With ``settings.unroll``: the unroll's length is drawn per batch (the scan runs the longest and
  masks the rest), part of the batch continues stored fits (the state's buffer, updated here) and
  part starts near its ground truth.
  """
  key = jax.random.fold_in(base_key, state.step)
  k_batch, k_drop = jax.random.split(key)
  batch = parallel.constrain_batch(
      make_batch(problem, source, k_batch, settings.batch_size, settings.augment,
                 settings.detector, state.step), settings.mesh)
  weights = dict(settings.loss_weights)
  u = settings.unroll
  plain = u is None or (u.length == "fixed" and not u.late and not u.fixed_point
                        and u.gamma == 1.0)
  if plain:
    length = jnp.int32(settings.num_steps)
  else:
    k_len, k_fp = jax.random.split(jax.random.fold_in(key, 1))
    length = sample_length(k_len, u)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if plain:
      traj, stats = lgd.fit(learner, variables, problem, batch.kp2d, batch.conf,
                            settings.num_steps, train=True, rng=k_drop)
      loss, parts = training_loss(problem, traj, batch, weights)
      return loss, (stats, parts, (traj, None), None)
    k_init, k_fit = jax.random.split(k_drop)
    theta0, stats = lgd.initial_guess(learner, variables, problem, batch.kp2d, batch.conf,
                                      train=True, rng=k_init)
    plan = plan_unroll(problem, batch, theta0, state.buffer, state.step, k_fp, u, learner)
    variables = {"params": params, "batch_stats": stats}
    traj, stats, nominal = lgd.fit(learner, variables, problem, plan.batch.kp2d,
                                   plan.batch.conf, u.scan_steps, train=True, rng=k_fit,
                                   theta0=plan.theta0,
                                   active_steps=None if u.length == "fixed" else length,
                                   start_iteration=plan.start_iteration,
                                   nominal0=plan.nominal0, return_nominal=True)
    step_w = step_weights(length, u.scan_steps + 1, u.gamma)
    loss, parts = training_loss(problem, traj, plan.batch, weights, step_w, plan.fixed_point,
                                length)
    return loss, (stats, parts, (traj, nominal), plan)

  (loss, (stats, parts, (traj, nominal), plan)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  learning_rate = learning_rate_schedule(settings.optimizer)(_schedule_count(state.opt_state))
  updates, opt_state = _adam(settings.optimizer).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  buffer = state.buffer if plan is None else update_buffer(state.buffer, plan, traj.theta[-1],
                                                           length, state.step, u, nominal)
  # A non-finite loss or gradient never reaches the state; "stop" also freezes every later step
  # until the host notices (at the next log or checkpoint) and stops.
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  apply = finite & (state.bad_step < 0) if settings.on_nonfinite == "stop" else finite
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)  # noqa: E731
  step = state.step + 1
  new_state = TrainState(
      step, keep(params, state.params), keep(stats, state.batch_stats),
      keep(opt_state, state.opt_state),
      jnp.where(~finite & (state.bad_step < 0), step, state.bad_step),
      state.num_skipped + (~apply).astype(jnp.int32), keep(buffer, state.buffer))
  last = jnp.minimum(length, traj.loss.shape[0] - 1)
  out = {"loss": loss, **{f"loss_{k}": v for k, v in parts.items()},
         "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(new_state.params),
         "reproj_first": jnp.mean(traj.loss[0]), "reproj_last": jnp.mean(traj.loss[last]),
         "unroll_length": length.astype(jnp.float32),
         "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
  if plan is not None and u.late:
    out["buffer_mean_age"] = jnp.mean(jnp.maximum(buffer.age, 0).astype(jnp.float32))
  return new_state, out


def make_train_step(learner: lgd.Learner, config, steps_per_epoch: int,
                    mesh: Mesh | None = None) -> Callable:
  """``(state, problem, source, base_key) -> (state, metrics)``: :func:`train_step` for a
  config, with the batch split over ``mesh`` when given."""
  u = unroll_settings(config)
  settings = StepSettings(
      int(config.batch_size), int(config.num_steps),
      ml_collections.FrozenConfigDict(config.augment),
      tuple(sorted(loss_weights(config).items())),
      optimizer_settings(config, steps_per_epoch),
      mesh if mesh is not None and mesh.devices.size > 1 else None,
      str(config.get("on_nonfinite", "stop")),
      u, detector_settings(config))
  return functools.partial(train_step, learner=learner, settings=settings)
