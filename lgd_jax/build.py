"""From a config to the pieces every command uses: the body model, the fitting problem, the
learner, the optimiser, the pose sources, the pose prior and the validation batches.

Training (:mod:`lgd_jax.train`) and evaluation (:mod:`lgd_jax.eval`) both build through here, so
the two never import each other.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lgd_jax import body, parallel
from lgd_jax.body.model import NUM_POSE
from lgd_jax.data import augment, pose_sources, synthetic
from lgd_jax.data.batches import SAMPLINGS, PoseSource, make_batch
from lgd_jax.errors import ConfigError, one_line
from lgd_jax.fitting import lgd, networks, objective
from lgd_jax.fitting.objective import Problem
from lgd_jax.fitting.priors import (
  GMM_COMPONENTS,
  GMM_SAMPLES,
  GMM_SEED,
  GMMPrior,
  default_pose_prior,
  evenly_spaced,
)

# Fields every config must have (besides the nested groups), so that runs can be scripted.
REQUIRED_FIELDS = ("body_model", "amass_dir", "batch_size", "num_epochs", "steps_per_epoch",
                   "num_steps", "seed", "checkpoint_every")


# ----------------------------------------------------------------------------------------------
# Building the pieces from a config.


def load_body_model(config) -> body.BodyModel:
  """The config's body model: its file, or the free built-in model when ``body_model`` is empty."""
  path = config.body_model or None
  return body.load_model(path, num_betas=config.num_betas)


def problem_from_config(config, model: body.BodyModel) -> Problem:
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
  remat = str(m.get("remat", "none"))
  if remat not in lgd.REMATS:
    raise ConfigError(f"model.remat: expected one of {lgd.REMATS}, got {remat!r}")
  for name in ("damping", "gate", "gd_rate"):
    if float(m.get(name, 0.0)) < 0:
      raise ConfigError(f"model.{name}: expected a number >= 0, got {m[name]!r}")
  nominal = str(m.get("nominal", "gd"))
  if nominal not in lgd.NOMINALS:
    raise ConfigError(f"model.nominal: expected one of {lgd.NOMINALS}, got {nominal!r}")
  damping_power = float(m.get("damping_power", 1.0))
  if not damping_power > 0:
    raise ConfigError(f"model.damping_power: expected a number > 0, got {m['damping_power']!r}")
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
                     float(m.get("gd_rate", 0.0)), norm == "batch_per_step",
                     remat=remat, nominal=nominal, damping_power=damping_power)


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


def detector_settings(config) -> augment.DetectorSettings:
  """The config's ``detector`` group (detector-like 2D input; absent = off)."""
  try:
    return augment.settings_from(config.get("detector"))
  except ValueError as e:
    raise ConfigError(str(e)) from None


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
      parallel.announce(what, "failed: " + one_line(str(e)))
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


def synthetic_pose_prior(num_components: int = GMM_COMPONENTS, num_samples: int = GMM_SAMPLES,
                         cache_dir: str | os.PathLike | None = "") -> GMMPrior:
  """The default pose prior where no config is at hand: :func:`default_pose_prior` of
  ``num_samples`` poses of the synthetic sampler (:func:`lgd_jax.data.synthetic.sample_poses`, a
  fixed key). It may be asked for while tracing (a jitted caller): poses and fit are concrete."""
  with jax.ensure_compile_time_eval():
    poses = np.asarray(synthetic.sample_poses(jax.random.PRNGKey(GMM_SEED), num_samples))
  return default_pose_prior(poses, num_components, num_samples, cache_dir)


def config_pose_prior(config, log=None) -> GMMPrior:
  """:func:`default_pose_prior` of a config's training poses: its AMASS training split, or the
  config's synthetic pose source when it has no ``amass_dir``.

  The AMASS poses stay on the host: only the evenly spaced fit set (10 k poses) reaches the
  device, never the split (millions of frames).
  """
  if config.amass_dir:
    poses = evenly_spaced(load_amass(config)["train_poses"])
  else:
    kind = synthetic_source(config, "train").kind
    poses = np.asarray(pose_sources.sample(kind, jax.random.PRNGKey(GMM_SEED), GMM_SAMPLES))
  return default_pose_prior(poses, log=log)

