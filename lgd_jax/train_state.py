"""What a training checkpoint holds, and the settings that shape it: :class:`TrainState` (step,
networks, Adam's moments, the non-finite bookkeeping, the fit buffer), :class:`FitBuffer` (fits
in progress continued by later steps) and :class:`UnrollSettings` (the config's ``unroll`` group).

It sits beside :mod:`lgd_jax.build`, below both :mod:`lgd_jax.train` (which saves states) and
:mod:`lgd_jax.eval` (which restores them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from lgd_jax.errors import ConfigError
from lgd_jax.fitting import lgd
from lgd_jax.fitting.objective import Problem

# ----------------------------------------------------------------------------------------------
# How the training unrolls are drawn: their length, continued fits and fixed-point samples.

UNROLL_LENGTHS = ("fixed", "uniform", "log_uniform")


class UnrollSettings(NamedTuple):
  """The static description of a training unroll (see the ``unroll`` config group).

  Attributes:
    length: "fixed" (always N = ``num_steps``), "uniform" or "log_uniform" over
      [min_steps, max_steps], one length per batch.
    min_steps, max_steps: the range of a sampled length; the scan always runs ``max_steps``
      steps and masks those past the sampled length, so the length never recompiles the step.
    late: samples per batch that continue a stored fit (the buffer); 0 = none.
    rounds: the buffer holds ``late`` × ``rounds`` fits, visited in turn.
    max_age: a stored fit that has run this many iterations is replaced by a fresh one.
    fixed_point: samples per batch that start near their own ground truth.
    fixed_point_noise: standard deviation of that start's offset (radians for the pose, units
      of β for the shape).
    gamma: weight of the state after k of n steps: gamma^(n - k) (1 = the mean over the steps).
  """

  length: str
  min_steps: int
  max_steps: int
  late: int
  rounds: int
  max_age: int
  fixed_point: int
  fixed_point_noise: float
  gamma: float

  @property
  def scan_steps(self) -> int:
    return self.max_steps

  @property
  def buffer_size(self) -> int:
    return self.late * self.rounds


def unroll_settings(config) -> UnrollSettings:
  """The :class:`UnrollSettings` of ``config`` (defaults: the published fixed N-step unroll)."""
  u = config.get("unroll", ml_collections.ConfigDict())
  n = int(config.num_steps)
  length = u.get("length", "fixed")
  if length not in UNROLL_LENGTHS:
    raise ConfigError(f"unroll.length: expected one of {UNROLL_LENGTHS}, got {length!r}")
  max_steps = int(u.get("max_steps", 0)) or n
  min_steps = int(u.get("min_steps", 1))
  if length == "fixed":
    min_steps = max_steps = n
  if not 1 <= min_steps <= max_steps:
    raise ConfigError(f"unroll.min_steps, unroll.max_steps: expected 1 <= min_steps <= max_steps, "
                      f"got {min_steps} and {max_steps}")
  b = int(config.batch_size)
  fractions = {k: float(u.get(k, 0.0)) for k in ("late_fraction", "fixed_point_fraction")}
  for k, v in fractions.items():
    if not 0.0 <= v < 1.0:
      raise ConfigError(f"unroll.{k}: expected a fraction in [0, 1), got {v!r}")
  late = int(round(fractions["late_fraction"] * b))
  fixed = int(round(fractions["fixed_point_fraction"] * b))
  if late + fixed >= b:
    raise ConfigError(f"unroll.late_fraction + unroll.fixed_point_fraction: expected a sum below "
                      f"1 (they leave no fresh samples in a batch of {b})")
  rounds = int(u.get("buffer_rounds", 8))
  max_age = int(u.get("max_age", 100))
  if late and (rounds < 1 or max_age < 1):
    raise ConfigError(f"unroll.buffer_rounds, unroll.max_age: expected positive integers, got "
                      f"{rounds} and {max_age}")
  gamma = float(u.get("loss_gamma", 1.0))
  if not gamma > 0:
    raise ConfigError(f"unroll.loss_gamma: expected a positive number, got {gamma!r}")
  return UnrollSettings(length, min_steps, max_steps, late, rounds, max_age, fixed,
                        float(u.get("fixed_point_noise", 0.05)), gamma)


class FitBuffer(flax.struct.PyTreeNode):
  """Fits in progress, continued by later train steps (device-resident, checkpointed).

  Each slot holds a training sample (its ground truth and 2D input) and the state Θ its fit has
  reached after ``age`` learned iterations; ``age`` < 0 marks an empty slot. Train step t visits
  the slots [(t mod rounds) · late, +late): a slot that is empty or older than ``max_age`` takes a
  fresh sample, the others continue from their stored state, and the state reached is written
  back. So the network is trained on the states of iterations 0..max_age of its own fits, the
  "never-ending" persistent unrolls of learned-optimiser training (google/learned_optimization's
  truncated unrolls of persistent inner problems; Metz et al. 2019 on truncation bias).
  """

  theta_gt: jnp.ndarray  # (S, P)
  kp3d: jnp.ndarray  # (S, K, 3)
  kp2d: jnp.ndarray  # (S, K, 2)
  conf: jnp.ndarray  # (S, K)
  theta: jnp.ndarray  # (S, P)
  age: jnp.ndarray  # (S,) int32
  # The nominal term's state of each fit (lgd.NominalState, "adam"), or None.
  nominal: Any = None


def empty_buffer(problem: Problem, size: int, learner: lgd.Learner | None = None
                 ) -> FitBuffer | None:
  """An empty buffer of ``size`` slots (None for 0), with room for ``learner``'s nominal state."""
  if size == 0:
    return None
  k, p = problem.num_keypoints, problem.num_params
  z = lambda *shape: jnp.zeros((size,) + shape, jnp.float32)  # noqa: E731
  nominal = None if learner is None else lgd.nominal_init(learner, z(p))
  return FitBuffer(z(p), z(k, 3), z(k, 2), z(k), z(p), jnp.full((size,), -1, jnp.int32),
                   nominal)


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs.

  Attributes:
    step: steps taken (applied or skipped).
    params, batch_stats, opt_state: the networks and Adam's moments.
    bad_step: the first step whose loss or gradients were not finite (-1: none yet).
    num_skipped: steps whose update was not applied because of that.
    buffer: the continued fits (:class:`FitBuffer`), or None when the config uses none.
  """

  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  bad_step: jnp.ndarray
  num_skipped: jnp.ndarray
  buffer: Any = None


def init_state(learner: lgd.Learner, problem: Problem, tx, seed: int,
               buffer_size: int = 0) -> TrainState:
  variables = learner.init(jax.random.PRNGKey(seed), problem)
  return TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                    tx.init(variables["params"]), jnp.full((), -1, jnp.int32),
                    jnp.zeros((), jnp.int32), empty_buffer(problem, buffer_size, learner))


def new_state(config, learner: lgd.Learner, problem: Problem, tx) -> TrainState:
  """The initial :class:`TrainState` of ``config`` (its seed and buffer size)."""
  return init_state(learner, problem, tx, int(config.seed),
                    unroll_settings(config).buffer_size)
