"""Pose sources on the device and the batches drawn from them: poses (sampled with replacement or in
per-epoch shuffled order), the root augmentation, shapes, rendering to 2D and detector-like
corruption.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lgd_jax import parallel
from lgd_jax.data import augment
from lgd_jax.fitting import objective
from lgd_jax.fitting.objective import Problem
from lgd_jax.geometry import camera
from lgd_jax.geometry.rotations import rotate_root

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
                         "epoch's order; pass step and set order (batches.with_epoch_order)")
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


@functools.cache
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
