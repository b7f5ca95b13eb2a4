"""How the update networks' Dense layers start: configs/official.py uses PyTorch's nn.Linear
default (kernel and bias U(±1/sqrt(fan_in))), every other config Flax's (LeCun normal, zero
bias)."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import body, build
from lgd_jax.fitting import networks, objective

HIDDEN = 128  # wide enough for the uniform's moments to show, small enough to initialise fast
# A U(-b, b) sample of n values: its largest |x| is within b·(1 - 20/n) of b with probability
# 1 - e^-20; its std b/sqrt(3) and mean 0 lie within 5 standard errors (the sample std's is
# b/sqrt(15 n), from the fourth moment b^4/5).
STD_SIGMAS = 5.0
MAX_GAP = 20.0
MIN_VALUES = 64  # output layers of the shape head have 10 biases: moments only where n >= this

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _official_config():
  spec = importlib.util.spec_from_file_location("official", os.path.join(REPO, "configs",
                                                                          "official.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.model.hidden = HIDDEN
  return c


@pytest.fixture(scope="module")
def problem():
  return objective.make_problem(body.tiny_model(num_verts=120), "coco18")


def _dense_layers(params):
  """{path: (kernel, bias)} of every Dense layer in a parameter tree."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  leaves = {tuple(k.key for k in path): np.asarray(v) for path, v in flat}
  for path, kernel in leaves.items():
    if path[-1] == "kernel":
      out["/".join(path[:-1])] = (kernel, leaves[path[:-1] + ("bias",)])
  return out


def _check_uniform(x: np.ndarray, bound: float, what: str):
  n = x.size
  assert np.abs(x).max() <= bound, what  # U(-b, b): never outside
  if n >= MIN_VALUES:
    assert np.abs(x).max() >= bound * (1.0 - MAX_GAP / n), what
    se = bound / math.sqrt(15.0 * n)
    assert abs(x.std() - bound / math.sqrt(3.0)) < STD_SIGMAS * se, what
    assert abs(x.mean()) < STD_SIGMAS * bound / math.sqrt(3.0 * n), what


def test_official_config_starts_like_pytorch_linear(problem):
  config = _official_config()
  assert config.model.init_style == "pytorch"
  learner = build.make_learner(config, problem)
  params = jax.jit(learner.init)(jax.random.PRNGKey(0), problem)["params"]
  layers = _dense_layers(params)
  # Both networks (learned initial guess and update), both heads, hidden and output layers.
  assert {p.split("/")[0] for p in layers} == {"init", "update"}
  assert len(layers) == 2 * 2 * (1 + 2 * config.model.num_residual + 1)
  for path, (kernel, bias) in layers.items():
    bound = 1.0 / math.sqrt(kernel.shape[0])
    _check_uniform(kernel, bound, f"{path}/kernel")
    _check_uniform(bias, bound, f"{path}/bias")
    assert np.any(bias != 0), path


def test_flax_init_stays_the_default(problem):
  """Elsewhere the layers start as before: zero biases, normal kernels (past the uniform bound)."""
  config = _official_config()
  del config.model["init_style"]  # a config of before the switch existed
  learner = build.make_learner(config, problem)
  layers = _dense_layers(jax.jit(learner.init)(jax.random.PRNGKey(0), problem)["params"])
  for path, (kernel, bias) in layers.items():
    assert np.all(bias == 0), path
    assert np.abs(kernel).max() > 1.0 / math.sqrt(kernel.shape[0]), path
  # The switch itself is validated in one line naming the field.
  config.model.init_style = "torch"
  with pytest.raises(build.ConfigError, match="model.init_style"):
    build.make_learner(config, problem)


def test_pytorch_output_layer_scale():
  """The output layer's bound scales with out_init_scale; 0 starts it at zero."""
  x = np.ones((2, 50), np.float32)
  for scale in (0.5, 0.0):
    net = networks.PaperUpdateNet(7, hidden=64, num_blocks=1, out_init_scale=scale,
                                  init_style="pytorch")
    p = net.init(jax.random.PRNGKey(1), x, train=False)["params"]["Dense_0"]
    bound = scale / math.sqrt(64)
    assert np.abs(np.asarray(p["kernel"])).max() <= bound
    assert np.abs(np.asarray(p["bias"])).max() <= bound
    assert (np.abs(np.asarray(p["kernel"])).max() > 0.5 * bound) if scale else \
        np.all(np.asarray(p["kernel"]) == 0)


# Hash dropout (model.dropout_impl = "hash"): statistics over one (1024, 1024) mask. A keep
# fraction of n = 2^20 Bernoulli(0.8) draws has a standard deviation of 4e-4; the tolerances are
# about 8 of those.
DROP_RATE = 0.2
DROP_SHAPE = (1024, 1024)
FRACTION_TOL = 3e-3
CORRELATION_TOL = 3e-3


def _mask(seed, shape=DROP_SHAPE, rate=DROP_RATE):
  return np.asarray(networks.hash_keep_mask(jax.random.PRNGKey(seed), shape, rate))


def test_hash_dropout_keeps_one_minus_rate_independently():
  a, b = _mask(0), _mask(1)
  assert abs(a.mean() - (1 - DROP_RATE)) < FRACTION_TOL
  for rate in (0.05, 0.5, 0.9):
    assert abs(_mask(2, rate=rate).mean() - (1 - rate)) < FRACTION_TOL
  np.testing.assert_array_equal(a, _mask(0))  # a function of the key

  def corr(x, y):
    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    return np.corrcoef(x, y)[0, 1]

  # Independent across keys (steps, layers), across neighbouring elements of a row and of a
  # column, and between the first and the second half of the flat index.
  assert abs(corr(a, b)) < CORRELATION_TOL
  assert abs(corr(a[:, 1:], a[:, :-1])) < CORRELATION_TOL
  assert abs(corr(a[1:], a[:-1])) < CORRELATION_TOL
  assert abs(corr(a[:512], a[512:])) < CORRELATION_TOL
  # Every row and column gets its share (no stripes).
  assert np.abs(a.mean(0) - (1 - DROP_RATE)).max() < 0.06
  assert np.abs(a.mean(1) - (1 - DROP_RATE)).max() < 0.06


def test_hash_dropout_is_inverted_dropout_like_flax():
  x = jax.random.normal(jax.random.PRNGKey(3), (512, 256))
  layer = networks.HashDropout(DROP_RATE)
  y = np.asarray(layer.apply({}, x, rngs={"dropout": jax.random.PRNGKey(4)}))
  kept = y != 0
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - DROP_RATE), rtol=1e-6)
  assert abs(kept.mean() - (1 - DROP_RATE)) < 0.01
  np.testing.assert_array_equal(networks.HashDropout(DROP_RATE, deterministic=True).apply({}, x), x)
  np.testing.assert_array_equal(networks.HashDropout(0.0).apply(
      {}, x, rngs={"dropout": jax.random.PRNGKey(4)}), x)
  # The gradient flows through the kept units only, scaled the same way.
  g = jax.grad(lambda x: layer.apply({}, x, rngs={"dropout": jax.random.PRNGKey(4)}).sum())(x)
  np.testing.assert_allclose(np.asarray(g), kept / (1 - DROP_RATE), rtol=1e-6)


def test_dropout_impl_is_a_config_choice(problem):
  from lgd_jax.config import base_config
  c = base_config()
  assert c.model.dropout_impl == "hash"
  learner = build.make_learner(c, problem)
  assert learner.update_net.dropout_impl == "hash"
  c.model.dropout_impl = "threefry"
  assert build.make_learner(c, problem).update_net.dropout_impl == "threefry"
  c.model.dropout_impl = "philox"
  with pytest.raises(build.ConfigError, match="model.dropout_impl"):
    build.make_learner(c, problem)


# The fused tail's hand-written gradient against autodiff's chain of the three layers, float32:
# relative to each value, and absolute relative to the largest gradient in the tree (the Dense
# bias before a BatchNorm has a gradient that is zero up to rounding in both).
FUSED_RTOL = 1e-4
FUSED_ATOL = 1e-5


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_fused_training_tail_is_the_three_layers(problem, monkeypatch, variant):
  """In training, a DenseBlock's BatchNorm, PReLU and hash dropout run as one function with a
  hand-written gradient (networks.bn_prelu_dropout): the same variables, output, batch
  statistics and dropout masks as the three Flax layers, and the same gradient."""
  out = problem.num_params
  net = (networks.PaperUpdateNet(out, hidden=HIDDEN, num_blocks=2) if variant == "paper" else
         networks.OfficialUpdateNet((72, out - 72), hidden=HIDDEN, num_residual=1))
  x = jax.random.normal(jax.random.PRNGKey(0), (96, 40))
  variables = net.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}, x,
                       train=False)
  # Statistics away from their starts, so that the update's arithmetic is exercised.
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])}

  def run(fused, key=7):
    monkeypatch.setattr(networks, "FUSED_TAIL", fused)

    def loss(params):
      y, upd = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, rngs={"dropout": jax.random.PRNGKey(key)},
                         mutable=["batch_stats"])
      return np.float32(0.5) * (y ** 2).sum() + y.sum(), (y, upd["batch_stats"])

    (_, (y, stats)), grad = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return y, stats, grad

  y0, stats0, grad0 = run(False)
  y1, stats1, grad1 = run(True)
  assert jax.tree.structure(grad1) == jax.tree.structure(variables["params"])
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))  # same masks, same arithmetic
  jax.tree.map(np.testing.assert_array_equal, stats1, stats0)
  assert not np.allclose(np.asarray(run(True, key=8)[0]), np.asarray(y1))  # dropout is on
  largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(grad0))
  for (path, g0), g1 in zip(jax.tree_util.tree_flatten_with_path(grad0)[0],
                            jax.tree.leaves(grad1)):
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=FUSED_RTOL,
                               atol=FUSED_RTOL * largest, err_msg=jax.tree_util.keystr(path))


def test_fused_tail_gradient_includes_the_batch_statistics():
  """bn_prelu_dropout's gradient with respect to every input, including through the batch mean
  and variance it returns, matches autodiff of its own forward (no dropout: rate 0)."""
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  z = jax.random.normal(k[0], (64, 24)) * 2.0 + 0.5
  scale = 1.0 + 0.1 * jax.random.normal(k[1], (24,))
  bias = 0.1 * jax.random.normal(k[2], (24,))
  slope = np.float32(0.25)
  seeds = np.zeros((2,), np.uint32)
  w = jax.random.normal(k[3], (3, 24))

  def f(fn, z, scale, bias, slope):
    out, mean, var = fn(z, scale, bias, slope, seeds, 0.0)
    return (jnp.sum(jnp.tanh(out)) + jnp.dot(w[0], mean) + jnp.dot(w[1], var))

  def reference(z, scale, bias, slope, seeds, rate):
    out, mean, var, _ = networks._fused_forward(z, scale, bias, slope, seeds, rate)
    return out, mean, var

  g_fused = jax.grad(lambda *a: f(networks.bn_prelu_dropout, *a), argnums=(0, 1, 2, 3))(
      z, scale, bias, slope)
  g_auto = jax.grad(lambda *a: f(reference, *a), argnums=(0, 1, 2, 3))(z, scale, bias, slope)
  for a, b in zip(g_fused, g_auto):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=FUSED_RTOL, atol=FUSED_ATOL)
