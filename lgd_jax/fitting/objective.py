"""The fitting problem LGD solves: parameters, rendering to 2D, and the re-projection objective.

The parameters Θ of one sample are a flat vector ``[pose (72), betas (B), transl (3, optional)]``,
so that the update network, gradient descent and Adam all act on the same array. The objective is
the official code's: 2D keypoints rendered by a pinhole camera, normalised to the unit box of the
visible joints (or, when the camera translation is fitted, to the camera's image plane), compared
with the target by a confidence-weighted mean of a per-coordinate penalty. No priors.

Penalties (``loss``): "l1" |d| (the official code's), "l2" d², and "robust", the pseudo-Huber
(Charbonnier) penalty δ·(sqrt(1 + (d/δ)²) - 1): |d| - δ for residuals well above δ, so it is as
robust to outliers and swapped joints as L1, and d²/(2δ) below δ, so its gradient vanishes at an
exact fit and "the gradient is small" means "the fit is tight" (it does not for L1, whose
gradient keeps a magnitude of order 1 however close the fit).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import body
from lgd_jax.body.model import NUM_POSE
from lgd_jax.geometry import camera

# Weights of the training loss's 3D keypoint term, by keypoint name (official code, COCO-18).
LOSSES = ("l1", "l2", "robust")
# δ of the robust penalty: 0.01 of the unit box, about 3 px for a person 300 px tall.
ROBUST_DELTA = 0.01
_JOINT_WEIGHTS = {"wrist": 8.0, "ankle": 8.0, "elbow": 4.0, "knee": 4.0, "shoulder": 2.0,
                  "hip": 2.0}


@flax.struct.dataclass
class Problem:
  """Everything the objective needs besides the parameters and the target.

  Attributes:
    model: the body model (arrays traced).
    camera: the camera that renders the keypoints.
    kpset: keypoint set name, e.g. "coco18" (static).
    loss: "l1", "l2" or "robust" (static).
    delta: δ of the robust penalty, in the objective's normalised units (static).
    fit_translation: whether Θ ends with a camera translation (static); then the 2D keypoints are
      normalised by the camera intrinsics instead of the unit box, so that depth is observable.
  """

  model: body.BodyModel
  camera: camera.Camera
  kpset: str = flax.struct.field(pytree_node=False, default="coco18")
  loss: str = flax.struct.field(pytree_node=False, default="l1")
  delta: float = flax.struct.field(pytree_node=False, default=ROBUST_DELTA)
  fit_translation: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def num_betas(self) -> int:
    return self.model.num_betas

  @property
  def num_params(self) -> int:
    return NUM_POSE + self.num_betas + (3 if self.fit_translation else 0)

  @property
  def num_keypoints(self) -> int:
    return len(body.get_keypoint_set(self.kpset).names)


def make_problem(model: body.BodyModel, kpset: str = "coco18", loss: str = "l1",
                 fit_translation: bool = False, cam: camera.Camera | None = None,
                 delta: float = ROBUST_DELTA) -> Problem:
  """A :class:`Problem` with the official camera unless another is given."""
  if loss not in LOSSES:
    raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
  if not delta > 0:
    raise ValueError(f"delta: expected a positive number, got {delta!r}")
  body.get_keypoint_set(kpset)  # fails early on an unknown name
  return Problem(model, camera.official_camera() if cam is None else cam, kpset, loss,
                 float(delta), fit_translation)


class Params(NamedTuple):
  pose: jnp.ndarray
  betas: jnp.ndarray
  transl: jnp.ndarray | None


def split(problem: Problem, theta: jnp.ndarray) -> Params:
  """Splits (..., P) parameter vectors into pose (..., 72), betas (..., B), transl (..., 3)."""
  nb = problem.num_betas
  pose = theta[..., :NUM_POSE]
  betas = theta[..., NUM_POSE:NUM_POSE + nb]
  transl = theta[..., NUM_POSE + nb:NUM_POSE + nb + 3] if problem.fit_translation else None
  return Params(pose, betas, transl)


def join(problem: Problem, pose, betas, transl=None) -> jnp.ndarray:
  """The inverse of :func:`split`; a missing translation is zero when the problem fits one."""
  parts = [pose, betas]
  if problem.fit_translation:
    parts.append(jnp.zeros(pose.shape[:-1] + (3,), pose.dtype) if transl is None else transl)
  return jnp.concatenate(parts, -1)


def keypoints_3d(problem: Problem, theta: jnp.ndarray) -> jnp.ndarray:
  """(..., P) -> (..., K, 3) keypoints in the body's world frame (translation included)."""
  p = split(problem, theta)
  return body.keypoints(problem.model, p.pose, p.betas, p.transl, problem.kpset)


CONFIDENCE_RULES = ("binary", "raw")


def observe(problem: Problem, pixels: jnp.ndarray, conf: jnp.ndarray, focal=None, center=None,
            confidence: str = "binary") -> tuple[jnp.ndarray, jnp.ndarray]:
  """The one input function: 2D keypoints in pixels and their scores -> what the fit sees.

  Training, the benchmark protocols and detection fitting all go through it, so the network
  sees at test time what it was trained on.

  * Confidences (``confidence``): "binary" is the official code's rule (its ``validation_step``):
    a score >= :data:`lgd_jax.geometry.camera.CONFIDENCE_THRESHOLD` (0.01) becomes 1, anything
    else 0,
    so the objective's weights and the network's "conf" input are exactly the {0, 1} values of
    training, whatever the detector's score scale; "raw" keeps scores at or above the threshold
    as they are (0 below), an explicit option for users who want the detector's scores to
    weigh the objective.
  * Coordinates: the unit box of the confident joints (the official normalisation), or, when
    the problem fits the camera translation, the normalised image plane (x - c) / f of the
    camera with ``focal`` (..., 2 or scalar) and ``center`` (..., 2) (default: the problem's
    camera); missing joints are placed as :func:`to_2d` places them.

  Args:
    problem: the fitting problem.
    pixels: (..., K, 2) keypoints, pixels.
    conf: (..., K) scores (0 = missing).
    focal, center: the camera of ``pixels`` when the problem fits the translation, each
      broadcasting to (..., 2) (a per-sample focal length: shape (..., 1)).
    confidence: "binary" or "raw".

  Returns:
    (kp2d (..., K, 2) normalised, conf (..., K) the weights the objective and network use).
  """
  if confidence not in CONFIDENCE_RULES:
    raise ValueError(f"confidence: expected one of {CONFIDENCE_RULES}, got {confidence!r}")
  pixels = jnp.asarray(pixels, jnp.float32)
  conf = jnp.asarray(conf, jnp.float32)
  seen = conf >= camera.CONFIDENCE_THRESHOLD
  weights = confidence_weights(conf, confidence)
  if not problem.fit_translation:
    return camera.normalize_unit_box(pixels, weights), weights
  f = problem.camera.focal if focal is None else jnp.asarray(focal, jnp.float32)
  c = problem.camera.center if center is None else jnp.asarray(center, jnp.float32)
  f = jnp.broadcast_to(f, pixels.shape[:-2] + (2,))
  c = jnp.broadcast_to(c, pixels.shape[:-2] + (2,))
  norm = (pixels - c[..., None, :]) / f[..., None, :]
  return jnp.where(seen[..., None], norm, 0.0), weights


def confidence_weights(conf: jnp.ndarray, confidence: str = "binary") -> jnp.ndarray:
  """Scores (..., K) -> the objective's weights under the rule ``confidence`` (see
  :func:`observe`)."""
  if confidence not in CONFIDENCE_RULES:
    raise ValueError(f"confidence: expected one of {CONFIDENCE_RULES}, got {confidence!r}")
  conf = jnp.asarray(conf, jnp.float32)
  seen = conf >= camera.CONFIDENCE_THRESHOLD
  return seen.astype(jnp.float32) if confidence == "binary" else jnp.where(seen, conf, 0.0)


def to_2d(problem: Problem, kp3d: jnp.ndarray, conf: jnp.ndarray) -> jnp.ndarray:
  """Renders (..., K, 3) keypoints to the objective's normalised 2D frame (..., K, 2).

  Missing keypoints (confidence below the official threshold) come out at 0.5 in the unit box
  (as in the official code) or at the image centre's normalised coordinate 0 otherwise.
  """
  pix = camera.project(kp3d, problem.camera)
  if not problem.fit_translation:
    return camera.normalize_unit_box(pix, conf)
  norm = (pix - problem.camera.center[..., None, :]) / problem.camera.focal[..., None, :]
  return jnp.where((conf >= camera.CONFIDENCE_THRESHOLD)[..., None], norm, 0.0)


def objective(problem: Problem, theta: jnp.ndarray, kp2d: jnp.ndarray, conf: jnp.ndarray):
  """The re-projection error of one sample.

  Args:
    problem: the :class:`Problem`.
    theta: (P,) parameters.
    kp2d: (K, 2) normalised target keypoints.
    conf: (K,) confidences.

  Returns:
    (loss, (kp3d (K, 3), pred2d (K, 2))): the mean over keypoints and coordinates of
    conf * penalty(pred - target), for L1 the official code's weighted L1 per sample.
  """
  kp3d = keypoints_3d(problem, theta)
  pred = to_2d(problem, kp3d, conf)
  err = penalty(pred - kp2d, problem.loss, problem.delta)
  return jnp.mean(conf[:, None] * err), (kp3d, pred)


def penalty(diff: jnp.ndarray, loss: str, delta: float = ROBUST_DELTA) -> jnp.ndarray:
  """The per-coordinate penalty of residuals ``diff`` (see the module docstring)."""
  if loss == "l1":
    return jnp.abs(diff)
  if loss == "l2":
    return jnp.square(diff)
  # δ(sqrt(1 + r²) - 1) = δ r² / (sqrt(1 + r²) + 1): no cancellation for small r in float32.
  r2 = jnp.square(diff / delta)
  return delta * r2 / (jnp.sqrt(1.0 + r2) + 1.0)


def value_and_grad(problem: Problem, theta: jnp.ndarray, kp2d: jnp.ndarray, conf: jnp.ndarray):
  """Per-sample objective and gradient for a batch: theta (B, P) -> (loss (B,), aux,
  grad (B, P))."""
  fn = jax.vmap(jax.value_and_grad(objective, argnums=1, has_aux=True), in_axes=(None, 0, 0, 0))
  (loss, aux), grad = fn(problem, theta, kp2d, conf)
  return loss, aux, grad


def joint_weights(kpset: str) -> np.ndarray:
  """The training loss's per-keypoint 3D weights: 8 wrists/ankles, 4 elbows/knees, 2 shoulders/
  hips, 1 else (for COCO-18 exactly the official code's weights)."""
  names = body.get_keypoint_set(kpset).names
  out = np.ones(len(names), np.float32)
  for i, name in enumerate(names):
    for part, w in _JOINT_WEIGHTS.items():
      if name.endswith("_" + part):
        out[i] = w
  return out
