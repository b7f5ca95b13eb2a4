"""3D error metrics: hand-computed cases, Procrustes against SPIN's NumPy code, batching, jit; all
of it again with ``jax_default_matmul_precision`` forced to "tensorfloat32"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import metrics
from lgd_jax.geometry import rotations

# Every test twice: at the default matmul precision and with TF32 forced (conftest).
pytestmark = pytest.mark.usefixtures("matmul_default")

# Millimetre tolerance for float32 results on metre-scale inputs.
F32_MM_TOL = 1e-3
# Millimetre tolerance for float64 results.
F64_MM_TOL = 1e-9


def _spin_similarity_transform(s1, s2):
  """SPIN's compute_similarity_transform, transcribed for (N, 3) inputs in NumPy float64."""
  s1, s2 = s1.T, s2.T
  mu1 = s1.mean(axis=1, keepdims=True)
  mu2 = s2.mean(axis=1, keepdims=True)
  x1, x2 = s1 - mu1, s2 - mu2
  var1 = np.sum(x1 ** 2)
  k = x1 @ x2.T
  u, _, vh = np.linalg.svd(k)
  v = vh.T
  z = np.eye(3)
  z[-1, -1] *= np.sign(np.linalg.det(u @ v.T))
  r = v @ z @ u.T
  scale = np.trace(r @ k) / var1
  t = mu2 - scale * (r @ mu1)
  return (scale * r @ s1 + t).T


def _random_rotation(key, dtype=jnp.float32):
  return rotations.axis_angle_to_matrix(jax.random.normal(key, (3,), dtype))


def test_mpjpe_known_offset():
  gt = jnp.zeros((5, 3)).at[:, 1].set(jnp.arange(5.0))
  offset = jnp.array([0.03, 0.0, 0.04])  # 50 mm
  pred = gt + offset
  assert metrics.mpjpe(pred, gt, root=None) == pytest.approx(50.0, abs=F32_MM_TOL)
  # Root centring removes a global offset entirely.
  assert metrics.mpjpe(pred, gt, root=0) == pytest.approx(0.0, abs=F32_MM_TOL)
  # Moving one joint by 10 cm: 100 mm on one of five joints without centring.
  moved = gt.at[2, 0].add(0.1)
  assert metrics.mpjpe(moved, gt, root=None) == pytest.approx(20.0, abs=F32_MM_TOL)
  # Centred on joint 2 instead, the other four joints are off by 100 mm.
  assert metrics.mpjpe(moved, gt, root=2) == pytest.approx(80.0, abs=F32_MM_TOL)


def test_mpjpe_root_tuple_is_mean_of_joints():
  gt = jnp.zeros((4, 3))
  pred = gt.at[0, 0].set(0.2).at[1, 0].set(0.0)
  # Root = mean of joints 0 and 1 is (0.1, 0, 0) in pred: joints 0/1 at +-100 mm, 2/3 at 100 mm.
  assert metrics.mpjpe(pred, gt, root=(0, 1)) == pytest.approx(100.0, abs=F32_MM_TOL)
  np.testing.assert_allclose(metrics.joint_errors(pred, gt, root=(0, 1)), [100.0] * 4,
                             atol=F32_MM_TOL)
  assert metrics.mpjpe(pred, gt, root=np.int64(2)) == pytest.approx(50.0, abs=F32_MM_TOL)


def test_pa_mpjpe_similarity_copy_is_zero():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  gt = jax.random.normal(k1, (17, 3)) * 0.3
  pred = 1.7 * gt @ _random_rotation(k2).T + jax.random.normal(k3, (3,))
  assert metrics.pa_mpjpe(pred, gt) == pytest.approx(0.0, abs=F32_MM_TOL)
  np.testing.assert_allclose(metrics.procrustes_align(pred, gt), gt, atol=F32_MM_TOL / 1000)
  assert metrics.mpjpe(pred, gt) > 100.0


def test_pa_mpjpe_never_reflects():
  gt = jax.random.normal(jax.random.PRNGKey(1), (14, 3)) * 0.3
  mirrored = gt * jnp.array([-1.0, 1.0, 1.0])  # a reflection: no rotation maps it onto gt
  aligned = metrics.procrustes_align(mirrored, gt)
  mu = jnp.mean(aligned, 0)
  # The fitted transform is proper: the aligned points are a rotated, scaled copy of the input.
  k = (aligned - mu).T @ (mirrored - jnp.mean(mirrored, 0))
  u, _, vh = np.linalg.svd(np.asarray(k))
  assert np.linalg.det(u @ vh) > 0
  assert metrics.pa_mpjpe(mirrored, gt) > 10.0
  np.testing.assert_allclose(aligned, _spin_similarity_transform(np.asarray(mirrored, np.float64),
                                                                 np.asarray(gt, np.float64)),
                             atol=1e-5)


def test_pa_mpjpe_matches_spin_numpy():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(8, 24, 3)) * 0.4
  gt = rng.normal(size=(8, 24, 3)) * 0.4
  want = np.stack([_spin_similarity_transform(p, g) for p, g in zip(pred, gt)])
  want_err = 1000 * np.linalg.norm(want - gt, axis=-1).mean(-1)
  with jax.enable_x64(True):
    got = metrics.procrustes_align(jnp.asarray(pred), jnp.asarray(gt))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(metrics.pa_mpjpe(jnp.asarray(pred), jnp.asarray(gt)), want_err,
                               atol=F64_MM_TOL)
  got32 = metrics.pa_mpjpe(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32))
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(got32, want_err, atol=10 * F32_MM_TOL)


def test_procrustes_degenerate_is_finite():
  gt = jax.random.normal(jax.random.PRNGKey(2), (6, 3))
  pred = jnp.ones((6, 3)) * 0.5
  aligned = metrics.procrustes_align(pred, gt)
  assert np.all(np.isfinite(aligned))
  np.testing.assert_allclose(aligned, jnp.broadcast_to(jnp.mean(gt, 0), (6, 3)), atol=1e-6)
  assert np.isfinite(metrics.pa_mpjpe(pred, gt))
  zeros = jnp.zeros((6, 3))
  assert metrics.pa_mpjpe(zeros, zeros) == 0.0


def test_pve_no_centring():
  verts = jnp.zeros((2, 10, 3))
  assert np.allclose(metrics.pve(verts + jnp.array([0.0, 0.0, 0.02]), verts), 20.0,
                     atol=F32_MM_TOL)


def test_pck_and_auc_on_hand_made_errors():
  # Joint errors 0, 40, 100, 149, 200 mm along x, root not centred.
  errors_mm = np.array([0.0, 40.0, 100.0, 149.0, 200.0])
  gt = jnp.zeros((5, 3))
  pred = gt.at[:, 0].set(jnp.asarray(errors_mm / 1000))
  np.testing.assert_allclose(metrics.joint_errors(pred, gt, root=None), errors_mm, atol=1e-3)
  assert metrics.pck(pred, gt, root=None) == pytest.approx(80.0)
  assert metrics.pck(pred, gt, threshold_mm=50.0, root=None) == pytest.approx(40.0)
  assert metrics.pck(pred, gt, threshold_mm=0.0, root=None) == pytest.approx(20.0)
  thresholds = np.arange(31) * 5.0
  want = 100 * np.mean(errors_mm[:, None] <= thresholds[None, :])
  assert metrics.auc(pred, gt, root=None) == pytest.approx(want, abs=1e-4)
  assert metrics.auc(gt, gt) == pytest.approx(100.0)
  assert metrics.auc(gt + jnp.array([1.0, 0.0, 0.0]), gt, root=None) == pytest.approx(0.0)


def test_batched_shapes_and_jit():
  key = jax.random.PRNGKey(3)
  pred = jax.random.normal(key, (2, 3, 14, 3))
  gt = jax.random.normal(jax.random.fold_in(key, 1), (2, 3, 14, 3))
  fns = {
      "mpjpe": lambda p, g: metrics.mpjpe(p, g, root=(2, 3)),
      "pa_mpjpe": metrics.pa_mpjpe,
      "pve": metrics.pve,
      "pck": lambda p, g: metrics.pck(p, g, 150.0, root=0),
      "auc": metrics.auc,
  }
  for name, fn in fns.items():
    out = fn(pred, gt)
    assert out.shape == (2, 3), name
    assert np.all(np.isfinite(out)), name
    np.testing.assert_allclose(jax.jit(fn)(pred, gt), out, rtol=1e-5, atol=F32_MM_TOL,
                               err_msg=name)
    # Per-sample: the batched result equals the metric of each sample alone.
    np.testing.assert_allclose(out[1, 2], fn(pred[1, 2], gt[1, 2]), rtol=1e-5,
                               atol=F32_MM_TOL, err_msg=name)
  assert metrics.joint_errors(pred, gt).shape == (2, 3, 14)
  assert metrics.procrustes_align(pred, gt).shape == pred.shape
