"""The camera translation of a body from its 2D keypoints: weighted linear least squares (SPIN's
estimate_translation), and the default focal length of an image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax.geometry.numerics import full_precision

# ---------------------------------------------------------------------------------------------
# Camera and fitting (jitted, batched).


def default_focal(width, height):
  """sqrt(W² + H²) pixels (CLIFF's full-frame estimate)."""
  return np.sqrt(np.square(np.asarray(width, np.float64)) + np.square(np.asarray(height,
                                                                                  np.float64)))


def _translation_one(points, kp, w, focal, center):
  xn = (kp - center) / focal  # (K, 2)
  k = points.shape[0]
  eye = jnp.broadcast_to(jnp.eye(2, 3, dtype=points.dtype), (k, 2, 3))
  a = eye.at[:, :, 2].set(-xn).reshape(2 * k, 3)
  b = (xn * points[:, 2:3] - points[:, :2]).reshape(2 * k)
  aw = a * jnp.repeat(w, 2)[:, None]
  return jnp.linalg.solve(aw.T @ a, aw.T @ b)


@jax.jit
@full_precision
def estimate_translation(points: jnp.ndarray, keypoints: jnp.ndarray, weights: jnp.ndarray,
                         focal: jnp.ndarray, center: jnp.ndarray) -> jnp.ndarray:
  """The camera-frame translation t that best projects points + t onto the keypoints.

  Weighted linear least squares (SPIN's ``estimate_translation_np``): each joint gives
  t_a - x̂_a t_z = x̂_a Z - X_a for a = x, y with x̂ = (x - c) / f, weighted by its confidence.
  Exact for exact projections; needs at least two joints of non-zero weight.

  Args:
    points: (B, K, 3) points in the camera's orientation (x right, y down, z forward).
    keypoints: (B, K, 2) pixel coordinates.
    weights: (B, K) non-negative weights (0 = missing).
    focal: (B,) focal lengths in pixels.
    center: (B, 2) principal points in pixels.

  Returns:
    (B, 3) translations.
  """
  return jax.vmap(_translation_one)(points, keypoints, weights, focal, center)
