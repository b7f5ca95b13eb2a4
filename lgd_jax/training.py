"""Training the learned optimiser: data on the device, augmentation and the unrolled fit in one
jitted step, Orbax checkpoints that resume, metrics to JSON lines and TensorBoard.

    from lgd_jax import training
    training.train_and_evaluate(config, workdir)
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tensorboardX import SummaryWriter

from lgd_jax import body, camera, lgd, metrics, networks, objective, parallel
from lgd_jax.data import augment
from lgd_jax.body.model import NUM_POSE
from lgd_jax.numerics import full_precision
from lgd_jax.objective import Problem
from lgd_jax.rotations import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle

# Fields every config must have (besides the nested groups), so that runs can be scripted.
REQUIRED_FIELDS = ("body_model", "amass_dir", "batch_size", "num_epochs", "steps_per_epoch",
                   "num_steps", "seed", "checkpoint_every")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


# ----------------------------------------------------------------------------------------------
# Building the pieces from a config.


def load_body_model(config) -> body.BodyModel:
  """The config's body model: its file, or the free built-in model when ``body_model`` is empty."""
  path = config.body_model or None
  return body.load_model(path, num_betas=config.num_betas)


def make_problem(config, model: body.BodyModel) -> Problem:
  """The config's fitting problem (keypoint set, inner objective, translation)."""
  if config.objective_loss not in objective.LOSSES:
    raise ConfigError(f"objective_loss: expected one of {objective.LOSSES}, got "
                      f"{config.objective_loss!r}")
  delta = float(config.get("objective_delta", objective.ROBUST_DELTA))
  if not delta > 0:
    raise ConfigError(f"objective_delta: expected a positive number, got {delta!r}")
  return objective.make_problem(model, config.keypoints, config.objective_loss,
                                config.fit_translation, delta=delta)


_VARIANT_FEATURES = {"paper": ("kp2d", "conf", "theta", "grad"),
                     "official": ("kp2d", "pose", "grad_pose")}


def make_learner(config, problem: Problem) -> lgd.Learner:
  """The :class:`lgd.Learner` of ``config.model``."""
  m = config.model
  dtype = {"float32": None, "bfloat16": jnp.bfloat16}.get(m.dtype, "bad")
  if dtype == "bad":
    raise ConfigError(f"model.dtype: expected 'float32' or 'bfloat16', got {m.dtype!r}")
  features = tuple(f for f in m.features.split(",") if f) if m.features else \
      _VARIANT_FEATURES.get(m.variant, ())
  unknown = [f for f in features if f not in lgd.FEATURES]
  if unknown:
    raise ConfigError(f"model.features: unknown {unknown}, expected names from {lgd.FEATURES}")
  sizes = (NUM_POSE, problem.num_betas) + ((3,) if problem.fit_translation else ())
  norm = m.get("norm", "batch")
  if norm not in networks.NORMS:
    raise ConfigError(f"model.norm: expected one of {networks.NORMS}, got {norm!r}")
  init_style = m.get("init_style", "flax")
  if init_style not in networks.INIT_STYLES:
    raise ConfigError(f"model.init_style: expected one of {networks.INIT_STYLES}, got "
                      f"{init_style!r}")
  drop = m.get("dropout_impl", "hash")
  if drop not in networks.DROPOUT_IMPLS:
    raise ConfigError(f"model.dropout_impl: expected one of {networks.DROPOUT_IMPLS}, got "
                      f"{drop!r}")
  if m.variant == "paper":
    net = networks.PaperUpdateNet(problem.num_params, m.hidden, m.num_blocks, m.dropout,
                                  m.out_init_scale, dtype, norm, init_style, drop)
  elif m.variant == "official":
    net = networks.OfficialUpdateNet(sizes, m.hidden, m.num_residual, m.dropout,
                                     m.out_init_scale, dtype, norm, init_style, drop)
  else:
    raise ConfigError(f"model.variant: expected 'paper' or 'official', got {m.variant!r}")
  for name in ("damping", "gate", "gd_rate"):
    if float(m.get(name, 0.0)) < 0:
      raise ConfigError(f"model.{name}: expected a number >= 0, got {m[name]!r}")
  if m.init == "zero":
    init_net = None
  elif m.init == "learned":
    init_net = networks.OfficialUpdateNet(sizes, m.hidden, m.num_residual, m.dropout,
                                          m.out_init_scale, dtype, init_style=init_style,
                                          dropout_impl=drop)
  else:
    raise ConfigError(f"model.init: expected 'zero' or 'learned', got {m.init!r}")
  return lgd.Learner(net, init_net, features, m.output_scale, m.stop_gradient, m.grad_scale,
                     m.unroll, float(m.get("damping", 0.0)), float(m.get("gate", 0.0)),
                     float(m.get("gd_rate", 0.0)), norm == "batch_per_step")


def check_config(config) -> None:
  missing = [f for f in REQUIRED_FIELDS if f not in config]
  if missing:
    raise ConfigError(f"config lacks the fields {missing}")
  for name in ("batch_size", "num_epochs", "num_steps", "checkpoint_every"):
    if int(config[name]) < 1:
      raise ConfigError(f"{name}: expected a positive integer, got {config[name]!r}")
  if config.get("requires_data", False):
    need = {"body_model": "--config.body_model=PATH (an SMPL .pkl or .npz; see "
                          "third_party/README.md)",
            "amass_dir": "--config.amass_dir=DIR (a directory of AMASS .npz sequences)"}
    missing = [k for k in need if not config[k]]
    if missing:
      raise ConfigError(f"{', '.join(missing)}: this config trains on SMPL and AMASS; pass "
                        f"{' '.join(need[k] for k in missing)}, or use configs/demo.py")
  if config.get("on_nonfinite", "stop") not in ("stop", "skip"):
    raise ConfigError(f"on_nonfinite: expected 'stop' or 'skip', got {config.on_nonfinite!r}")
  if config.amass_dir:
    amass_sampling(config)
  if not config.amass_dir and int(config.steps_per_epoch) < 1:
    raise ConfigError(f"steps_per_epoch: expected a positive integer, got {config.steps_per_epoch!r}")
  unroll_settings(config)  # checks the unroll group


# ----------------------------------------------------------------------------------------------
# Poses on the device and augmentation inside the jitted step.


SAMPLINGS = ("epoch", "replacement")
# fold_in data of the epoch-order stream; a step key folds in its step (< 2^32 - 1), so the two
# streams never meet.
_ORDER_STREAM = 2**32 - 1


@flax.struct.dataclass
class PoseSource:
  """Where poses come from: arrays on the device (AMASS) or a synthetic generator.

  Attributes:
    poses: (P, 72) poses, or None for a synthetic generator.
    betas: (S, B) shapes: one row per sequence when ``seq`` is given (AMASS), else one per pose;
      or None.
    seq: (P,) int32 row of ``betas`` of each pose, or None (``betas`` is per pose).
    order: (P,) int32 the current epoch's permutation of the poses ("epoch" sampling; see
      :func:`with_epoch_order`), or None.
    kind: the synthetic generator (static): "broad" (training), "test" (held out, built
      differently) or "keyframes" (the original keyframe sampler); see
      :mod:`lgd_jax.data.pose_sources`.
    sampling: how poses are drawn from the arrays (static): "replacement" (uniformly, each batch
      independently) or "epoch" (batch k of an epoch is rows [k·n, (k+1)·n) of ``order``: every
      pose once per epoch, the remainder of P / n skipped, as PyTorch's shuffling loader with
      ``drop_last`` does in the official code).
  """

  poses: jnp.ndarray | None = None
  betas: jnp.ndarray | None = None
  seq: jnp.ndarray | None = None
  order: jnp.ndarray | None = None
  kind: str = flax.struct.field(pytree_node=False, default="broad")
  sampling: str = flax.struct.field(pytree_node=False, default="replacement")

  @property
  def size(self) -> int | None:
    return None if self.poses is None else self.poses.shape[0]

  def sample(self, key, n: int, num_betas: int, step=None):
    """n poses (n, 72) and shapes (n, num_betas): fresh synthetic ones, uniformly drawn rows, or
    with "epoch" sampling the rows of train step ``step`` (traced) in ``order``."""
    if self.poses is None:
      from lgd_jax.data import pose_sources, synthetic
      k_pose, k_beta = jax.random.split(key)
      return (pose_sources.sample(self.kind, k_pose, n),
              synthetic.sample_betas(k_beta, n, num_betas))
    if self.sampling == "epoch":
      if self.order is None or step is None:
        raise ValueError("PoseSource: 'epoch' sampling draws the rows of a train step from the "
                         "epoch's order; pass step and set order (training.with_epoch_order)")
      per_epoch = self.order.shape[0] // n
      if per_epoch < 1:
        raise ValueError(f"PoseSource: {self.order.shape[0]} poses cannot fill one batch of {n}")
      start = (jnp.asarray(step, jnp.int32) % per_epoch) * n
      idx = jax.lax.dynamic_slice_in_dim(self.order, start, n)
    elif self.sampling == "replacement":
      idx = jax.random.randint(key, (n,), 0, self.poses.shape[0])
    else:
      raise ValueError(f"PoseSource.sampling: expected one of {SAMPLINGS}, got {self.sampling!r}")
    betas = self.betas[idx if self.seq is None else self.seq[idx]]
    if betas.shape[-1] < num_betas:
      betas = jnp.pad(betas, ((0, 0), (0, num_betas - betas.shape[-1])))
    return self.poses[idx], betas[:, :num_betas]


@functools.lru_cache(maxsize=None)
def _permutation_fn(size: int, mesh: Mesh | None):
  # Made where it is used: replicated over the mesh (each process computes its own shards), or
  # on the default device like the one-device run's other arrays (one compiled train step).
  shardings = parallel.replicated(mesh) if mesh is not None and mesh.devices.size > 1 else None
  return jax.jit(lambda key: jax.random.permutation(key, size).astype(jnp.int32),
                 out_shardings=shardings)


def epoch_order(seed: int, epoch: int, size: int, mesh: Mesh | None = None) -> jnp.ndarray:
  """The permutation (size,) int32 of epoch ``epoch``: a function of (seed, epoch, size) only, so
  a resumed run draws the batches of an uninterrupted one. Computed on the device, once per
  epoch."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _ORDER_STREAM), epoch)
  return _permutation_fn(int(size), mesh)(key)


def with_epoch_order(source: PoseSource, seed: int, epoch: int,
                     mesh: Mesh | None = None) -> PoseSource:
  """``source`` with the order of ``epoch`` ("epoch" sampling; other sources unchanged)."""
  if source.sampling != "epoch" or source.poses is None:
    return source
  return source.replace(order=epoch_order(seed, epoch, source.size, mesh))


@full_precision
def rotate_root(pose: jnp.ndarray, yaw, pitch, roll) -> jnp.ndarray:
  """Left-multiplies the global orientation by R_z(roll) R_y(yaw) R_x(pitch) (official order;
  y is up, so yaw turns the body about the vertical)."""
  rot = euler_to_matrix(jnp.stack([roll, yaw, pitch], -1), order="zyx")
  root = matrix_to_axis_angle(rot @ axis_angle_to_matrix(pose[..., :3]))
  return pose.at[..., :3].set(root)


class Batch(flax.struct.PyTreeNode):
  """A training or evaluation batch: targets and what the fit sees."""

  theta: jnp.ndarray  # (B, P) ground-truth parameters
  kp3d: jnp.ndarray  # (B, K, 3) ground-truth keypoints
  kp2d: jnp.ndarray  # (B, K, 2) normalised 2D input
  conf: jnp.ndarray  # (B, K) confidences (0 = dropped)


def make_batch(problem: Problem, source: PoseSource, key, n: int, aug,
               detector: augment.DetectorSettings = augment.DetectorSettings(),
               step=None) -> Batch:
  """Samples poses (those of train step ``step`` for an "epoch" source), rotates the root,
  renders 2D keypoints, drops some and, with ``detector``, corrupts them like a 2D detector (all
  jittable); the input goes through :func:`objective.observe`, the same function as real
  detections."""
  k_src, k_rot, k_drop, k_tr = jax.random.split(key, 4)
  pose, betas = source.sample(k_src, n, problem.num_betas, step)
  yaw, pitch, roll = jnp.deg2rad(jax.random.uniform(k_rot, (3, n), minval=-1.0, maxval=1.0)
                                 * jnp.array([aug.yaw_deg, aug.tilt_deg, aug.tilt_deg])[:, None])
  pose = rotate_root(pose, yaw, pitch, roll)
  transl = None
  if problem.fit_translation:
    # The official camera sits at z = +6 looking down -z: depth = 6 - z.
    lo = jnp.array([-aug.transl_xy, -aug.transl_xy, aug.depth_min])
    hi = jnp.array([aug.transl_xy, aug.transl_xy, aug.depth_max])
    xyd = jax.random.uniform(k_tr, (n, 3), minval=lo, maxval=hi)
    transl = xyd.at[:, 2].set(camera.OFFICIAL_DISTANCE - xyd[:, 2])
  theta = objective.join(problem, pose, betas, transl)
  kp3d = objective.keypoints_3d(problem, theta)
  conf = (jax.random.uniform(k_drop, kp3d.shape[:2]) >= aug.drop_prob).astype(kp3d.dtype)
  pix = camera.project(kp3d, problem.camera)
  pix, scores = augment.corrupt(jax.random.fold_in(key, 5), pix, conf, problem.kpset, detector)
  kp2d, conf = objective.observe(problem, pix, scores)
  return Batch(theta, kp3d, kp2d, conf)


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


def sample_length(key, u: UnrollSettings):
  """The number of steps of this batch's unroll: a traced int32 scalar in [min, max]."""
  if u.length == "fixed" or u.min_steps == u.max_steps:
    return jnp.int32(u.max_steps)
  if u.length == "uniform":
    return jax.random.randint(key, (), u.min_steps, u.max_steps + 1)
  lo, hi = math.log(u.min_steps), math.log(u.max_steps + 1)
  n = jnp.floor(jnp.exp(jax.random.uniform(key, (), minval=lo, maxval=hi))).astype(jnp.int32)
  return jnp.clip(n, u.min_steps, u.max_steps)


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


def empty_buffer(problem: Problem, size: int) -> FitBuffer | None:
  if size == 0:
    return None
  k, p = problem.num_keypoints, problem.num_params
  z = lambda *shape: jnp.zeros((size,) + shape, jnp.float32)  # noqa: E731
  return FitBuffer(z(p), z(k, 3), z(k, 2), z(k), z(p), jnp.full((size,), -1, jnp.int32))


def _rows(a, start, n):
  return jax.lax.dynamic_slice_in_dim(a, start, n, axis=0)


def _set_rows(a, rows, start):
  return jax.lax.dynamic_update_slice_in_dim(a, rows, start, axis=0)


class UnrollPlan(NamedTuple):
  """What a train step fits: the batch (ground truth and input) and where each sample starts."""

  batch: "Batch"
  theta0: jnp.ndarray  # (B, P) starting states (fresh rows: the learner's initial guess)
  start_iteration: jnp.ndarray  # (B,) iteration index of theta0
  continued: jnp.ndarray  # (B,) bool: the row continues a stored fit
  fixed_point: jnp.ndarray  # (B,) bool: the row starts near its ground truth


def plan_unroll(problem: Problem, batch: "Batch", theta0, buffer: FitBuffer | None, step, key,
                u: UnrollSettings) -> UnrollPlan:
  """Replaces the batch's last rows by continued fits and fixed-point starts (all traced).

  Layout: [fresh | late (``u.late`` rows) | fixed point (``u.fixed_point`` rows)].
  """
  b = batch.theta.shape[0]
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

    batch = batch.replace(theta=take(batch.theta, buffer.theta_gt), kp3d=take(batch.kp3d, buffer.kp3d),
                          kp2d=take(batch.kp2d, buffer.kp2d), conf=take(batch.conf, buffer.conf))
    theta0 = take(theta0, jax.lax.stop_gradient(buffer.theta))
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
  return UnrollPlan(batch, theta0, start_it, continued, fixed)


def update_buffer(buffer: FitBuffer | None, plan: UnrollPlan, final_theta, length, step,
                  u: UnrollSettings) -> FitBuffer | None:
  """Writes the late rows' reached states (and their samples) back into the visited slots."""
  if not u.late:
    return buffer
  b = plan.batch.theta.shape[0]
  lo, hi = b - u.fixed_point - u.late, b - u.fixed_point
  slot = (step % u.rounds) * u.late
  put = lambda a, rows: _set_rows(a, jax.lax.stop_gradient(rows), slot)  # noqa: E731
  return FitBuffer(put(buffer.theta_gt, plan.batch.theta[lo:hi]), put(buffer.kp3d, plan.batch.kp3d[lo:hi]),
                   put(buffer.kp2d, plan.batch.kp2d[lo:hi]), put(buffer.conf, plan.batch.conf[lo:hi]),
                   put(buffer.theta, final_theta[lo:hi]),
                   put(buffer.age, plan.start_iteration[lo:hi] + length))


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


class OptimizerSettings(NamedTuple):
  learning_rate: float
  lr_decay: float
  steps_per_epoch: int


def optimizer_settings(config, steps_per_epoch: int) -> OptimizerSettings:
  return OptimizerSettings(float(config.learning_rate), float(config.lr_decay),
                           int(steps_per_epoch))


def learning_rate_schedule(s: OptimizerSettings) -> optax.Schedule:
  """The learning rate, decayed by ``lr_decay`` at each epoch's end."""
  return optax.exponential_decay(s.learning_rate, transition_steps=s.steps_per_epoch,
                                 decay_rate=s.lr_decay, staircase=True)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam on :func:`learning_rate_schedule`."""
  return _adam(optimizer_settings(config, steps_per_epoch))


def _adam(s: OptimizerSettings) -> optax.GradientTransformation:
  return optax.adam(learning_rate_schedule(s))


def init_state(learner: lgd.Learner, problem: Problem, tx, seed: int,
               buffer_size: int = 0) -> TrainState:
  variables = learner.init(jax.random.PRNGKey(seed), problem)
  return TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                    tx.init(variables["params"]), jnp.full((), -1, jnp.int32),
                    jnp.zeros((), jnp.int32), empty_buffer(problem, buffer_size))


def new_state(config, learner: lgd.Learner, problem: Problem, tx) -> TrainState:
  """The initial :class:`TrainState` of ``config`` (its seed and buffer size)."""
  return init_state(learner, problem, tx, int(config.seed),
                    unroll_settings(config).buffer_size)


def loss_weights(config) -> dict:
  return {k: float(v) for k, v in config.loss.items()}


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
      return loss, (stats, parts, traj, None)
    k_init, k_fit = jax.random.split(k_drop)
    theta0, stats = lgd.initial_guess(learner, variables, problem, batch.kp2d, batch.conf,
                                      train=True, rng=k_init)
    plan = plan_unroll(problem, batch, theta0, state.buffer, state.step, k_fp, u)
    variables = {"params": params, "batch_stats": stats}
    traj, stats = lgd.fit(learner, variables, problem, plan.batch.kp2d, plan.batch.conf,
                          u.scan_steps, train=True, rng=k_fit, theta0=plan.theta0,
                          active_steps=None if u.length == "fixed" else length,
                          start_iteration=plan.start_iteration)
    step_w = step_weights(length, u.scan_steps + 1, u.gamma)
    loss, parts = training_loss(problem, traj, plan.batch, weights, step_w, plan.fixed_point,
                                length)
    return loss, (stats, parts, traj, plan)

  (loss, (stats, parts, traj, plan)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  learning_rate = learning_rate_schedule(settings.optimizer)(_schedule_count(state.opt_state))
  updates, opt_state = _adam(settings.optimizer).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  buffer = state.buffer if plan is None else update_buffer(state.buffer, plan, traj.theta[-1],
                                                           length, state.step, u)
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


def detector_settings(config) -> augment.DetectorSettings:
  """The config's ``detector`` group (detector-like 2D input; absent = off)."""
  try:
    return augment.settings_from(config.get("detector"))
  except ValueError as e:
    raise ConfigError(str(e)) from None


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
def eval_lgd(learner, variables, problem, batch: Batch, num_steps: int):
  """Per-step metrics of the learned fit (inference mode) and its parameters (M+1, B, P)."""
  traj, _ = lgd.fit(learner, variables, problem, batch.kp2d, batch.conf, num_steps, train=False)
  return trajectory_metrics(problem, traj, batch.theta), traj.theta


_make_batch_jit = jax.jit(make_batch, static_argnames=("n", "aug", "detector"))


def validation_batches(config, problem: Problem, source: PoseSource, num: int, seed: int,
                       batch_size: int,
                       detector: augment.DetectorSettings = augment.DetectorSettings()):
  """Fixed held-out batches (the training's root rotations and keypoint drop, its own random
  stream; exact 2D input unless ``detector`` asks for detector-like input)."""
  aug = ml_collections.FrozenConfigDict(config.augment)
  out, done, i = [], 0, 0
  while done < num:
    n = min(batch_size, num - done)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    out.append(_make_batch_jit(problem, source, key, n=n, aug=aug, detector=detector))
    done, i = done + n, i + 1
  return out


def mean_over_batches(results: list[dict], sizes: list[int]) -> dict:
  total = sum(sizes)
  return {k: (sum(np.asarray(r[k], np.float64) * n for r, n in zip(results, sizes)) / total)
          for k in results[0]}


# ----------------------------------------------------------------------------------------------
# The training loop.


def synthetic_source(config, split: str = "train") -> PoseSource:
  """The config's synthetic generator for training (``poses``) or held-out tests
  (``test_poses``)."""
  from lgd_jax.data import pose_sources
  field = "poses" if split == "train" else "test_poses"
  kind = config.get(field, "keyframes" if split == "train" else "test")
  if kind not in pose_sources.SOURCES:
    raise ConfigError(f"{field}: expected one of {tuple(pose_sources.SOURCES)}, got {kind!r}")
  return PoseSource(kind=kind)


# How long the other processes wait for process 0 to preprocess AMASS (seconds): all of AMASS
# takes a while.
AMASS_PREPROCESS_TIMEOUT_S = 12 * 3600


def load_amass(config) -> dict:
  """The config's preprocessed AMASS arrays on the host (numpy; see
  :func:`lgd_jax.data.amass.load_preprocessed`), built and cached on first use.

  Several processes: process 0 builds the cache if needed while the others wait for it, then
  they read it (one writer; a failure on process 0 is reported on every process).
  """
  from lgd_jax.data import amass
  fps = float(config.amass_fps) if config.amass_fps and config.amass_fps > 0 else None

  def load():
    return amass.load_or_preprocess(config.amass_dir, cache_path=config.amass_cache or None,
                                    fps=fps, val_fraction=config.val_fraction,
                                    show_progress=parallel.is_primary())
  if not parallel.multi_process():
    return load()
  what = "the AMASS cache"
  if parallel.is_primary():
    try:
      data = load()
    except Exception as e:
      parallel.announce(what, "failed: " + " ".join(str(e).split()))
      raise
    parallel.announce(what, "ready")
    return data
  status = parallel.announce(what, timeout_s=AMASS_PREPROCESS_TIMEOUT_S)
  if status != "ready":
    raise amass.AmassError(f"process 0 could not prepare the AMASS data: "
                           f"{status.removeprefix('failed: ')}")
  return load()


def amass_sampling(config) -> str:
  """The config's ``amass_sampling``: "epoch" (the official shuffled epochs) or "replacement"."""
  sampling = config.get("amass_sampling", "epoch")
  if sampling not in SAMPLINGS:
    raise ConfigError(f"amass_sampling: expected one of {SAMPLINGS}, got {sampling!r}")
  return sampling


def amass_source(data: dict, split: str, sampling: str = "replacement") -> PoseSource:
  """A split of :func:`load_amass`'s arrays on the device: poses, per-sequence betas and each
  pose's sequence index."""
  return PoseSource(jnp.asarray(data[f"{split}_poses"]),
                    jnp.asarray(data[f"{split}_sequence_betas"]),
                    jnp.asarray(data[f"{split}_seq"]), sampling=sampling)


def load_pose_data(config) -> tuple[PoseSource, PoseSource, int]:
  """(train source, validation source, steps per epoch) of the config's data; the synthetic
  validation source is the held-out test generator.

  AMASS with ``amass_sampling`` = "epoch" (the default) has steps_per_epoch = N // batch_size,
  a real epoch (each training frame once; the learning-rate decay counts these). Validation
  batches are drawn with replacement from the validation split (the training split if empty).
  """
  if not config.amass_dir:
    return (synthetic_source(config, "train"), synthetic_source(config, "test"),
            int(config.steps_per_epoch))
  sampling = amass_sampling(config)
  data = load_amass(config)
  b = int(config.batch_size)
  num = data["train_poses"].shape[0]
  if sampling == "epoch" and num < b:
    raise ConfigError(f"batch_size: {b} is more than the {num} AMASS training frames of "
                      f"{config.amass_dir} (an epoch draws each frame once); use a smaller "
                      "batch_size or amass_sampling='replacement'")
  train = amass_source(data, "train", sampling)
  val = amass_source(data, "val" if data["val_poses"].shape[0] else "train")
  return train, val, max(1, num // b)


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` and to TensorBoard event files."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled  # only one process of a multi-process run writes
    if not enabled:
      return
    self._drop_after(resume_step)
    self._file = open(self.path, "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _drop_after(self, step: int) -> None:
    """After a resume, lines of steps the restored state has not reached are stale."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [ln for ln in f if ln.strip()]
    keep = []
    for ln in lines:
      try:
        if json.loads(ln).get("step", 0) <= step:
          keep.append(ln)
      except ValueError:
        pass
    if len(keep) != len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, self.path)

  def write(self, step: int, values: dict) -> None:
    """One JSON line (non-finite values as null) and the finite values to TensorBoard."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    record = {"step": int(step), **{k: v if math.isfinite(v) else None for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in values.items():
      if math.isfinite(v):
        self._tb.add_scalar(k.replace("val_", "val/", 1) if k.startswith("val_") else f"train/{k}",
                            v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def validate(learner, state: TrainState, problem: Problem, batches: list, num_steps: int) -> dict:
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  results = [parallel.to_host(eval_lgd(learner, variables, problem, b, num_steps)[0])
             for b in batches]
  mean = mean_over_batches(results, [b.theta.shape[0] for b in batches])
  return {"val_pa_mpjpe_mm": mean["pa_mpjpe_mm"][-1], "val_mpjpe_mm": mean["mpjpe_mm"][-1],
          "val_pa_mpjpe_mm_start": mean["pa_mpjpe_mm"][0], "val_reproj": mean["reproj"][-1]}


class TrainingStopped(RuntimeError):
  """Training ended before its last step; the message is complete and names the step.

  Attributes:
    exit_code: the command's exit status (128 + signal number for a signal).
  """

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


class _StopSignals:
  """Turns SIGINT/SIGTERM into a request that the loop honours after the current step (saving a
  checkpoint first). A second SIGINT interrupts at once."""

  def __enter__(self):
    self.signum = None
    self._old = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    return False


class _AgreedStop:
  """The step after which every process stops for a signal, and which signal.

  :meth:`after_step` is asked once per step, after its logging and validation. One process stops
  after the step in which (or in whose logging) it got the signal. Several processes each get
  their own signals, so after each step every process sends its signal number (0: none) to all
  the others (:class:`parallel.ProcessFlags`) and reads the exchange sent after the previous
  step, which is done by then: the host never waits for the step in flight, and every process
  reads the same values after the same step, so they all stop there and save the same
  checkpoint.
  """

  def __init__(self, mesh: Mesh):
    self._flags = parallel.ProcessFlags(mesh) if parallel.multi_process() else None
    self._sent = None

  def after_step(self, signum: int | None) -> tuple[int, int | None] | None:
    """(signal number, process that got it or None in a single process) to stop for now, or
    None to go on."""
    if self._flags is None:
      return (signum, None) if signum else None
    sent, self._sent = self._sent, self._flags.send(signum or 0)
    if sent is None:
      return None
    got = [(v, p) for p, v in sorted(self._flags.receive(sent).items()) if v]
    return got[0] if got else None


def _check_faults(state: TrainState, config, done: int, last_saved: str | None) -> None:
  """Stops training (``on_nonfinite`` = "stop") once a step had a non-finite loss or gradient."""
  bad = int(parallel.to_host(state.bad_step))
  if bad < 0 or config.get("on_nonfinite", "stop") != "stop":
    return
  keep = f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was saved"
  raise TrainingStopped(
      f"step {bad}: non-finite loss or gradients; the update was not applied and training "
      f"stopped at step {done} ({keep}; --config.on_nonfinite=skip skips such batches instead)",
      exit_code=3)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       show_progress: bool = True) -> TrainState:
  """Trains (or resumes) in ``workdir``; returns the final state.

  The batch is split over ``config.num_devices`` devices (0 = all). Rerunning the same command
  continues from the newest good checkpoint — a corrupt one is moved aside and reported — with
  the same data order and random streams as an uninterrupted run. SIGINT/SIGTERM save a
  checkpoint and raise :class:`TrainingStopped`; so does a non-finite loss with
  ``on_nonfinite`` = "stop" (without saving the bad state). In a run of several processes a
  signal to any of them stops all of them after the same step (the one after the step it arrived
  in), with one checkpoint, and each raises :class:`TrainingStopped` with that signal's exit code.
  """
  from tqdm import tqdm

  from lgd_jax import checkpoints

  check_config(config)
  mesh = parallel.make_mesh(int(config.get("num_devices", 0)))
  parallel.check_batch(int(config.batch_size), mesh)
  model = load_body_model(config)
  problem = make_problem(config, model)
  learner = make_learner(config, problem)
  train_src, val_src, steps_per_epoch = load_pose_data(config)
  total_steps = steps_per_epoch * int(config.num_epochs)
  tx = make_optimizer(config, steps_per_epoch)
  primary = parallel.is_primary()

  os.makedirs(workdir, exist_ok=True)
  mngr = checkpoints.manager(workdir, int(config.keep_checkpoints))
  problem, train_src, val_src = parallel.replicate((problem, train_src, val_src), mesh)
  state = parallel.replicate(new_state(config, learner, problem, tx), mesh)
  found = checkpoints.restore_latest_good(mngr, state, config, log=_log)
  last_saved = None
  if found is not None:
    last_saved = str(mngr.directory / str(found[0]))
    state = found[1]
    _log(f"resumed from {last_saved} (step {found[0]} of {total_steps})")
  start = int(parallel.to_host(state.step))

  writer = MetricWriter(workdir, start, enabled=primary)
  step_fn = make_train_step(learner, config, steps_per_epoch, mesh)
  compiled_before = train_step._cache_size()
  val_batches = [parallel.shard_batch(b, mesh) for b in validation_batches(
      config, problem, val_src, int(config.val_samples), int(config.val_seed),
      int(config.batch_size))]
  # Each step folds its step number into this key inside the compiled step (no host work).
  base_key = parallel.replicate(jax.random.PRNGKey(int(config.seed)), mesh)
  _log(f"training {model.name} ({config.keypoints}, N = {config.num_steps}) on "
       f"{'AMASS ' + config.amass_dir if config.amass_dir else 'synthetic poses'}: "
       f"{total_steps} steps of batch {config.batch_size} on {mesh.devices.size} "
       f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)")
  bar = tqdm(total=total_steps, initial=start, disable=not (show_progress and primary),
             unit="step", dynamic_ncols=True, file=sys.stderr)
  # Samples/s is the training's: the validations and checkpoint writes of an interval are
  # left out of its time.
  t_last, n_last, paused = time.perf_counter(), start, 0.0
  skipped_before = int(parallel.to_host(state.num_skipped))
  # The epoch's order (at a resume: the same as uninterrupted), then once per epoch.
  if start < total_steps:
    train_src = with_epoch_order(train_src, int(config.seed), start // steps_per_epoch, mesh)
  agreed = _AgreedStop(mesh)
  if parallel.multi_process() and start < total_steps:
    # Every process compiles the step before any of them runs it: the first collective over a
    # set of devices waits only 30 s for all processes (Gloo's rendezvous on the CPU), and
    # compile times differ (JAX's persistent cache serves only process 0's programs).
    step_fn.func.lower(state, problem, train_src, base_key, **step_fn.keywords).compile()
    parallel.barrier("compiled the train step")
  try:
    with _StopSignals() as stop:
      for step in range(start, total_steps):
        if step % steps_per_epoch == 0 and step != start:
          train_src = with_epoch_order(train_src, int(config.seed), step // steps_per_epoch, mesh)
        state, out = step_fn(state, problem, train_src, base_key)
        done = step + 1
        bar.update(1)
        epoch_end = done % steps_per_epoch == 0
        last = done == total_steps
        log_now = epoch_end or last or done % int(config.log_every) == 0
        save_now = epoch_end or last or done % int(config.checkpoint_every) == 0
        if log_now or save_now:
          _check_faults(state, config, done, last_saved)
        if log_now:
          record = {k: float(v) for k, v in parallel.to_host(out).items()}
          now = time.perf_counter()
          record["samples_per_s"] = (done - n_last) * int(config.batch_size) / max(
              now - t_last - paused, 1e-9)
          record["skipped_steps"] = skipped = int(parallel.to_host(state.num_skipped))
          if skipped > skipped_before:
            bar.write(f"warning: {skipped} step(s) skipped so far for a non-finite loss or "
                      f"gradients (first: step {int(parallel.to_host(state.bad_step))})",
                      file=sys.stderr)
            skipped_before = skipped
          t_last, n_last, paused = now, done, 0.0
          bar.set_postfix(loss=f"{record['loss']:.4f}",
                          samples_s=f"{record['samples_per_s']:.0f}")
          if epoch_end:
            t_pause = time.perf_counter()  # the step is done: its metrics were read
            val = parallel.to_host(validate(learner, state, problem, val_batches,
                                            int(config.num_steps)))
            paused += time.perf_counter() - t_pause
            record.update({k: float(v) for k, v in val.items()}, epoch=done // steps_per_epoch)
            bar.write(f"epoch {done // steps_per_epoch}/{config.num_epochs}: validation "
                      f"PA-MPJPE {record['val_pa_mpjpe_mm']:.1f} mm (start "
                      f"{record['val_pa_mpjpe_mm_start']:.1f} mm), MPJPE "
                      f"{record['val_mpjpe_mm']:.1f} mm", file=sys.stderr)
          if last:
            # 1 in a fresh process: the step never retraces (0 if this process compiled it).
            record["train_step_compilations"] = train_step._cache_size() - compiled_before
          writer.write(done, record)
        # After this step's host work: a signal that came during it stops here (one process).
        stopping = agreed.after_step(stop.signum)
        if stopping and not (log_now or save_now):
          _check_faults(state, config, done, last_saved)
        if save_now or stopping:
          state = jax.block_until_ready(state)  # the training's time ends here
          t_pause = time.perf_counter()
          checkpoints.save(mngr, done, state, config)
          paused += time.perf_counter() - t_pause
          last_saved = str(mngr.directory / str(done))
        if stopping:
          signum, process = stopping
          name = signal.Signals(signum).name
          if process is not None:
            name += f" (sent to process {process}; every process stopped here)"
          raise TrainingStopped(f"{name}: stopped at step {done} of {total_steps}; saved "
                                f"{last_saved}; rerun the same command to resume",
                                exit_code=128 + signum)
  finally:
    bar.close()
    writer.close()
    mngr.close()
  _log(f"done: {total_steps} steps; checkpoints in {mngr.directory}")
  return state
