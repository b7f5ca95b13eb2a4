"""Rotation conversions: axis-angle, rotation matrices, quaternions and the 6D representation.

Every function works on arrays with arbitrary leading batch dimensions and is exact, in value and
gradient, at and near the zero rotation. LGD starts its fits at the zero pose, so a conversion that
adds an epsilon to the angle (as smplx's ``batch_rodrigues`` does) would bias the very first
gradient; here small angles switch to Taylor series instead, with the "double where" pattern so that
the branch not taken never produces NaN gradients.
"""

from __future__ import annotations

import jax.numpy as jnp

from lgd_jax.geometry.numerics import full_precision

# Below this squared angle (0.1 rad) the Taylor series are used. Their truncation error, about
# theta^8 / 9!, is far below float64 round-off there.
_SMALL_ANGLE_SQ = 1e-2


def skew(v: jnp.ndarray) -> jnp.ndarray:
  """Cross-product matrices [v]x with [v]x @ u == cross(v, u).

  Args:
    v: (..., 3) vectors.

  Returns:
    (..., 3, 3) skew-symmetric matrices.
  """
  x, y, z = v[..., 0], v[..., 1], v[..., 2]
  zero = jnp.zeros_like(x)
  return jnp.stack([
      jnp.stack([zero, -z, y], -1),
      jnp.stack([z, zero, -x], -1),
      jnp.stack([-y, x, zero], -1),
  ], -2)


def _sinc_and_half_cosc(theta_sq: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Returns sin(t)/t and (1 - cos t)/t^2 as functions of t^2, exact and smooth at t = 0."""
  small = theta_sq < _SMALL_ANGLE_SQ
  # Double where: the large-angle branch never sees a zero angle, so its gradient stays finite.
  safe_sq = jnp.where(small, jnp.ones_like(theta_sq), theta_sq)
  theta = jnp.sqrt(safe_sq)
  half = 0.5 * theta
  sinc_large = jnp.sin(theta) / theta
  # (1 - cos t)/t^2 = 0.5 * (sin(t/2)/(t/2))^2 has no cancellation, unlike 1 - cos t in float32.
  cosc_large = 0.5 * jnp.square(jnp.sin(half) / half)
  x = theta_sq
  sinc_small = 1.0 - x / 6.0 * (1.0 - x / 20.0 * (1.0 - x / 42.0))
  cosc_small = 0.5 - x / 24.0 * (1.0 - x / 30.0 * (1.0 - x / 56.0))
  return jnp.where(small, sinc_small, sinc_large), jnp.where(small, cosc_small, cosc_large)


def axis_angle_to_matrix(aa: jnp.ndarray) -> jnp.ndarray:
  """Rodrigues' formula R = I + sin(t)/t K + (1 - cos t)/t^2 K^2 with K = [aa]x, t = |aa|.

  Args:
    aa: (..., 3) axis-angle vectors (axis times angle in radians).

  Returns:
    (..., 3, 3) rotation matrices.
  """
  x, y, z = aa[..., 0], aa[..., 1], aa[..., 2]
  a, b = _sinc_and_half_cosc(x * x + y * y + z * z)
  # Written out entry by entry: on XLA's CPU backend this fuses into one elementwise kernel,
  # where K and K @ K as batched 3x3 matmuls would not.
  xx, yy, zz = x * x, y * y, z * z
  xy, xz, yz = x * y, x * z, y * z
  rows = [
      [1.0 - b * (yy + zz), b * xy - a * z, b * xz + a * y],
      [b * xy + a * z, 1.0 - b * (xx + zz), b * yz - a * x],
      [b * xz - a * y, b * yz + a * x, 1.0 - b * (xx + yy)],
  ]
  return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def matrix_to_quaternion(rot: jnp.ndarray) -> jnp.ndarray:
  """Rotation matrices to unit quaternions (w, x, y, z) with w >= 0.

  Uses the numerically best of the four Shepperd candidates for each matrix, so it is accurate for
  every angle including pi.

  Args:
    rot: (..., 3, 3) rotation matrices.

  Returns:
    (..., 4) quaternions.
  """
  m = rot
  m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
  # Four candidates, each scaled by 4 * (its largest component).
  cands = jnp.stack([
      jnp.stack([1.0 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2],
                 m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
      jnp.stack([m[..., 2, 1] - m[..., 1, 2], 1.0 + m00 - m11 - m22,
                 m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
      jnp.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1],
                 1.0 - m00 + m11 - m22, m[..., 2, 1] + m[..., 1, 2]], -1),
      jnp.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                 m[..., 2, 1] + m[..., 1, 2], 1.0 - m00 - m11 + m22], -1),
  ], -2)  # (..., 4, 4): row i is candidate i
  diag = jnp.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                    1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], -1)
  best = jnp.argmax(diag, axis=-1)
  q = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  return jnp.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: jnp.ndarray) -> jnp.ndarray:
  """Unit quaternions (w, x, y, z) to axis-angle vectors with angle in [0, pi].

  Args:
    q: (..., 4) unit quaternions.

  Returns:
    (..., 3) axis-angle vectors.
  """
  q = jnp.where(q[..., :1] < 0, -q, q)
  w, v = q[..., 0], q[..., 1:]
  s_sq = jnp.sum(v * v, axis=-1)
  small = s_sq < _SMALL_ANGLE_SQ * 1e-2
  safe_s = jnp.sqrt(jnp.where(small, jnp.ones_like(s_sq), s_sq))
  # angle / sin(angle / 2) = 2 atan2(s, w) / s; near s = 0 its series in s/w.
  ratio_large = 2.0 * jnp.arctan2(safe_s, w) / safe_s
  t = s_sq / (w * w)
  ratio_small = 2.0 / w * (1.0 - t / 3.0 + t * t / 5.0)
  ratio = jnp.where(small, ratio_small, ratio_large)
  return v * ratio[..., None]


def matrix_to_axis_angle(rot: jnp.ndarray) -> jnp.ndarray:
  """Rotation matrices to axis-angle vectors with angle in [0, pi].

  Args:
    rot: (..., 3, 3) rotation matrices.

  Returns:
    (..., 3) axis-angle vectors.
  """
  return quaternion_to_axis_angle(matrix_to_quaternion(rot))


def quaternion_to_matrix(q: jnp.ndarray) -> jnp.ndarray:
  """Quaternions (w, x, y, z), not necessarily unit, to rotation matrices.

  Args:
    q: (..., 4) quaternions.

  Returns:
    (..., 3, 3) rotation matrices.
  """
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  rows = [
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ]
  return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def matrix_to_rot6d(rot: jnp.ndarray) -> jnp.ndarray:
  """The continuous 6D representation of Zhou et al. (CVPR 2019): the first two columns.

  Laid out as in HMR/SPIN: the (3, 2) block R[:, :2] flattened row-major, i.e.
  (R00, R01, R10, R11, R20, R21).

  Args:
    rot: (..., 3, 3) rotation matrices.

  Returns:
    (..., 6) vectors.
  """
  return rot[..., :, :2].reshape(rot.shape[:-2] + (6,))


def rot6d_to_matrix(x: jnp.ndarray) -> jnp.ndarray:
  """Gram-Schmidt of the 6D representation back to a rotation matrix.

  Args:
    x: (..., 6) vectors in the layout of :func:`matrix_to_rot6d`; need not be orthonormal.

  Returns:
    (..., 3, 3) rotation matrices whose first column is a1/|a1|.
  """
  x = x.reshape(x.shape[:-1] + (3, 2))
  a1, a2 = x[..., 0], x[..., 1]
  b1 = a1 / jnp.linalg.norm(a1, axis=-1, keepdims=True)
  a2 = a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1
  b2 = a2 / jnp.linalg.norm(a2, axis=-1, keepdims=True)
  b3 = jnp.cross(b1, b2)
  return jnp.stack([b1, b2, b3], axis=-1)


def axis_angle_to_rot6d(aa: jnp.ndarray) -> jnp.ndarray:
  """Axis-angle (..., 3) to the 6D representation (..., 6)."""
  return matrix_to_rot6d(axis_angle_to_matrix(aa))


def rot6d_to_axis_angle(x: jnp.ndarray) -> jnp.ndarray:
  """The 6D representation (..., 6) to axis-angle (..., 3)."""
  return matrix_to_axis_angle(rot6d_to_matrix(x))


@full_precision
def euler_to_matrix(angles: jnp.ndarray, order: str = "xyz") -> jnp.ndarray:
  """Intrinsic Euler angles to rotation matrices: R = R_{order[0]} @ R_{order[1]} @ R_{order[2]}.

  Args:
    angles: (..., 3) angles in radians, one per letter of ``order``.
    order: three letters from "xyz".

  Returns:
    (..., 3, 3) rotation matrices.
  """
  axes = {"x": 0, "y": 1, "z": 2}
  rot = None
  for i, letter in enumerate(order):
    aa = jnp.zeros(angles.shape[:-1] + (3,), angles.dtype).at[..., axes[letter]].set(angles[..., i])
    r = axis_angle_to_matrix(aa)
    rot = r if rot is None else rot @ r
  return rot


@full_precision
def rotate_root(pose: jnp.ndarray, yaw, pitch, roll) -> jnp.ndarray:
  """Left-multiplies the global orientation by R_z(roll) R_y(yaw) R_x(pitch) (official order;
  y is up, so yaw turns the body about the vertical)."""
  rot = euler_to_matrix(jnp.stack([roll, yaw, pitch], -1), order="zyx")
  root = matrix_to_axis_angle(rot @ axis_angle_to_matrix(pose[..., :3]))
  return pose.at[..., :3].set(root)
