"""Numerical reproducibility: full float32 products for the geometry.

Precision. On Ampere and later NVIDIA GPUs, JAX's default float32 matrix product is TF32 (a
10-bit mantissa, about 1e-3 relative error), and ``jax_default_matmul_precision`` changes that
default for the whole program. A millimetre on a 6 m camera distance, or a rotation chained
down 23 joints, does not survive 1e-3, so every geometric product runs at HIGHEST precision
whatever the global default: the body model (shape and pose blend shapes, forward kinematics,
skinning, keypoint regressors), cameras, Procrustes and the metrics, the camera translation
solve and the Gaussian-mixture EM. They are wrapped in :func:`full_precision`. The update
networks are not: TF32 there only perturbs a learned step, and they are most of the FLOPs.

    @numerics.full_precision
    def forward(model, pose, betas): ...
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import jax

F = TypeVar("F", bound=Callable)

# The value for jax.default_matmul_precision: float32 products in float32 (HIGHEST).
FULL = "highest"


def full_precision(fn: F) -> F:
  """Runs ``fn`` with HIGHEST matmul precision, whatever ``jax_default_matmul_precision`` says.

  The context is entered when ``fn`` runs, that is, when it is traced under ``jit``/``grad``/
  ``vmap``: JAX fixes each product's precision as it records it, so every dot ``fn`` records,
  and the transposed dots of its gradient, carry HIGHEST; the caller's own products keep the
  caller's default.
  """

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.default_matmul_precision(FULL):
      return fn(*args, **kwargs)

  return wrapper

