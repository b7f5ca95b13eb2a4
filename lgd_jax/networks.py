"""The update networks N_w of learned gradient descent (Flax linen).

Two variants share one interface, ``__call__(features, train) -> ΔΘ``:

* :class:`PaperUpdateNet` — the supplementary's network: 4 blocks of
  [Dense 1024, BatchNorm, PReLU, Dropout 0.2] and a linear output.
* :class:`OfficialUpdateNet` — the public code's: separate pose and shape heads, each an
  :class:`ResidualMLP` (a block, two residual blocks of two, a linear output).

Layers follow PyTorch's defaults where they differ from Flax's, so that a PyTorch twin can be set
to the same function: PReLU starts at 0.25, BatchNorm uses momentum 0.1 (Flax: 0.9) and eps 1e-5.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9  # Flax's running-average decay; PyTorch's momentum 0.1
BN_EPSILON = 1e-5


class PReLU(nn.Module):
  """PReLU with one learned slope, initialised at 0.25 as in PyTorch."""

  init: float = 0.25

  @nn.compact
  def __call__(self, x):
    slope = self.param("slope", lambda _: jnp.asarray(self.init, jnp.float32))
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class DenseBlock(nn.Module):
  """Dense, BatchNorm, PReLU, Dropout."""

  features: int
  dropout: float = 0.2
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.features, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype)(x)
    x = PReLU()(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class PaperUpdateNet(nn.Module):
  """``num_blocks`` DenseBlocks of width ``hidden`` and a linear output of size ``out``."""

  out: int
  hidden: int = 1024
  num_blocks: int = 4
  dropout: float = 0.2
  out_init_scale: float = 1.0
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(self.num_blocks):
      x = DenseBlock(self.hidden, self.dropout, self.dtype)(x, train)
    return _output(self.out, self.out_init_scale, self.dtype)(x).astype(jnp.float32)


class ResidualMLP(nn.Module):
  """The official code's MLPBlock: a DenseBlock, ``num_residual`` residual blocks of two
  DenseBlocks each, and a linear output."""

  out: int
  hidden: int = 1024
  num_residual: int = 2
  dropout: float = 0.2
  out_init_scale: float = 1.0
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = DenseBlock(self.hidden, self.dropout, self.dtype)(x, train)
    for _ in range(self.num_residual):
      y = DenseBlock(self.hidden, self.dropout, self.dtype)(x, train)
      x = x + DenseBlock(self.hidden, self.dropout, self.dtype)(y, train)
    return _output(self.out, self.out_init_scale, self.dtype)(x).astype(jnp.float32)


class OfficialUpdateNet(nn.Module):
  """Separate pose and shape heads on the same features; returns [Δpose, Δshape(, Δtransl)]."""

  out_sizes: Sequence[int]  # e.g. (72, 10) or (72, 10, 3)
  hidden: int = 1024
  num_residual: int = 2
  dropout: float = 0.2
  out_init_scale: float = 1.0
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    outs = [ResidualMLP(n, self.hidden, self.num_residual, self.dropout, self.out_init_scale,
                        self.dtype, name=f"head{i}")(x, train)
            for i, n in enumerate(self.out_sizes)]
    return jnp.concatenate(outs, -1)


def _output(out: int, scale: float, dtype) -> nn.Dense:
  init = nn.initializers.variance_scaling(scale ** 2, "fan_in", "truncated_normal") if scale > 0 \
      else nn.initializers.zeros
  return nn.Dense(out, kernel_init=init, dtype=dtype)
