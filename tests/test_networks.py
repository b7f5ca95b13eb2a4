"""How the update networks' Dense layers start: configs/official.py uses PyTorch's nn.Linear
default (kernel and bias U(±1/sqrt(fan_in))), every other config Flax's (LeCun normal, zero
bias)."""

import importlib.util
import math
import os

import jax
import numpy as np
import pytest

from lgd_jax import body, networks, objective, training

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
  learner = training.make_learner(config, problem)
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
  learner = training.make_learner(config, problem)
  layers = _dense_layers(jax.jit(learner.init)(jax.random.PRNGKey(0), problem)["params"])
  for path, (kernel, bias) in layers.items():
    assert np.all(bias == 0), path
    assert np.abs(kernel).max() > 1.0 / math.sqrt(kernel.shape[0]), path
  # The switch itself is validated in one line naming the field.
  config.model.init_style = "torch"
  with pytest.raises(training.ConfigError, match="model.init_style"):
    training.make_learner(config, problem)


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
