"""Rotation conversions: values against closed forms and SciPy-free references, gradients in
float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lgd_jax.geometry import rotations

# float32 round-off on O(1) rotation entries.
F32_TOL = 2e-6
# float64 comparisons.
F64_TOL = 1e-12
# check_grads tolerance for float64 finite differences.
GRAD_TOL = 1e-6


def _rodrigues_reference(aa):
  """Rodrigues in float64 NumPy via the matrix exponential series (independent of the code)."""
  k = np.array([[0, -aa[2], aa[1]], [aa[2], 0, -aa[0]], [-aa[1], aa[0], 0]], np.float64)
  out, term = np.eye(3), np.eye(3)
  for n in range(1, 40):
    term = term @ k / n
    out = out + term
  return out


ANGLES = [0.0, 1e-12, 1e-8, 1e-4, 0.05, 0.0999, 0.1001, 0.5, 1.0, 2.0, 3.0, np.pi - 1e-4]


@pytest.mark.parametrize("angle", ANGLES)
def test_axis_angle_to_matrix_matches_exponential(angle):
  axis = np.array([0.3, -0.5, 0.8])
  aa = axis / np.linalg.norm(axis) * angle
  with jax.enable_x64(True):
    rot = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(aa, jnp.float64)))
  np.testing.assert_allclose(rot, _rodrigues_reference(aa), atol=F64_TOL)
  rot32 = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(aa, jnp.float32)))
  np.testing.assert_allclose(rot32, _rodrigues_reference(aa), atol=F32_TOL)


def test_gradient_at_zero_is_exact_generator():
  # dR/da_i at a = 0 is the generator [e_i]x exactly, with no epsilon bias and no NaN.
  jac = jax.jacfwd(rotations.axis_angle_to_matrix)(jnp.zeros(3))
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(jac[..., i]),
                                  np.asarray(rotations.skew(jnp.eye(3)[i])))
  jac_rev = jax.jacrev(rotations.axis_angle_to_matrix)(jnp.zeros(3))
  np.testing.assert_array_equal(np.asarray(jac_rev), np.asarray(jac))


@pytest.mark.parametrize("aa", [[0.0, 0.0, 0.0], [1e-9, 0.0, -2e-9], [0.03, -0.02, 0.05],
                                [0.07, 0.05, -0.03], [0.4, -1.1, 0.7], [2.0, 1.0, -1.5]])
def test_axis_angle_to_matrix_check_grads(aa):
  with jax.enable_x64(True):
    check_grads(rotations.axis_angle_to_matrix, (jnp.asarray(aa, jnp.float64),), order=2,
                modes=("fwd", "rev"), atol=GRAD_TOL, rtol=GRAD_TOL)


def test_random_round_trips():
  key = jax.random.PRNGKey(0)
  aa = jax.random.normal(key, (500, 3))
  aa = aa / jnp.linalg.norm(aa, axis=-1, keepdims=True) * jax.random.uniform(
      key, (500, 1), minval=0.0, maxval=np.pi - 1e-3)
  with jax.enable_x64(True):
    aa64 = jnp.asarray(np.asarray(aa), jnp.float64)
    rot = rotations.axis_angle_to_matrix(aa64)
    np.testing.assert_allclose(rotations.matrix_to_axis_angle(rot), aa64, atol=1e-9)
    np.testing.assert_allclose(rotations.rot6d_to_matrix(rotations.matrix_to_rot6d(rot)), rot,
                               atol=F64_TOL)
    q = rotations.matrix_to_quaternion(rot)
    np.testing.assert_allclose(rotations.quaternion_to_matrix(q), rot, atol=F64_TOL)
    # Orthonormal with determinant +1.
    np.testing.assert_allclose(rot @ jnp.swapaxes(rot, -1, -2),
                               np.broadcast_to(np.eye(3), rot.shape),
                               atol=F64_TOL)
    np.testing.assert_allclose(jnp.linalg.det(rot), 1.0, atol=F64_TOL)


def test_matrix_to_axis_angle_at_pi_and_zero():
  with jax.enable_x64(True):
    for axis in [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.6, 0.8, 0.0]]:
      aa = jnp.asarray(axis, jnp.float64) * np.pi
      back = rotations.matrix_to_axis_angle(rotations.axis_angle_to_matrix(aa))
      # At pi, a and -a are the same rotation.
      assert min(float(jnp.abs(back - aa).max()), float(jnp.abs(back + aa).max())) < 1e-7
    np.testing.assert_array_equal(rotations.matrix_to_axis_angle(jnp.eye(3, dtype=jnp.float64)),
                                  np.zeros(3))


@pytest.mark.parametrize("aa", [[1e-10, 0.0, 0.0], [0.01, 0.02, -0.03], [0.5, -0.4, 1.2]])
def test_matrix_to_axis_angle_check_grads(aa):
  with jax.enable_x64(True):
    rot = rotations.axis_angle_to_matrix(jnp.asarray(aa, jnp.float64))
    check_grads(rotations.matrix_to_axis_angle, (rot,), order=1, modes=("fwd", "rev"),
                atol=GRAD_TOL, rtol=GRAD_TOL)
    # The round trip is the identity, so its Jacobian is I, also at (nearly) zero.
    jac = jax.jacfwd(lambda a: rotations.matrix_to_axis_angle(rotations.axis_angle_to_matrix(a)))(
        jnp.asarray(aa, jnp.float64))
    np.testing.assert_allclose(jac, np.eye(3), atol=1e-8)


def test_rot6d_layout_and_gram_schmidt():
  rot = rotations.axis_angle_to_matrix(jnp.array([0.3, 0.2, -0.1]))
  six = rotations.matrix_to_rot6d(rot)
  np.testing.assert_array_equal(six, jnp.stack([rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1],
                                                rot[2, 0], rot[2, 1]]))
  # Any non-degenerate 6D vector maps to a proper rotation.
  x = jax.random.normal(jax.random.PRNGKey(3), (100, 6))
  r = rotations.rot6d_to_matrix(x)
  np.testing.assert_allclose(jnp.linalg.det(r), 1.0, atol=1e-5)
  with jax.enable_x64(True):
    check_grads(rotations.rot6d_to_matrix, (jnp.asarray(np.asarray(x[:4]), jnp.float64),),
                order=1, atol=GRAD_TOL, rtol=GRAD_TOL)


def test_euler_matches_product_of_axis_rotations():
  ang = jnp.array([0.3, -0.7, 1.1])
  rot = rotations.euler_to_matrix(ang, "xyz")
  rx = rotations.axis_angle_to_matrix(jnp.array([0.3, 0, 0]))
  ry = rotations.axis_angle_to_matrix(jnp.array([0, -0.7, 0]))
  rz = rotations.axis_angle_to_matrix(jnp.array([0, 0, 1.1]))
  np.testing.assert_allclose(rot, rx @ ry @ rz, atol=F32_TOL)


def test_batch_and_vmap_agree():
  aa = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 3))
  np.testing.assert_allclose(rotations.axis_angle_to_matrix(aa),
                             jax.vmap(jax.vmap(rotations.axis_angle_to_matrix))(aa), atol=0)
