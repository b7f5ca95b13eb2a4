"""The update networks N_w of learned gradient descent (Flax linen).

Two variants share one interface, ``__call__(features, train) -> ΔΘ``:

* :class:`PaperUpdateNet` — the supplementary's network: 4 blocks of
  [Dense 1024, BatchNorm, PReLU, Dropout 0.2] and a linear output.
* :class:`OfficialUpdateNet` — the public code's: separate pose and shape heads, each an
  :class:`ResidualMLP` (a block, two residual blocks of two, a linear output).

Layers follow PyTorch's defaults where they differ from Flax's, so that a PyTorch twin can be set
to the same function: PReLU starts at 0.25, BatchNorm uses momentum 0.1 (Flax: 0.9) and eps 1e-5.

How the Dense layers start is a choice (``init_style``, see :data:`INIT_STYLES`): "flax" (LeCun
normal kernels, zero biases; the output layer a truncated normal of std ``out_init_scale`` /
sqrt(fan_in)) or "pytorch" (``nn.Linear``'s default, which the official code keeps: kernel and
bias each U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the output layer's bound times ``out_init_scale``).

The normalisation layer of every block is a choice (``norm``, see :data:`NORMS`):

* "batch" — BatchNorm, one set of statistics shared by every update step (the paper's and the
  official code's): at inference the running averages of the training steps' mixture serve
  every step, also those far beyond the training window;
* "batch_per_step" — BatchNorm with running statistics per step index n (the batch statistics
  of step n in training; at inference step n uses those of min(n, num_slots - 1)), the
  per-time-step statistics of recurrent BatchNorm (Cooijmans et al., ICLR 2017);
* "layer" — LayerNorm: per sample, no batch statistics, the same function at every step;
* "none" — no normalisation.

In training, a block with BatchNorm and hash dropout (the defaults, float32) runs BatchNorm,
PReLU and dropout as one function with a hand-written gradient (:func:`bn_prelu_dropout`), with
the three layers' variables under their names: the same network, in fewer passes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MOMENTUM = 0.9  # Flax's running-average decay; PyTorch's momentum 0.1
BN_EPSILON = 1e-5
NORMS = ("batch", "batch_per_step", "layer", "none")
STEP_SLOTS = 16  # "batch_per_step": running statistics kept for steps 0..STEP_SLOTS-1
INIT_STYLES = ("flax", "pytorch")
DROPOUT_IMPLS = ("hash", "threefry")
# Training blocks with BatchNorm and hash dropout run their elementwise tail as
# bn_prelu_dropout (the same function and variables, fewer passes over the activations); False
# gives autodiff's chain of the three Flax layers (for the tests and benchmarks that compare them).
FUSED_TAIL = True


def torch_linear_init(fan_in: int, scale: float = 1.0):
  """PyTorch's ``nn.Linear`` default for weight and bias alike: U(-b, b), b = scale/sqrt(fan_in).

  (``kaiming_uniform_(a=sqrt(5))`` of the weight gives exactly this bound; the bias uses it
  directly.) Returns an initializer ``(key, shape, dtype) -> array``.
  """
  bound = scale / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dense(features: int, fan_in: int, init_style: str = "flax", dtype=None,
          scale: float | None = None) -> nn.Dense:
  """A Dense layer started the ``init_style`` way (see the module docstring).

  Args:
    features: output width.
    fan_in: input width (PyTorch's bound depends on it; a bias initializer never sees it).
    init_style: "flax" or "pytorch".
    dtype: computation dtype.
    scale: None for a hidden layer; the output layer's ``out_init_scale`` otherwise (0: zeros).
  """
  if init_style not in INIT_STYLES:
    raise ValueError(f"init_style: expected one of {INIT_STYLES}, got {init_style!r}")
  if scale is not None and not scale > 0:
    return nn.Dense(features, kernel_init=nn.initializers.zeros, dtype=dtype)
  if init_style == "pytorch":
    init = torch_linear_init(fan_in, 1.0 if scale is None else scale)
    return nn.Dense(features, kernel_init=init, bias_init=init, dtype=dtype)
  if scale is None:
    return nn.Dense(features, dtype=dtype)
  init = nn.initializers.variance_scaling(scale ** 2, "fan_in", "truncated_normal")
  return nn.Dense(features, kernel_init=init, dtype=dtype)


class StepBatchNorm(nn.Module):
  """BatchNorm whose running statistics are kept per update step (rows of a (slots, F) table).

  In training the batch's statistics normalise and update row ``min(step, slots - 1)``; at
  inference that row's running averages normalise. ``step`` may be traced.
  """

  use_running_average: bool
  slots: int = STEP_SLOTS
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, step):
    f = x.shape[-1]
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((self.slots, f), jnp.float32))
    var = self.variable("batch_stats", "var", lambda: jnp.ones((self.slots, f), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (f,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (f,), jnp.float32)
    row = jnp.clip(jnp.asarray(step, jnp.int32), 0, self.slots - 1)
    xf = x.astype(jnp.float32)
    if self.use_running_average:
      m, v = mean.value[row], var.value[row]
    else:
      m = jnp.mean(xf, axis=0)
      v = jnp.mean(jnp.square(xf - m), axis=0)
      if not self.is_initializing():
        mean.value = mean.value.at[row].set(
            self.momentum * mean.value[row] + (1 - self.momentum) * m)
        var.value = var.value.at[row].set(self.momentum * var.value[row] + (1 - self.momentum) * v)
    y = (xf - m) * jax.lax.rsqrt(v + self.epsilon) * scale + bias
    return y.astype(x.dtype if self.dtype is None else self.dtype)


def normalisation(kind: str, train: bool, step, dtype):
  """The block's normalisation layer as a function of x (see :data:`NORMS`)."""
  if kind == "batch":
    bn = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype)
    return bn
  if kind == "batch_per_step":
    sbn = StepBatchNorm(not train, dtype=dtype)
    return lambda x: sbn(x, step)
  if kind == "layer":
    return nn.LayerNorm(epsilon=BN_EPSILON, dtype=dtype)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")


def _fmix32(x):
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 whose every output bit depends on
  every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def hash_keep_mask(key, shape, rate: float):
  """Dropout's keep mask from a counter-based hash: element i is kept where
  fmix32(fmix32(i + s0) ^ s1) >= rate · 2^32, with (s0, s1) one 64-bit draw from ``key``.

  The mask is an elementwise function of the element's index and two scalars, so XLA computes it
  inside the fused pass that applies it (forward and backward alike) instead of drawing and
  storing one Threefry word per element. The keep probability is 1 - rate to 2^-32.
  """
  return _hash_keep(jax.random.bits(key, (2,), jnp.uint32), shape, rate)


def _hash_keep(seeds, shape, rate: float):
  """:func:`hash_keep_mask` from its two uint32 seeds."""
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):  # the row-major flat index, as uint32 (wraps > 2^32)
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  h = _fmix32(_fmix32(idx + seeds[0]) ^ seeds[1])
  threshold = min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)
  return h >= jnp.uint32(threshold)


class HashDropout(nn.Module):
  """Inverted dropout (as ``nn.Dropout``: kept units scaled by 1 / (1 - rate)) whose mask comes
  from :func:`hash_keep_mask` rather than a Threefry draw per element."""

  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    return _apply_keep(x, self.seeds(), self.rate)

  def seeds(self):
    """The two uint32 seeds of this call's mask (:func:`hash_keep_mask`), one 64-bit draw."""
    return jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)


def dropout(rate: float, deterministic: bool, impl: str = "hash"):
  """The dropout layer of ``impl`` (see :data:`DROPOUT_IMPLS`): "hash" (:class:`HashDropout`)
  or "threefry" (Flax's ``nn.Dropout``, one Threefry draw per element)."""
  if impl == "hash":
    return HashDropout(rate, deterministic=deterministic)
  if impl == "threefry":
    return nn.Dropout(rate, deterministic=deterministic)
  raise ValueError(f"dropout_impl: expected one of {DROPOUT_IMPLS}, got {impl!r}")


class PReLU(nn.Module):
  """PReLU with one learned slope, initialised at 0.25 as in PyTorch."""

  init: float = 0.25

  def setup(self):
    self.slope = self.param("slope", lambda _: jnp.asarray(self.init, jnp.float32))

  def __call__(self, x):
    return jnp.where(x >= 0, x, self.slope.astype(x.dtype) * x)


class DenseBlock(nn.Module):
  """Dense, BatchNorm, PReLU, Dropout."""

  features: int
  dropout: float = 0.2
  dtype: jnp.dtype | None = None
  norm: str = "batch"
  init_style: str = "flax"
  dropout_impl: str = "hash"

  @nn.compact
  def __call__(self, x, train: bool, step=0):
    x = dense(self.features, x.shape[-1], self.init_style, self.dtype)(x)
    if (train and FUSED_TAIL and self.norm == "batch" and self.dropout_impl == "hash"
        and self.dtype is None and 0.0 <= self.dropout < 1.0):
      return fused_tail(x, self.dropout, self.is_initializing())
    x = normalisation(self.norm, train, step, self.dtype)(x)
    x = PReLU()(x)
    return dropout(self.dropout, not train, self.dropout_impl)(x)


# ----------------------------------------------------------------------------------------------
# The training block's elementwise tail in one function with a hand-written gradient.


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def bn_prelu_dropout(z, scale, bias, slope, seeds, rate: float):
  """Training-mode BatchNorm (Flax's: batch mean and E[z²] - E[z]² variance, eps
  :data:`BN_EPSILON`), PReLU and hash dropout of the Dense output ``z`` (B, F).

  The same function as ``nn.BatchNorm`` → :class:`PReLU` → :class:`HashDropout`, with a
  hand-written gradient: the backward reads ``z`` and the output's cotangent twice, once for the
  column sums (BatchNorm's scale and bias gradients, PReLU's slope) and once for ``z``'s
  cotangent, recomputing the normalised values and the dropout mask on the way, where autodiff's
  chain of the three layers makes about ten passes over the (B, F) activations. Only ``z`` and
  two (F,) vectors are kept for it.

  Args:
    z: (B, F) Dense output.
    scale, bias: (F,) BatchNorm's affine parameters.
    slope: () PReLU's slope.
    seeds: (2,) uint32, the dropout mask's seeds (:func:`hash_keep_mask`).
    rate: dropout rate (static).

  Returns:
    (out (B, F), batch mean (F,), batch variance (F,)): the mean and variance feed the running
    averages.
  """
  out, mean, var, _ = _fused_forward(z, scale, bias, slope, seeds, rate)
  return out, mean, var


def _fused_forward(z, scale, bias, slope, seeds, rate):
  mean = jnp.mean(z, axis=0)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(z), axis=0) - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + BN_EPSILON)
  y = (z - mean) * (rstd * scale) + bias
  a = jnp.where(y >= 0, y, slope * y)
  out = _apply_keep(a, seeds, rate)
  return out, mean, var, rstd


def _apply_keep(a, seeds, rate):
  if rate == 0.0:
    return a
  keep = _hash_keep(seeds, a.shape, rate)
  return jnp.where(keep, a * jnp.asarray(1.0 / (1.0 - rate), a.dtype), jnp.zeros_like(a))


def _fused_fwd(z, scale, bias, slope, seeds, rate):
  out, mean, var, rstd = _fused_forward(z, scale, bias, slope, seeds, rate)
  return (out, mean, var), (z, mean, rstd, scale, bias, slope, seeds)


def _fused_bwd(rate, res, cts):
  z, mean, rstd, scale, bias, slope, seeds = res
  d_out, d_mean, d_var = cts
  n = z.shape[0]
  da = _apply_keep(d_out, seeds, rate)  # dropout's gradient is dropout with the same mask
  centred = z - mean
  y = centred * (rstd * scale) + bias
  x_hat = centred * rstd
  positive = y >= 0
  dy = jnp.where(positive, da, slope * da)
  d_slope = jnp.sum(jnp.where(positive, 0.0, y * da))
  d_bias = jnp.sum(dy, axis=0)
  d_scale = jnp.sum(dy * x_hat, axis=0)
  # BatchNorm's input gradient, plus the (normally zero) cotangents of the batch statistics.
  dz = ((scale * rstd) * (dy - (d_bias + x_hat * d_scale) / n)
        + (d_mean + 2.0 * d_var * centred) / n)
  return dz, d_scale, d_bias, d_slope, None


bn_prelu_dropout.defvjp(_fused_fwd, _fused_bwd)


class _BatchNormVariables(nn.Module):
  """``nn.BatchNorm``'s variables (same names, shapes and starts), for the fused tail."""

  @nn.compact
  def __call__(self, features: int):
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return mean, var, scale, bias


def fused_tail(z, rate: float, is_initializing: bool):
  """The training block's BatchNorm, PReLU and hash dropout as :func:`bn_prelu_dropout`, called
  from a :class:`DenseBlock`'s scope with the variables (and dropout seeds) of the three layers
  it replaces, under their names: the same parameters, statistics and masks."""
  mean_v, var_v, scale, bias = _BatchNormVariables(name="BatchNorm_0")(z.shape[-1])
  slope = PReLU(name="PReLU_0").slope
  seeds = (HashDropout(rate, name="HashDropout_0").seeds() if rate > 0.0
           else jnp.zeros((2,), jnp.uint32))
  out, mean, var = bn_prelu_dropout(z, scale, bias, slope, seeds, float(rate))
  if not is_initializing:
    mean_v.value = BN_MOMENTUM * mean_v.value + (1.0 - BN_MOMENTUM) * mean
    var_v.value = BN_MOMENTUM * var_v.value + (1.0 - BN_MOMENTUM) * var
  return out

class PaperUpdateNet(nn.Module):
  """``num_blocks`` DenseBlocks of width ``hidden`` and a linear output of size ``out``."""

  out: int
  hidden: int = 1024
  num_blocks: int = 4
  dropout: float = 0.2
  out_init_scale: float = 1.0
  dtype: jnp.dtype | None = None
  norm: str = "batch"
  init_style: str = "flax"
  dropout_impl: str = "hash"

  @nn.compact
  def __call__(self, x, train: bool, step=0):
    for _ in range(self.num_blocks):
      x = DenseBlock(self.hidden, self.dropout, self.dtype, self.norm, self.init_style,
                     self.dropout_impl)(x, train, step)
    return dense(self.out, x.shape[-1], self.init_style, self.dtype,
                 self.out_init_scale)(x).astype(jnp.float32)


class ResidualMLP(nn.Module):
  """The official code's MLPBlock: a DenseBlock, ``num_residual`` residual blocks of two
  DenseBlocks each, and a linear output."""

  out: int
  hidden: int = 1024
  num_residual: int = 2
  dropout: float = 0.2
  out_init_scale: float = 1.0
  dtype: jnp.dtype | None = None
  norm: str = "batch"
  init_style: str = "flax"
  dropout_impl: str = "hash"

  @nn.compact
  def __call__(self, x, train: bool, step=0):
    block = lambda: DenseBlock(self.hidden, self.dropout, self.dtype, self.norm,  # noqa: E731
                               self.init_style, self.dropout_impl)
    x = block()(x, train, step)
    for _ in range(self.num_residual):
      y = block()(x, train, step)
      x = x + block()(y, train, step)
    return dense(self.out, x.shape[-1], self.init_style, self.dtype,
                 self.out_init_scale)(x).astype(jnp.float32)


class OfficialUpdateNet(nn.Module):
  """Separate pose and shape heads on the same features; returns [Δpose, Δshape(, Δtransl)]."""

  out_sizes: Sequence[int]  # e.g. (72, 10) or (72, 10, 3)
  hidden: int = 1024
  num_residual: int = 2
  dropout: float = 0.2
  out_init_scale: float = 1.0
  dtype: jnp.dtype | None = None
  norm: str = "batch"
  init_style: str = "flax"
  dropout_impl: str = "hash"

  @nn.compact
  def __call__(self, x, train: bool, step=0):
    outs = [ResidualMLP(n, self.hidden, self.num_residual, self.dropout, self.out_init_scale,
                        self.dtype, self.norm, self.init_style, self.dropout_impl,
                        name=f"head{i}")(x, train, step)
            for i, n in enumerate(self.out_sizes)]
    return jnp.concatenate(outs, -1)

