"""Cameras: the official projection convention, unit-box normalisation, weak perspective."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from lgd_jax.geometry import camera

# Pixel-scale float32 agreement.
PIX_TOL = 1e-3
# Normalised-coordinate agreement.
NORM_TOL = 1e-6
GRAD_TOL = 1e-6


def _official_projection(points):
  """The official LGD PinholeCamera, transcribed: P = K [I | (0, 0, -6)], negate x, divide."""
  k = np.array([[256.0, 0, 0], [0, 256.0, 0], [0, 0, 1]])
  rt = np.concatenate([np.eye(3), np.array([[0.0], [0.0], [-6.0]])], 1)
  homo = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], -1)
  proj = homo @ (k @ rt).T
  proj[..., 0] *= -1
  return proj[..., :2] / proj[..., 2:]


def _official_normalize(joint2d, confidence, threshold=0.01):
  """The official normalize_p2d, transcribed in NumPy."""
  j = joint2d.copy()
  mask = confidence < threshold
  tmp = j.copy()
  tmp[mask] = np.finfo(j.dtype).max
  lo = tmp.min(1, keepdims=True)
  tmp[mask] = np.finfo(j.dtype).min
  hi = tmp.max(1, keepdims=True)
  scale = (hi - lo).max(2, keepdims=True)
  out = (j - 0.5 * (hi + lo)) / scale + 0.5
  out[mask] = 0.5
  return out


def test_official_camera_matches_the_official_code():
  pts = np.random.default_rng(0).normal(0, 0.5, (4, 18, 3))
  ours = camera.project(jnp.asarray(pts, jnp.float32), camera.official_camera())
  np.testing.assert_allclose(ours, _official_projection(pts), atol=PIX_TOL)
  # The body's left (+x) appears on the image's right and up (+y) appears up (smaller v).
  uv = camera.project(jnp.array([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]]), camera.official_camera())
  assert uv[0, 0, 0] > 0 and uv[0, 1, 1] < 0


def test_pinhole_with_intrinsics_and_extrinsics():
  rot = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # 90 degrees about y
  cam = camera.make_camera(focal=(500.0, 400.0), center=(320.0, 240.0), rotation=rot,
                           translation=(0.1, -0.2, 4.0))
  pts = np.array([[[0.3, 0.2, -0.1], [-0.5, 0.1, 0.4]]])
  cam_pts = pts @ rot.T + np.array([0.1, -0.2, 4.0])
  expected = cam_pts[..., :2] / cam_pts[..., 2:] * np.array([500.0, 400.0]) + [320.0, 240.0]
  np.testing.assert_allclose(camera.project(jnp.asarray(pts, jnp.float32), cam), expected,
                             atol=PIX_TOL)
  # A batch of cameras broadcasts against a batch of point sets.
  cams = jax.tree.map(lambda x: jnp.stack([x, x]), cam)
  both = camera.project(jnp.asarray(np.concatenate([pts, pts]), jnp.float32), cams)
  np.testing.assert_allclose(both[1], expected[0], atol=PIX_TOL)


def test_normalize_unit_box_matches_official():
  rng = np.random.default_rng(1)
  pts = rng.normal(0, 50, (6, 18, 2)).astype(np.float32)
  conf = (rng.uniform(size=(6, 18)) > 0.2).astype(np.float32)
  conf[:, :3] = 1.0  # at least some visible
  ours = camera.normalize_unit_box(jnp.asarray(pts), jnp.asarray(conf))
  np.testing.assert_allclose(ours, _official_normalize(pts, conf), atol=NORM_TOL)
  # Visible joints span [0, 1] along the longer side, centred at 0.5, aspect kept.
  vis = conf[0] > 0
  span = np.asarray(ours[0][vis]).max(0) - np.asarray(ours[0][vis]).min(0)
  assert np.isclose(span.max(), 1.0, atol=NORM_TOL) and span.min() <= 1.0 + NORM_TOL
  assert np.all(np.asarray(ours[0][~vis]) == 0.5)
  # Invariant to image translation and scale.
  moved = camera.normalize_unit_box(jnp.asarray(pts * 3.0 + 17.0), jnp.asarray(conf))
  np.testing.assert_allclose(moved, ours, atol=1e-5)


def test_normalize_degenerate_cases_stay_finite():
  pts = jnp.ones((3, 5, 2)) * 7.0
  conf = jnp.array([[0.0] * 5, [1.0, 0, 0, 0, 0], [1.0] * 5])
  out = camera.normalize_unit_box(pts, conf)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(out[0], 0.5)  # nothing visible
  np.testing.assert_array_equal(out[1], 0.5)  # one visible joint: centred
  g = jax.grad(lambda p: camera.normalize_unit_box(p, conf).sum())(pts)
  assert np.isfinite(np.asarray(g)).all()


def test_weak_perspective_and_its_pinhole_equivalent():
  pts = jnp.array([[[0.1, 0.2, 0.0], [-0.3, 0.05, 0.0]]])
  s, t = jnp.array([0.9]), jnp.array([[0.05, -0.1]])
  np.testing.assert_allclose(camera.weak_perspective(pts, s, t),
                             0.9 * (pts[..., :2] + t[:, None]), atol=NORM_TOL)
  # A pinhole camera at SPIN's equivalent translation agrees for a flat (z = 0) body.
  focal, size = 5000.0, 224.0
  transl = camera.weak_perspective_to_translation(s, t, focal, size)
  cam = camera.make_camera(focal, (0.0, 0.0), translation=transl[0])
  pinhole = camera.project(pts, cam) / (size / 2.0)
  np.testing.assert_allclose(pinhole, camera.weak_perspective(pts, s, t), atol=1e-5)


def test_check_grads_projection_and_normalisation():
  with jax.enable_x64(True):
    pts = jnp.asarray(np.random.default_rng(2).normal(0, 0.4, (2, 6, 3)))
    cam = camera.official_camera(jnp.float64)
    check_grads(lambda p: camera.project(p, cam), (pts,), order=2, atol=GRAD_TOL, rtol=GRAD_TOL)
    conf = jnp.array([[1.0, 1, 0, 1, 1, 1], [1.0] * 6])
    check_grads(lambda p: camera.normalize_unit_box(camera.project(p, cam), conf), (pts,),
                order=1, atol=GRAD_TOL, rtol=GRAD_TOL)
