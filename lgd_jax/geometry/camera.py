"""Cameras: pinhole projection, weak perspective, and LGD's unit-box 2D normalisation."""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

from lgd_jax.geometry.numerics import full_precision

# The official LGD code renders training keypoints with fx = fy = 256, c = 0, R = I, t = (0, 0, -6)
# and then negates x. That is the same image as a standard (OpenCV-style) pinhole camera at
# z = +6 looking down -z with the image y axis pointing down: R = diag(1, -1, -1), t = (0, 0, 6).
OFFICIAL_FOCAL = 256.0
OFFICIAL_DISTANCE = 6.0
# Joints with confidence below this are treated as missing by the official code.
CONFIDENCE_THRESHOLD = 0.01


@flax.struct.dataclass
class Camera:
  """A pinhole camera x_img = f * (R X + t)_xy / (R X + t)_z + c.

  Fields may carry leading batch dimensions that broadcast against the points.

  Attributes:
    focal: (..., 2) focal lengths (fx, fy) in pixels.
    center: (..., 2) principal point (cx, cy) in pixels.
    rotation: (..., 3, 3) world-to-camera rotation.
    translation: (..., 3) world-to-camera translation; the camera looks down +z of its frame.
  """

  focal: jnp.ndarray
  center: jnp.ndarray
  rotation: jnp.ndarray
  translation: jnp.ndarray


def make_camera(focal=OFFICIAL_FOCAL, center=(0.0, 0.0), rotation=None, translation=(0., 0., 0.),
                dtype=jnp.float32) -> Camera:
  """Builds a :class:`Camera`; a scalar focal length means fx = fy."""
  focal = jnp.asarray(focal, dtype)
  if focal.ndim == 0:
    focal = jnp.stack([focal, focal])
  rotation = jnp.eye(3, dtype=dtype) if rotation is None else jnp.asarray(rotation, dtype)
  return Camera(focal, jnp.asarray(center, dtype), rotation, jnp.asarray(translation, dtype))


def official_camera(dtype=jnp.float32) -> Camera:
  """The official LGD code's camera: f = 256, c = 0, body 6 m in front, seen from its +z side."""
  return make_camera(OFFICIAL_FOCAL, (0.0, 0.0), jnp.diag(jnp.array([1.0, -1.0, -1.0])),
                     (0.0, 0.0, OFFICIAL_DISTANCE), dtype)


@full_precision
def to_camera_frame(points: jnp.ndarray, camera: Camera) -> jnp.ndarray:
  """World points (..., K, 3) to camera coordinates (..., K, 3)."""
  rot = camera.rotation[..., None, :, :]
  # Written out as three products and two sums rather than a product and a reduction over the
  # size-3 axis: XLA:CPU hands such small reductions to a library kernel whose per-call cost
  # dominates here (the objective's gradient at batch 1024 measured 1 ms slower).
  return (rot[..., 0] * points[..., 0:1] + rot[..., 1] * points[..., 1:2]
          + rot[..., 2] * points[..., 2:3] + camera.translation[..., None, :])


@full_precision
def project(points: jnp.ndarray, camera: Camera) -> jnp.ndarray:
  """Perspective projection of world points.

  Args:
    points: (..., K, 3) world points; they must lie in front of the camera (positive depth).
    camera: the camera, fields broadcasting against the leading dimensions of ``points``.

  Returns:
    (..., K, 2) pixel coordinates.
  """
  cam = to_camera_frame(points, camera)
  return cam[..., :2] / cam[..., 2:3] * camera.focal[..., None, :] + camera.center[..., None, :]


@full_precision
def weak_perspective(points: jnp.ndarray, scale: jnp.ndarray, trans: jnp.ndarray) -> jnp.ndarray:
  """HMR/SPIN's weak-perspective camera: s * (X_xy + t).

  Args:
    points: (..., K, 3) points.
    scale: (...) scale s.
    trans: (..., 2) image-plane translation t.

  Returns:
    (..., K, 2) projected points (in the normalised units of ``scale``).
  """
  return scale[..., None, None] * (points[..., :2] + trans[..., None, :])


def weak_perspective_to_translation(scale: jnp.ndarray, trans: jnp.ndarray, focal: float,
                                    image_size: float) -> jnp.ndarray:
  """The camera translation (tx, ty, tz) that a pinhole camera with ``focal`` needs to reproduce
  a weak-perspective (s, t) prediction made in [-1, 1] image coordinates of ``image_size`` pixels
  (SPIN's convention: tz = 2 f / (image_size * s)).
  """
  tz = 2.0 * focal / (image_size * scale)
  return jnp.concatenate([trans, tz[..., None]], -1)


def normalize_unit_box(points: jnp.ndarray, confidence: jnp.ndarray | None = None,
                       threshold: float = CONFIDENCE_THRESHOLD) -> jnp.ndarray:
  """The official code's 2D normalisation over visible joints.

  The bounding box of the visible joints (confidence >= threshold) is centred at 0.5 and its
  longer side scaled to 1, keeping the aspect ratio; invisible joints are set to 0.5. A sample with
  no visible joint comes back all 0.5, one whose visible joints coincide is only centred.

  Args:
    points: (..., K, 2) 2D points.
    confidence: (..., K) confidences; None means all visible.
    threshold: visibility threshold.

  Returns:
    (..., K, 2) normalised points.
  """
  if confidence is None:
    visible = jnp.ones(points.shape[:-1], bool)
  else:
    visible = confidence >= threshold
  vis = visible[..., None]
  big = jnp.asarray(jnp.finfo(points.dtype).max, points.dtype)
  lo = jnp.min(jnp.where(vis, points, big), axis=-2, keepdims=True)
  hi = jnp.max(jnp.where(vis, points, -big), axis=-2, keepdims=True)
  any_visible = jnp.any(vis, axis=-2, keepdims=True)
  lo = jnp.where(any_visible, lo, 0.0)
  hi = jnp.where(any_visible, hi, 0.0)
  scale = jnp.max(hi - lo, axis=-1, keepdims=True)
  scale = jnp.where(scale > 0, scale, 1.0)
  normalised = (points - 0.5 * (lo + hi)) / scale + 0.5
  return jnp.where(vis, normalised, 0.5)
