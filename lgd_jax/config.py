"""The base config every file under ``configs/`` starts from.

Fields (all overridable on the command line, ``--config.key=value``):

* ``body_model``: an SMPL-layout model file (.pkl or .npz); empty = the free built-in model.
* ``num_betas``: shape components used.
* ``amass_dir``: a directory of AMASS ``.npz`` sequences; empty = the synthetic pose source
  ``poses`` ("broad", or "keyframes", the first round's sampler); held-out synthetic samples
  come from ``test_poses`` ("test": built differently from the training source).
  ``amass_fps`` (frame subsampling; 0 = every frame), ``amass_cache`` (preprocessed file; empty =
  next to the data or in ~/.cache), ``val_fraction`` (sequences held out, by a stable hash of
  their path), ``amass_sampling``: "epoch" (the official code's: each epoch one shuffle of every
  training frame, the remainder of a batch skipped; the epoch's learning-rate decay counts these
  real epochs) or "replacement" (each batch drawn uniformly).
* ``keypoints``: keypoint set of the objective; ``objective_loss``: "l1" (the official code's),
  "l2" or "robust" (pseudo-Huber with ``objective_delta``, whose gradient vanishes at an exact
  fit); ``fit_translation``: add the camera translation (3) to Θ.
* ``batch_size``, ``num_epochs``, ``steps_per_epoch`` (synthetic source; AMASS derives it from its
  size), ``num_steps`` (N, the training window), ``seed``.
* ``learning_rate``, ``lr_decay`` (factor per epoch; 1 = constant).
* ``checkpoint_every`` (steps), ``keep_checkpoints``, ``log_every`` (steps), ``val_samples``,
  ``val_seed``.
* ``num_devices``: devices the batch is split over (0 = every device of every process; the batch
  size must divide by it). ``on_nonfinite``: what a NaN/Inf loss or gradient does — "stop"
  (default: the update is not applied, training stops naming the step, the last good checkpoint
  stays) or "skip" (the batch is skipped and counted in ``skipped_steps``).
* ``model``: the update network (``variant`` "paper" or "official", widths, dropout, output scale,
  initial guess "zero" or "learned", input features, stopped gradient, scan unroll, dtype,
  ``init_style`` "flax" / "pytorch" (how the Dense layers start, see
  :mod:`lgd_jax.fitting.networks`),
  ``norm`` "batch" / "batch_per_step" / "layer" / "none", and the step's form: ``damping`` τ and
  ``damping_power`` p of the network's step-size schedule (τ/(τ+n))^p, ``gate`` of the update by
  the gradient norm, ``gd_rate`` (the initial rate) of a learned nominal descent term beside the
  network and ``nominal``, its direction: "gd" (the gradient) or "adam" (Adam's normalised
  moments of the fit's gradients); 0 = off; see :class:`lgd_jax.fitting.lgd.Learner`);
  ``remat`` "none" / "dots" / "full" / "step": what the training backward keeps of the network's
  activations (less memory for recomputation; same values).
* ``unroll``: how training unrolls are drawn (see :class:`lgd_jax.train_state.UnrollSettings`):
  ``length`` "fixed" (N steps, the paper's) / "uniform" / "log_uniform" in
  [``min_steps``, ``max_steps``]; ``late_fraction`` of each batch continues stored fits
  (``buffer_rounds``, ``max_age``); ``fixed_point_fraction`` starts near the truth
  (``fixed_point_noise``); ``loss_gamma`` weighs the later states more.
* ``loss``: training-loss weights (``update``: the update's size on fixed-point samples);
  ``augment``: root rotation ranges, keypoint drop probability, translation ranges;
  ``detector``: detector-like corruption of the 2D input (``noise``, ``score_jitter``,
  ``swap_prob``, ``truncate_prob``, ``outlier_prob``; see :mod:`lgd_jax.data.augment`).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  _data_fields(c)
  _objective_fields(c)
  _training_fields(c)
  _run_fields(c)
  c.model = _model_group()
  c.unroll = _unroll_group()
  c.loss = _loss_group()
  c.augment = _augment_group()
  # Detector-like 2D input (lgd_jax/data/augment.py); 0 = off.
  c.detector = _detector_group()
  return c


def _data_fields(c: ml_collections.ConfigDict) -> None:
  """The body model and the poses: AMASS or the synthetic sources."""
  c.body_model = ""
  c.num_betas = 10
  c.amass_dir = ""
  c.amass_fps = 30.0
  c.amass_cache = ""
  c.val_fraction = 0.05
  c.amass_sampling = "epoch"
  c.requires_data = False  # True: body_model and amass_dir must be given (configs/paper.py)
  c.poses = "broad"  # synthetic training poses: "broad", "keyframes" (see data/pose_sources.py)
  c.test_poses = "test"  # synthetic held-out poses (evaluation, validation): "test", "broad", ...


def _objective_fields(c: ml_collections.ConfigDict) -> None:
  """The fitting objective: keypoint set, loss and whether Θ has the camera translation."""
  c.keypoints = "coco18"
  c.objective_loss = "l1"
  c.objective_delta = 0.01  # δ of the "robust" objective, in unit-box units (~3 px of 300)
  c.fit_translation = False


def _training_fields(c: ml_collections.ConfigDict) -> None:
  """Batches, epochs, the training window N, the seed and the learning rate."""
  c.batch_size = 1024
  c.num_epochs = 20
  c.steps_per_epoch = 1000
  c.num_steps = 10
  c.seed = 0
  c.learning_rate = 1e-3
  c.lr_decay = 1.0


def _run_fields(c: ml_collections.ConfigDict) -> None:
  """Checkpoints, logging, validation, devices and what a non-finite step does."""
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.log_every = 10
  c.val_samples = 2048
  c.val_seed = 1_000_003
  c.num_devices = 0
  c.on_nonfinite = "stop"


def _model_group() -> ml_collections.ConfigDict:
  """``model``: the update network (:class:`lgd_jax.fitting.lgd.Learner`)."""
  g = ml_collections.ConfigDict()
  g.variant = "paper"
  g.hidden = 1024
  g.num_blocks = 4
  g.num_residual = 2
  g.dropout = 0.2
  # Where dropout's masks come from: "hash" (a counter-based hash of the element's index and one
  # 64-bit draw per layer and step, computed inside the fused elementwise pass; see
  # lgd_jax.fitting.networks.hash_keep_mask) or "threefry" (Flax's nn.Dropout, one Threefry word
  # drawn and stored per element). Same distribution; benchmarks/bench_dropout.py measures the cost.
  g.dropout_impl = "hash"
  g.output_scale = 0.1
  g.out_init_scale = 1.0
  g.init = "zero"
  g.features = ""  # comma-separated; empty = the variant's inputs
  g.stop_gradient = True
  g.grad_scale = 1.0
  # lax.scan unroll of the N steps, a measured choice. On the 2-core CPU (XLA CPU, jax 0.10.2),
  # interleaved runs: demo config (batch 256, N = 10) 217-237 ms per train step with unroll 1,
  # 232-307 ms with 5 or 10 (full); paper config (batch 1024) 1.75 s vs 1.86 s. The unrolled
  # program takes twice as long to compile (30 s vs 15 s) and is not faster here.
  g.unroll = 1
  g.dtype = "float32"
  g.remat = "dots"  # what the training backward keeps: "none", "dots", "full", "step"
  g.norm = "batch"
  # How the Dense layers start: "flax" (LeCun normal, zero biases) or "pytorch" (nn.Linear's
  # U(±1/sqrt(fan_in)) for kernels and biases, the official code's; configs/official.py).
  g.init_style = "flax"
  g.damping = 0.0
  g.gate = 0.0
  g.gd_rate = 0.0
  g.nominal = "gd"
  g.damping_power = 1.0
  return g


def _unroll_group() -> ml_collections.ConfigDict:
  """``unroll``: how training unrolls are drawn (:class:`lgd_jax.train_state.UnrollSettings`)."""
  g = ml_collections.ConfigDict()
  g.length = "fixed"
  g.min_steps = 1
  g.max_steps = 0  # 0 = num_steps
  g.late_fraction = 0.0
  g.buffer_rounds = 8
  g.max_age = 100
  g.fixed_point_fraction = 0.0
  g.fixed_point_noise = 0.05
  g.loss_gamma = 1.0
  return g


def _loss_group() -> ml_collections.ConfigDict:
  """``loss``: the training loss's weights."""
  g = ml_collections.ConfigDict()
  g.kp2d = 0.3
  g.kp3d = 0.3
  g.pose = 1.0
  g.betas = 1.0
  g.transl = 1.0
  g.update = 0.0
  return g


def _augment_group() -> ml_collections.ConfigDict:
  """``augment``: root rotations, dropped keypoints and translations of the training samples."""
  g = ml_collections.ConfigDict()
  g.yaw_deg = 180.0
  g.tilt_deg = 20.0
  g.drop_prob = 0.2
  g.transl_xy = 0.5
  g.depth_min = 4.0
  g.depth_max = 8.0
  return g


def _detector_group() -> ml_collections.ConfigDict:
  """``detector``: detector-like corruption of the 2D input (:mod:`lgd_jax.data.augment`)."""
  g = ml_collections.ConfigDict()
  g.noise = 0.0
  g.score_jitter = 0.0
  g.swap_prob = 0.0
  g.truncate_prob = 0.0
  g.outlier_prob = 0.0
  return g


# The convergent training scheme, chosen by the convergence ablation
# (``tools/convergence_ablation.py``; the tables in docs/convergence_ablation.md): dotted keys.
# The robust objective, late-iteration starts, fixed-point samples, the network's steps damped by
# (τ/(τ+n))² (summable) and a learned Adam-normalised nominal term beside it (rate 0.01).
CONVERGENT = {
    "objective_loss": "robust",
    "unroll.late_fraction": 0.25, "unroll.buffer_rounds": 8, "unroll.max_age": 100,
    "unroll.fixed_point_fraction": 0.1, "loss.update": 1.0,
    "model.gd_rate": 0.01, "model.nominal": "adam",
    "model.damping": 10.0, "model.damping_power": 2.0,
}
SCHEMES = ("published", "convergent")


def apply_overrides(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys (``{"unroll.late_fraction": 0.25}``) of ``c`` in place; returns ``c``."""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def with_scheme(c: ml_collections.ConfigDict, scheme: str) -> ml_collections.ConfigDict:
  """``c`` trained by ``scheme``: "published" (the paper's: L1, fixed N, no late starts) leaves
  it as it is, "convergent" applies :data:`CONVERGENT`."""
  if scheme not in SCHEMES:
    raise ValueError(f"training scheme: expected one of {SCHEMES}, got {scheme!r}")
  return apply_overrides(c, CONVERGENT) if scheme == "convergent" else c


# Fields whose behaviour before they existed differs from today's default.
LEGACY_DEFAULTS = {"poses": "keyframes", "amass_sampling": "replacement"}


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A config read back from a checkpoint, with the fields it predates set to their defaults.

  Checkpoints written before a field existed keep working: the base config is updated by the
  saved values, nested groups merged field by field; fields unknown to the base are kept.
  """
  merged = base_config().to_dict()
  for k, v in LEGACY_DEFAULTS.items():
    if k not in saved:
      merged[k] = v

  def merge(dst: dict, src: dict):
    for k, v in src.items():
      if isinstance(v, dict) and isinstance(dst.get(k), dict):
        merge(dst[k], v)
      else:
        dst[k] = v

  merge(merged, saved)
  return ml_collections.ConfigDict(merged)
