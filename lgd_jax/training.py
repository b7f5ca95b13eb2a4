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
import sys
import time
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tensorboardX import SummaryWriter

from lgd_jax import body, camera, lgd, metrics, networks, objective
from lgd_jax.body.model import NUM_POSE
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
  return objective.make_problem(model, config.keypoints, config.objective_loss,
                                config.fit_translation)


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
  if m.variant == "paper":
    net = networks.PaperUpdateNet(problem.num_params, m.hidden, m.num_blocks, m.dropout,
                                  m.out_init_scale, dtype)
  elif m.variant == "official":
    net = networks.OfficialUpdateNet(sizes, m.hidden, m.num_residual, m.dropout,
                                     m.out_init_scale, dtype)
  else:
    raise ConfigError(f"model.variant: expected 'paper' or 'official', got {m.variant!r}")
  if m.init == "zero":
    init_net = None
  elif m.init == "learned":
    init_net = networks.OfficialUpdateNet(sizes, m.hidden, m.num_residual, m.dropout,
                                          m.out_init_scale, dtype)
  else:
    raise ConfigError(f"model.init: expected 'zero' or 'learned', got {m.init!r}")
  return lgd.Learner(net, init_net, features, m.output_scale, m.stop_gradient, m.grad_scale,
                     m.unroll)


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
  if not config.amass_dir and int(config.steps_per_epoch) < 1:
    raise ConfigError(f"steps_per_epoch: expected a positive integer, got {config.steps_per_epoch!r}")


# ----------------------------------------------------------------------------------------------
# Poses on the device and augmentation inside the jitted step.


@flax.struct.dataclass
class PoseSource:
  """Where training poses come from: arrays on the device (AMASS) or the synthetic sampler.

  Attributes:
    poses: (P, 72) poses, or None for the synthetic sampler.
    betas: (P, B) shapes, or None.
  """

  poses: jnp.ndarray | None = None
  betas: jnp.ndarray | None = None

  @property
  def size(self) -> int | None:
    return None if self.poses is None else self.poses.shape[0]

  def sample(self, key, n: int, num_betas: int):
    """n poses (n, 72) and shapes (n, num_betas), uniformly at random."""
    if self.poses is None:
      from lgd_jax.data import synthetic
      k_pose, k_beta = jax.random.split(key)
      return (synthetic.sample_poses(k_pose, n),
              synthetic.sample_betas(k_beta, n, num_betas))
    idx = jax.random.randint(key, (n,), 0, self.poses.shape[0])
    betas = self.betas[idx]
    if betas.shape[-1] < num_betas:
      betas = jnp.pad(betas, ((0, 0), (0, num_betas - betas.shape[-1])))
    return self.poses[idx], betas[:, :num_betas]


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


def make_batch(problem: Problem, source: PoseSource, key, n: int, aug) -> Batch:
  """Samples poses, rotates the root, renders 2D keypoints and drops some (all jittable)."""
  k_src, k_rot, k_drop, k_tr = jax.random.split(key, 4)
  pose, betas = source.sample(k_src, n, problem.num_betas)
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
  kp2d = objective.to_2d(problem, kp3d, conf)
  return Batch(theta, kp3d, kp2d, conf)


# ----------------------------------------------------------------------------------------------
# The loss and the train step.


def training_loss(problem: Problem, traj: lgd.Trajectory, batch: Batch, weights) -> tuple:
  """The official training loss, averaged over the steps 0..N (initial guess included).

  0.3 · weighted L1(2D) + 0.3 · weighted L1(3D keypoints) + 1.0 · L1(θ) + 1.0 · L1(β)
  (+ weight · L1(transl) when the translation is fitted); the weights come from ``weights``.
  """
  jw = jnp.asarray(objective.joint_weights(problem.kpset))[:, None]
  p = objective.split(problem, traj.theta)
  gt = objective.split(problem, batch.theta)
  parts = {
      "kp2d": jnp.mean(jw * jnp.abs(traj.kp2d - batch.kp2d), axis=(1, 2, 3)),
      "kp3d": jnp.mean(jw * jnp.abs(traj.kp3d - batch.kp3d), axis=(1, 2, 3)),
      "pose": jnp.mean(jnp.abs(p.pose - gt.pose), axis=(1, 2)),
      "betas": jnp.mean(jnp.abs(p.betas - gt.betas), axis=(1, 2)),
  }
  if problem.fit_translation:
    parts["transl"] = jnp.mean(jnp.abs(p.transl - gt.transl), axis=(1, 2))
  per_step = sum(weights[k] * v for k, v in parts.items())
  return jnp.mean(per_step), {k: jnp.mean(v) for k, v in parts.items()}


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any


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


def init_state(learner: lgd.Learner, problem: Problem, tx, seed: int) -> TrainState:
  variables = learner.init(jax.random.PRNGKey(seed), problem)
  return TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                    tx.init(variables["params"]))


def loss_weights(config) -> dict:
  return {k: float(v) for k, v in config.loss.items()}


class StepSettings(NamedTuple):
  """The static part of a train step (hashable: one compiled program per distinct value)."""

  batch_size: int
  num_steps: int
  augment: ml_collections.FrozenConfigDict
  loss_weights: tuple
  optimizer: OptimizerSettings


@functools.partial(jax.jit, static_argnames=("learner", "settings"), donate_argnums=(0,))
def train_step(state: TrainState, problem: Problem, source: PoseSource, key, *,
               learner: lgd.Learner, settings: StepSettings):
  """One training step: sampling, augmentation, the N-step unrolled fit, the loss, its gradient
  and the Adam update, all in one compiled program; the state's buffers are donated."""
  k_batch, k_drop = jax.random.split(key)
  batch = make_batch(problem, source, k_batch, settings.batch_size, settings.augment)
  weights = dict(settings.loss_weights)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    traj, stats = lgd.fit(learner, variables, problem, batch.kp2d, batch.conf,
                          settings.num_steps, train=True, rng=k_drop)
    loss, parts = training_loss(problem, traj, batch, weights)
    return loss, (stats, parts, traj)

  (loss, (stats, parts, traj)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = _adam(settings.optimizer).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  out = {"loss": loss, **{f"loss_{k}": v for k, v in parts.items()},
         "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
         "reproj_first": jnp.mean(traj.loss[0]), "reproj_last": jnp.mean(traj.loss[-1])}
  return TrainState(state.step + 1, params, stats, opt_state), out


def make_train_step(learner: lgd.Learner, config, steps_per_epoch: int) -> Callable:
  """``(state, problem, source, key) -> (state, metrics)``: :func:`train_step` for a config."""
  settings = StepSettings(
      int(config.batch_size), int(config.num_steps),
      ml_collections.FrozenConfigDict(config.augment),
      tuple(sorted(loss_weights(config).items())),
      optimizer_settings(config, steps_per_epoch))
  return functools.partial(train_step, learner=learner, settings=settings)


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


_make_batch_jit = jax.jit(make_batch, static_argnames=("n", "aug"))


def validation_batches(config, problem: Problem, source: PoseSource, num: int, seed: int,
                       batch_size: int):
  """Fixed held-out batches (same augmentation as training, its own random stream)."""
  aug = ml_collections.FrozenConfigDict(config.augment)
  out, done, i = [], 0, 0
  while done < num:
    n = min(batch_size, num - done)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    out.append(_make_batch_jit(problem, source, key, n=n, aug=aug))
    done, i = done + n, i + 1
  return out


def mean_over_batches(results: list[dict], sizes: list[int]) -> dict:
  total = sum(sizes)
  return {k: (sum(np.asarray(r[k], np.float64) * n for r, n in zip(results, sizes)) / total)
          for k in results[0]}


# ----------------------------------------------------------------------------------------------
# The training loop.


def load_pose_data(config) -> tuple[PoseSource, PoseSource, int]:
  """(train source, validation source, steps per epoch) of the config's data."""
  if not config.amass_dir:
    return PoseSource(), PoseSource(), int(config.steps_per_epoch)
  from lgd_jax.data import amass
  fps = float(config.amass_fps) if config.amass_fps and config.amass_fps > 0 else None
  data = amass.load_or_preprocess(config.amass_dir, cache_path=config.amass_cache or None,
                                  fps=fps, val_fraction=config.val_fraction)
  train = PoseSource(jnp.asarray(data["train_poses"]), jnp.asarray(data["train_betas"]))
  val = PoseSource(jnp.asarray(data["val_poses"]), jnp.asarray(data["val_betas"]))
  if val.size == 0:
    val = train
  return train, val, max(1, train.size // int(config.batch_size))


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` and to TensorBoard event files."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
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
    record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in values.items():
      self._tb.add_scalar(k.replace("val_", "val/", 1) if k.startswith("val_") else f"train/{k}",
                          float(v), int(step))

  def close(self) -> None:
    self._file.close()
    self._tb.close()


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def validate(learner, state: TrainState, problem: Problem, batches: list, num_steps: int) -> dict:
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  results = [eval_lgd(learner, variables, problem, b, num_steps)[0] for b in batches]
  mean = mean_over_batches(results, [b.theta.shape[0] for b in batches])
  return {"val_pa_mpjpe_mm": mean["pa_mpjpe_mm"][-1], "val_mpjpe_mm": mean["mpjpe_mm"][-1],
          "val_pa_mpjpe_mm_start": mean["pa_mpjpe_mm"][0], "val_reproj": mean["reproj"][-1]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       show_progress: bool = True) -> TrainState:
  """Trains (or resumes) in ``workdir``; returns the final state."""
  from tqdm import tqdm

  from lgd_jax import checkpoints

  check_config(config)
  model = load_body_model(config)
  problem = make_problem(config, model)
  learner = make_learner(config, problem)
  train_src, val_src, steps_per_epoch = load_pose_data(config)
  total_steps = steps_per_epoch * int(config.num_epochs)
  lr_schedule = learning_rate_schedule(optimizer_settings(config, steps_per_epoch))
  tx = make_optimizer(config, steps_per_epoch)

  os.makedirs(workdir, exist_ok=True)
  mngr = checkpoints.manager(workdir, int(config.keep_checkpoints))
  state = init_state(learner, problem, tx, int(config.seed))
  start = mngr.latest_step()
  if start is not None:
    saved = checkpoints.read_config(mngr.directory, start)
    checkpoints.check_compatible(saved, config, mngr.directory / str(start))
    state = checkpoints.restore_state(mngr, start, state)
    _log(f"resumed from {mngr.directory / str(start)} (step {start} of {total_steps})")
  start = int(state.step)

  writer = MetricWriter(workdir, start)
  step_fn = make_train_step(learner, config, steps_per_epoch)
  compiled_before = train_step._cache_size()
  val_batches = validation_batches(config, problem, val_src, int(config.val_samples),
                                   int(config.val_seed), int(config.batch_size))
  base_key = jax.random.PRNGKey(int(config.seed))
  _log(f"training {model.name} ({config.keypoints}, N = {config.num_steps}) on "
       f"{'AMASS ' + config.amass_dir if config.amass_dir else 'synthetic poses'}: "
       f"{total_steps} steps of batch {config.batch_size} on {jax.devices()[0].platform}")
  bar = tqdm(total=total_steps, initial=start, disable=not show_progress, unit="step",
             dynamic_ncols=True, file=sys.stderr)
  t_last, n_last = time.perf_counter(), start
  try:
    for step in range(start, total_steps):
      state, out = step_fn(state, problem, train_src, jax.random.fold_in(base_key, step))
      done = step + 1
      bar.update(1)
      epoch_end = done % steps_per_epoch == 0
      last = done == total_steps
      if epoch_end or last or done % int(config.log_every) == 0:
        record = {k: float(v) for k, v in jax.device_get(out).items()}
        if not all(math.isfinite(v) for v in record.values()):
          raise FloatingPointError(f"non-finite training metrics at step {done}: {record}")
        now = time.perf_counter()
        record["samples_per_s"] = (done - n_last) * int(config.batch_size) / max(now - t_last,
                                                                                  1e-9)
        record["learning_rate"] = float(lr_schedule(done))
        t_last, n_last = now, done
        bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.0f}")
        if epoch_end:
          val = jax.device_get(validate(learner, state, problem, val_batches,
                                        int(config.num_steps)))
          record.update({k: float(v) for k, v in val.items()}, epoch=done // steps_per_epoch)
          bar.write(f"epoch {done // steps_per_epoch}/{config.num_epochs}: validation PA-MPJPE "
                    f"{record['val_pa_mpjpe_mm']:.1f} mm (start "
                    f"{record['val_pa_mpjpe_mm_start']:.1f} mm), MPJPE "
                    f"{record['val_mpjpe_mm']:.1f} mm", file=sys.stderr)
        if last:
          # 1 in a fresh process: the step never retraces (0 if this process compiled it before).
          record["train_step_compilations"] = train_step._cache_size() - compiled_before
        writer.write(done, record)
      if epoch_end or last or done % int(config.checkpoint_every) == 0:
        checkpoints.save(mngr, done, state, config)
  finally:
    bar.close()
    writer.close()
  mngr.close()
  _log(f"done: {total_steps} steps; checkpoints in {mngr.directory}")
  return state
