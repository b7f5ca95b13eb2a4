"""The PyTorch twin of the training step (benchmarks/torch_twin.py) computes what lgd_jax computes.

Same initial weights (copied from the JAX learner), same batch (made by lgd_jax), dropout off,
BatchNorm in training mode (batch statistics) for the train step and in inference mode (running
statistics) for the fit: the trajectory, the training loss, its parameter gradients, the updated
BatchNorm means and one Adam update agree in float32.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_twin  # noqa: E402

from lgd_jax import body, build  # noqa: E402
from lgd_jax.config import base_config  # noqa: E402
from lgd_jax.data import batches  # noqa: E402
from lgd_jax.fitting import lgd, networks, objective  # noqa: E402
from lgd_jax.train import losses  # noqa: E402

BATCH = 8
NUM_STEPS = 2
DROP_PROB = 0.2
HIDDEN = 16
# float32 agreement: values of order 1 after a few layers and body-model evaluations.
RTOL = 1e-4
ATOL_THETA = 1e-5  # parameters (radians, shape units)
ATOL_LOSS = 1e-6
# Gradients are compared relative to their largest entry per array.
GRAD_RTOL = 1e-3
GRAD_ATOL_FRACTION = 1e-4
# ... and to the largest entry of all arrays: the biases of the Dense layers before a BatchNorm
# have an exactly zero gradient, float32 noise in both frameworks.
GRAD_NOISE_FRACTION = 1e-6
# Adam's first update is lr * g / (|g| + eps): compared where |g| is well above float32 noise.
ADAM_LR = 1e-3
ADAM_SIGN_FLOOR = 1e-3  # of the largest |g| of all arrays
ADAM_ATOL = 1e-3 * ADAM_LR  # far below a flipped update (2 lr), above float32 rounding of 1


def _config(variant: str):
  c = base_config()
  c.batch_size = BATCH
  c.num_steps = NUM_STEPS
  c.learning_rate = ADAM_LR
  c.model.hidden = HIDDEN
  c.model.num_blocks = 2
  c.model.num_residual = 1
  c.model.dropout = 0.0
  if variant == "official":
    c.model.variant = "official"
    c.model.init = "learned"
    c.model.init_style = "pytorch"  # as configs/official.py (non-zero biases)
  return c


@pytest.fixture(scope="module")
def model():
  """A small procedural model whose face landmarks are moved off their left-right symmetric
  places: at the zero pose (where the paper variant starts) symmetric keypoints tie for the unit
  box's extremes, a kink of the objective where float rounding decides which one gets the
  gradient, differently in the two frameworks."""
  arrays = body.synthetic_smpl_arrays(num_verts=120, seed=0)
  rng = np.random.default_rng(0)
  for vid in arrays["landmarks"].values():
    arrays["v_template"][vid] += rng.normal(0.0, 0.01, 3)
  return body.make_model(arrays["v_template"], arrays["shapedirs"], arrays["posedirs"],
                         arrays["J_regressor"], arrays["weights"], arrays["f"],
                         landmarks=arrays["landmarks"], name="asymmetric120")


@pytest.fixture(autouse=True)
def exact_batchnorm_variance(monkeypatch):
  """Flax's BatchNorm computes the batch variance as E[x^2] - E[x]^2 by default, which loses
  float32 digits when a unit's mean is large against its spread (PyTorch subtracts the mean
  first); the comparison uses the two-pass variance on both sides."""
  monkeypatch.setattr(networks.nn, "BatchNorm",
                      functools.partial(flax.linen.BatchNorm, use_fast_variance=False))


def _batch(problem) -> batches.Batch:
  """Random poses (root turned about the vertical), shapes, their 2D keypoints, some dropped.
  (Made here rather than by batches.make_batch, whose sampler takes long to compile.)"""
  rng = np.random.default_rng(2)
  pose = rng.normal(0.0, 0.3, (BATCH, 72)).astype(np.float32)
  pose[:, :3] = rng.uniform(-np.pi, np.pi, (BATCH, 1)) * np.array([0.0, 1.0, 0.0], np.float32)
  theta = np.concatenate([pose, rng.normal(0.0, 1.0, (BATCH, problem.num_betas))], -1)
  conf = (rng.uniform(size=(BATCH, problem.num_keypoints)) >= DROP_PROB).astype(np.float32)

  @jax.jit
  def render(problem, theta, conf):
    kp3d = objective.keypoints_3d(problem, theta)
    return kp3d, objective.to_2d(problem, kp3d, conf)

  kp3d, kp2d = render(problem, jnp.asarray(theta, jnp.float32), jnp.asarray(conf))
  return batches.Batch(jnp.asarray(theta, jnp.float32), kp3d, kp2d, jnp.asarray(conf))


def _setup(model, variant: str):
  torch.manual_seed(0)
  config = _config(variant)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  variables = jax.jit(learner.init)(jax.random.PRNGKey(1), problem)
  # Non-trivial BatchNorm running statistics, so that inference mode is tested for real.
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda x: x + 0.3 * jnp.arange(x.size).reshape(x.shape)
                                           / x.size, variables["batch_stats"])}
  batch = _batch(problem)
  twin = torch_twin.TorchTwin.from_config(config, problem)
  twin.load_flax(variables)
  return config, problem, learner, variables, batch, twin


def _close(a, b, rtol, atol, what):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=what)


def _global_max(tree) -> float:
  return max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(tree))


def _grads_close(jax_tree, torch_tree):
  flat_j = jax.tree_util.tree_flatten_with_path(jax_tree)[0]
  flat_t = dict(jax.tree_util.tree_flatten_with_path(torch_tree)[0])
  assert len(flat_j) == len(flat_t)
  noise = GRAD_NOISE_FRACTION * _global_max(jax_tree)
  for path, g in flat_j:
    g = np.asarray(g)
    atol = max(GRAD_ATOL_FRACTION * float(np.abs(g).max()), noise)
    _close(flat_t[path], g, GRAD_RTOL, atol, f"grad {path}")


# The official variant (learned initial guess, two residual heads) compiles for long: slow.
VARIANTS = ["paper", pytest.param("official", marks=pytest.mark.slow)]


@pytest.mark.slow  # the train-step test checks the same trajectory (train mode) and more
@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_trajectory_agrees(model, variant):
  config, problem, learner, variables, batch, twin = _setup(model, variant)
  fit = jax.jit(lambda v, p, x, c: lgd.fit(learner, v, p, x, c, NUM_STEPS + 1, train=False)[0])
  traj = fit(variables, problem, batch.kp2d, batch.conf)
  tb = torch_twin.batch_from_jax(batch)
  t = twin.infer_trajectory(tb.kp2d, tb.conf, NUM_STEPS + 1)
  assert np.abs(np.diff(np.asarray(traj.theta), axis=0)).max() > 1e-3  # the fit moves
  _close(t.theta, traj.theta, RTOL, ATOL_THETA, "theta")
  _close(t.loss, traj.loss, RTOL, ATOL_LOSS, "objective")
  _close(t.kp3d, traj.kp3d, RTOL, ATOL_THETA, "kp3d")
  _close(t.kp2d, traj.kp2d, RTOL, ATOL_THETA, "kp2d")
  _close(twin.infer(tb.kp2d, tb.conf, NUM_STEPS + 1), traj.theta[-1], RTOL, ATOL_THETA, "infer")


@pytest.mark.slow  # a full-size model, both frameworks compiled: about a minute per variant
@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step_agrees(model, variant):
  config, problem, learner, variables, batch, twin = _setup(model, variant)
  weights = losses.loss_weights(config)

  def loss_fn(params):
    traj, stats = lgd.fit(learner, {"params": params, "batch_stats": variables["batch_stats"]},
                          problem, batch.kp2d, batch.conf, NUM_STEPS, train=True,
                          rng=jax.random.PRNGKey(3))
    loss, parts = losses.training_loss(problem, traj, batch, weights)
    return loss, (traj, stats, parts)

  (loss, (traj, stats, parts)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables["params"])
  tb = torch_twin.batch_from_jax(batch)
  t_loss, t_parts, t_traj = twin.loss_and_grads(tb, NUM_STEPS)

  _close(t_traj.theta.detach(), traj.theta, RTOL, ATOL_THETA, "train-mode theta")
  _close(t_traj.loss.detach(), traj.loss, RTOL, ATOL_LOSS, "train-mode objective")
  _close(t_loss, loss, RTOL, ATOL_LOSS, "training loss")
  for k in ("kp2d", "kp3d", "pose", "betas"):
    _close(t_parts[k].detach(), parts[k], RTOL, ATOL_LOSS, f"loss part {k}")
  t_grads = {"update": torch_twin.flax_grads(twin.update_net)}
  if twin.init_net is not None:
    t_grads["init"] = torch_twin.flax_grads(twin.init_net)
  _grads_close(grads, t_grads)
  # Running means after the N train-mode applications (variances differ by design: torch's
  # running variance is the unbiased one, see torch_twin's docstring).
  t_stats = torch_twin.flax_stats(twin.update_net)
  for path, m in jax.tree_util.tree_flatten_with_path(stats["update"])[0]:
    if path[-1].key == "mean":
      ref = dict(jax.tree_util.tree_flatten_with_path(t_stats)[0])[path]
      _close(ref, m, RTOL, ATOL_THETA, f"running {path}")

  # One Adam update.
  opt = torch.optim.Adam(twin.parameters(), lr=ADAM_LR)
  opt.step()
  tx = optax.adam(ADAM_LR)
  updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
  new = optax.apply_updates(variables["params"], updates)
  t_new = {"update": torch_twin.flax_params(twin.update_net)}
  if twin.init_net is not None:
    t_new["init"] = torch_twin.flax_params(twin.init_net)
  t_flat = dict(jax.tree_util.tree_flatten_with_path(t_new)[0])
  checked = 0
  floor = ADAM_SIGN_FLOOR * _global_max(grads)
  for (path, p), (_, g) in zip(jax.tree_util.tree_flatten_with_path(new)[0],
                               jax.tree_util.tree_flatten_with_path(grads)[0]):
    g = np.abs(np.asarray(g))
    sure = g > floor
    checked += int(sure.sum())
    _close(np.asarray(t_flat[path])[sure], np.asarray(p)[sure], 0.0, ADAM_ATOL, f"adam {path}")
  assert checked > 0.5 * sum(np.size(x) for x in jax.tree.leaves(grads))
