"""3D pose and mesh errors as reported for 3DPW and Human3.6M: MPJPE, PA-MPJPE, PVE, PCK, AUC.

Every metric takes predictions and ground truth in metres, reduces only the point axis and returns
millimetres (or percent) per sample, for any leading batch dimensions; average over the batch
yourself. All are pure and jittable, and compute in the inputs' floating dtype, with full
float32 products whatever ``jax_default_matmul_precision`` says.

    err = metrics.mpjpe(pred, gt, root=(2, 3))     # (B,) mm, centred on the mid-hip (LSP order)
    pa = metrics.pa_mpjpe(pred, gt)                 # (B,) mm after similarity Procrustes
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Root = int | Sequence[int] | None

_M_TO_MM = 1000.0
# PCK thresholds of the AUC: 0, 5, ..., 150 mm, as in the MPI-INF-3DHP evaluation.
AUC_THRESHOLDS_MM = tuple(5.0 * i for i in range(31))


def full_precision(fn):
  """``fn`` with HIGHEST matmul precision whatever the global default: the same as
  :func:`lgd_jax.geometry.numerics.full_precision`, repeated so that the metrics import nothing
  of the package (they are what every result is judged by)."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.default_matmul_precision("highest"):
      return fn(*args, **kwargs)

  return wrapper


def _as_float(x) -> jnp.ndarray:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _centre(points: jnp.ndarray, root: Root) -> jnp.ndarray:
  """Subtracts the root joint, or the mean of several root joints, from every point."""
  if root is None:
    return points
  if isinstance(root, (int, np.integer)):
    origin = points[..., int(root), :][..., None, :]
  else:
    origin = jnp.mean(points[..., tuple(int(r) for r in root), :], axis=-2, keepdims=True)
  return points - origin


def joint_errors(pred: jnp.ndarray, gt: jnp.ndarray, root: Root = 0) -> jnp.ndarray:
  """Per-joint Euclidean errors after root centring.

  Args:
    pred: (..., J, 3) predicted joints, metres.
    gt: (..., J, 3) ground-truth joints, metres.
    root: joint index to centre both on; a sequence of indices, whose mean is the root (e.g.
      ``(2, 3)``, the hips of the 14-joint LSP order); or None for no centring.

  Returns:
    (..., J) errors in millimetres.
  """
  pred, gt = _as_float(pred), _as_float(gt)
  diff = _centre(pred, root) - _centre(gt, root)
  return _M_TO_MM * jnp.linalg.norm(diff, axis=-1)


def mpjpe(pred: jnp.ndarray, gt: jnp.ndarray, root: Root = 0) -> jnp.ndarray:
  """Mean per-joint position error after root centring.

  Args:
    pred: (..., J, 3) predicted joints, metres.
    gt: (..., J, 3) ground-truth joints, metres.
    root: as in :func:`joint_errors`.

  Returns:
    (...,) errors in millimetres.
  """
  return jnp.mean(joint_errors(pred, gt, root), axis=-1)


@full_precision
def procrustes_align(pred: jnp.ndarray, gt: jnp.ndarray) -> jnp.ndarray:
  """Aligns ``pred`` to ``gt`` by the least-squares similarity transform (s, R, t).

  The transcription of SPIN's ``compute_similarity_transform`` (Umeyama): centre both point sets,
  K = X1ᵀ X2 (3 x 3), K = U S Vᵀ, R = V diag(1, 1, sign det(U Vᵀ)) Uᵀ (a proper rotation, never
  a reflection), s = tr(R K) / |X1|², t = mu2 - s R mu1.

  Degenerate input stays finite: if all predicted points coincide, s = 0 and every aligned point
  is the centroid of ``gt``.

  Args:
    pred: (..., N, 3) points to align.
    gt: (..., N, 3) target points.

  Returns:
    (..., N, 3) aligned ``pred``.
  """
  pred, gt = _as_float(pred), _as_float(gt)
  mu1 = jnp.mean(pred, axis=-2, keepdims=True)
  mu2 = jnp.mean(gt, axis=-2, keepdims=True)
  x1, x2 = pred - mu1, gt - mu2
  var1 = jnp.sum(x1 * x1, axis=(-2, -1))
  k = jnp.einsum("...ni,...nj->...ij", x1, x2)
  u, _, vh = jnp.linalg.svd(k)
  v = jnp.swapaxes(vh, -1, -2)
  # det(U Vᵀ) is +-1; comparing with 0 instead of taking its sign never yields a zero factor.
  flip = jnp.where(jnp.linalg.det(u @ vh) < 0, -1.0, 1.0).astype(pred.dtype)
  z = jnp.concatenate([jnp.ones(flip.shape + (2,), pred.dtype), flip[..., None]], -1)
  rot = (v * z[..., None, :]) @ jnp.swapaxes(u, -1, -2)
  trace = jnp.einsum("...ij,...ji->...", rot, k)
  degenerate = var1 <= jnp.finfo(pred.dtype).tiny
  scale = jnp.where(degenerate, 0.0, trace / jnp.where(degenerate, 1.0, var1))
  return scale[..., None, None] * jnp.einsum("...ij,...nj->...ni", rot, x1) + mu2


@full_precision
def pa_mpjpe(pred: jnp.ndarray, gt: jnp.ndarray) -> jnp.ndarray:
  """MPJPE after similarity Procrustes alignment of ``pred`` to ``gt`` (reconstruction error).

  Args:
    pred: (..., J, 3) predicted joints, metres.
    gt: (..., J, 3) ground-truth joints, metres.

  Returns:
    (...,) errors in millimetres.
  """
  return mpjpe(procrustes_align(pred, gt), gt, root=None)


def pve(pred_verts: jnp.ndarray, gt_verts: jnp.ndarray) -> jnp.ndarray:
  """Mean per-vertex error, without centring (centre both meshes beforehand, e.g. on the pelvis).

  Args:
    pred_verts: (..., V, 3) predicted vertices, metres.
    gt_verts: (..., V, 3) ground-truth vertices, metres.

  Returns:
    (...,) errors in millimetres.
  """
  return mpjpe(pred_verts, gt_verts, root=None)


def pck(pred: jnp.ndarray, gt: jnp.ndarray, threshold_mm: float = 150.0,
        root: Root = 0) -> jnp.ndarray:
  """Percentage of correct keypoints: joints whose error is at most ``threshold_mm``.

  Args:
    pred: (..., J, 3) predicted joints, metres.
    gt: (..., J, 3) ground-truth joints, metres.
    threshold_mm: the largest error that counts as correct, millimetres.
    root: as in :func:`joint_errors`.

  Returns:
    (...,) percentages in [0, 100].
  """
  err = joint_errors(pred, gt, root)
  return 100.0 * jnp.mean((err <= threshold_mm).astype(err.dtype), axis=-1)


def auc(pred: jnp.ndarray, gt: jnp.ndarray, root: Root = 0) -> jnp.ndarray:
  """Area under the PCK curve: the mean of :func:`pck` over thresholds 0, 5, ..., 150 mm.

  Args:
    pred: (..., J, 3) predicted joints, metres.
    gt: (..., J, 3) ground-truth joints, metres.
    root: as in :func:`joint_errors`.

  Returns:
    (...,) percentages in [0, 100].
  """
  err = joint_errors(pred, gt, root)
  thresholds = jnp.asarray(AUC_THRESHOLDS_MM, err.dtype)
  correct = (err[..., None] <= thresholds).astype(err.dtype)  # (..., J, T)
  return 100.0 * jnp.mean(correct, axis=(-2, -1))
