"""Numerical reproducibility: full float32 products for the geometry, deterministic GPU runs.

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

Determinism. XLA on the CPU runs a compiled program bit-identically every time; on a GPU,
scatter-adds (the gradients of gathers: keypoint selection, the angle prior's indices) use
atomics whose summation order varies, and autotuning may pick different kernels per run.
:func:`enable_gpu_determinism` asks XLA for deterministic kernels (``XLA_FLAGS`` gets
``--xla_gpu_deterministic_ops=true``: deterministic scatters, no non-deterministic autotuned
kernels); XLA reads ``XLA_FLAGS`` once, when JAX initialises its backends, so it must run before
the first JAX computation, and it costs speed, so it is opt-in (``train.py --deterministic``).
PRNG: the default ``threefry2x32`` implementation is a pure function of the key on every
backend; keep it (not ``rbg``/``unsafe_rbg`` via ``jax_default_prng_impl``) for runs that must
reproduce. Untested on a GPU here: this project's machines have none.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import jax

F = TypeVar("F", bound=Callable)

# The value for jax.default_matmul_precision: float32 products in float32 (HIGHEST).
FULL = "highest"
# What enable_gpu_determinism adds to XLA_FLAGS.
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


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



def backends_initialized() -> bool:
  """Whether JAX has created its backends (after which ``XLA_FLAGS`` is no longer read)."""
  if "jax" not in sys.modules:  # pragma: no cover  (this module imports jax)
    return False
  from jax._src import xla_bridge  # private, but the only place that knows
  return bool(xla_bridge.backends_are_initialized())


def enable_gpu_determinism() -> str:
  """Adds :data:`DETERMINISTIC_XLA_FLAG` to ``$XLA_FLAGS``, keeping the user's other flags.

  Returns:
    The new ``XLA_FLAGS``.

  Raises:
    RuntimeError: JAX has already initialised its backends, so the flag would be ignored.
  """
  if backends_initialized():
    raise RuntimeError(f"--deterministic: JAX has already initialised its backends, so "
                       f"{DETERMINISTIC_XLA_FLAG} in XLA_FLAGS would be ignored; it must be set "
                       "before the first JAX computation (or in the environment)")
  name = DETERMINISTIC_XLA_FLAG.split("=")[0]
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] != name]
  os.environ["XLA_FLAGS"] = " ".join(flags + [DETERMINISTIC_XLA_FLAG])
  return os.environ["XLA_FLAGS"]
