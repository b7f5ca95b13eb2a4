"""The training schemes and inference rules that make the learned update convergent."""

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import tiny_train_config

from lgd_jax import body, build, checkpoints, train_state
from lgd_jax.config import base_config
from lgd_jax.data import batches
from lgd_jax.fitting import lgd, networks, objective
from lgd_jax.train import loop, losses, steps, unrolling

TRAJ_ATOL = 1e-5  # float32 routes to the same trajectory
ROBUST_GRAD_AT_FIT = 1e-6  # |∂L/∂Θ| of the robust objective at an exact fit


@pytest.fixture(scope="module")
def model():
  return body.tiny_model(num_verts=300)


@pytest.fixture(scope="module")
def problem(model):
  return objective.make_problem(model, "coco18")


make_batch = jax.jit(batches.make_batch, static_argnames=("n", "aug", "detector"))
fit = jax.jit(lgd.fit, static_argnames=("learner", "num_steps", "train", "return_nominal"))
# Jitted: called eagerly, the body model's ops outside the scan would each compile on their own.
run_optimizer = jax.jit(lgd.run_optimizer, static_argnames=("tx", "num_steps"))
fit_until = jax.jit(lgd.fit_until_converged, static_argnames=("learner", "max_steps",
                                                              "min_steps"))


def _batch(problem, n=8, seed=0):
  rng = np.random.default_rng(seed)
  src = batches.PoseSource(jnp.asarray(rng.normal(size=(64, 72)) * 0.2, jnp.float32),
                            jnp.asarray(rng.normal(size=(64, 10)), jnp.float32))
  aug = ml_collections.FrozenConfigDict(base_config().augment)
  return make_batch(problem, src, jax.random.PRNGKey(seed), n=n, aug=aug)


class _NegativeGradient(nn.Module):
  """N(features) = -features: with the gradient as the only feature, LGD is gradient descent."""

  @nn.compact
  def __call__(self, x, train):
    return -x


class _Ones(nn.Module):
  """N(features) = 1 for every parameter (to read the step-size schedule off the trajectory)."""

  out: int

  @nn.compact
  def __call__(self, x, train):
    return jnp.ones(x.shape[:1] + (self.out,))


_NO_VARS = {"params": {"update": {}}, "batch_stats": {"update": {}}}


# ----------------------------------------------------------------------------------------------
# Objectives.


@pytest.mark.slow  # check_grads in float64 on the full objective: about 40 s
def test_robust_objective_vanishes_at_an_exact_fit_and_is_l1_like_far_away(model):
  prob = objective.make_problem(model, "coco18", loss="robust", delta=0.01)
  batch = _batch(prob)
  value_grad = jax.jit(jax.vmap(jax.value_and_grad(
      lambda t, x, c: objective.objective(prob, t, x, c)[0]), (0, 0, 0)))
  loss, grad = value_grad(batch.theta, batch.kp2d, batch.conf)
  np.testing.assert_allclose(loss, 0.0, atol=1e-9)
  assert float(jnp.max(jnp.linalg.norm(grad, axis=-1))) < ROBUST_GRAD_AT_FIT
  # L1's gradient keeps its size at the fit (the sign of ~0 residuals): the robust one does not.
  l1 = objective.make_problem(model, "coco18", loss="l1")
  g1 = jax.vmap(jax.grad(lambda t, x, c: objective.objective(l1, t, x, c)[0]))(
      batch.theta + 1e-4, batch.kp2d, batch.conf)
  assert float(jnp.min(jnp.linalg.norm(g1, axis=-1))) > 1e3 * ROBUST_GRAD_AT_FIT
  # The penalty: d²/(2δ) near 0, |d| - δ far away.
  d = jnp.array([1e-4, 0.5])
  pen = objective.penalty(d, "robust", 0.01)
  np.testing.assert_allclose(pen[0], 1e-8 / 0.02, rtol=1e-3)
  np.testing.assert_allclose(pen[1], 0.5 - 0.01, rtol=1e-3)
  with pytest.raises(ValueError, match="delta"):
    objective.make_problem(model, "coco18", loss="robust", delta=0.0)


# ----------------------------------------------------------------------------------------------
# The step's form.


@pytest.mark.slow
def test_damping_schedule_scales_each_step(problem):
  batch = _batch(problem, n=4)
  s, tau = 0.1, 5.0
  learner = lgd.Learner(_Ones(problem.num_params), None, ("grad",), output_scale=s, damping=tau)
  traj, _ = fit(learner, _NO_VARS, problem, batch.kp2d, batch.conf, 6)
  steps = np.diff(np.asarray(traj.theta), axis=0)[:, 0, 0]
  np.testing.assert_allclose(steps, s * tau / (tau + np.arange(6)), rtol=1e-5)
  # A continued fit's schedule starts at its own iteration.
  traj, _ = jax.jit(lgd.fit, static_argnames=("learner", "num_steps"))(
      learner, _NO_VARS, problem, batch.kp2d, batch.conf, 2,
      start_iteration=jnp.full((4,), 10, jnp.int32))
  np.testing.assert_allclose(np.diff(np.asarray(traj.theta), axis=0)[:, 0, 0],
                             s * tau / (tau + np.array([10.0, 11.0])), rtol=1e-5)


@pytest.mark.slow
def test_gradient_gate_makes_an_exact_fit_a_fixed_point(model):
  prob = objective.make_problem(model, "coco18", loss="robust")
  batch = _batch(prob, n=4)
  learner = lgd.Learner(_Ones(prob.num_params), None, ("grad",), output_scale=0.1, gate=0.01)
  traj, _ = fit(learner, _NO_VARS, prob, batch.kp2d, batch.conf, 3, theta0=batch.theta)
  np.testing.assert_allclose(traj.theta[-1], batch.theta, atol=1e-6)
  # Away from the fit the gate is open.
  traj, _ = fit(learner, _NO_VARS, prob, batch.kp2d, batch.conf, 1)
  assert float(jnp.min(jnp.abs(traj.theta[1] - traj.theta[0]))) > 1e-3


@pytest.mark.slow
def test_gradient_term_with_a_silent_network_is_gradient_descent(problem):
  batch = _batch(problem, n=4)
  net = networks.PaperUpdateNet(problem.num_params, hidden=8, num_blocks=1, out_init_scale=0.0)
  learner = lgd.Learner(net, None, ("kp2d", "conf", "theta", "grad"), output_scale=0.1,
                        gd_rate=20.0)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  np.testing.assert_allclose(variables["params"]["gd"]["log_rate"], np.log(20.0), rtol=1e-6)
  traj, _ = fit(learner, variables, problem, batch.kp2d, batch.conf, 3)
  gd = run_optimizer(problem, optax.sgd(20.0), jnp.zeros_like(batch.theta), batch.kp2d,
                     batch.conf, 3)
  np.testing.assert_allclose(traj.theta, gd.theta, atol=TRAJ_ATOL)


def test_summable_damping_scales_each_step_by_its_power(problem):
  batch = _batch(problem, n=2)
  s, tau = 0.1, 5.0
  learner = lgd.Learner(_Ones(problem.num_params), None, ("grad",), output_scale=s, damping=tau,
                        damping_power=2.0)
  traj, _ = fit(learner, _NO_VARS, problem, batch.kp2d, batch.conf, 4)
  steps = np.diff(np.asarray(traj.theta), axis=0)[:, 0, 0]
  np.testing.assert_allclose(steps, s * (tau / (tau + np.arange(4))) ** 2, rtol=1e-5)


def _silent_adam_learner(problem, rate=0.01):
  """A learner whose network outputs zero (its last layer starts at 0): only the Adam term."""
  net = networks.PaperUpdateNet(problem.num_params, hidden=8, num_blocks=1, out_init_scale=0.0)
  return lgd.Learner(net, None, ("kp2d", "conf", "theta", "grad"), output_scale=0.1,
                     gd_rate=rate, nominal="adam")


def test_adam_nominal_term_with_a_silent_network_is_adam_per_sample(problem):
  batch = _batch(problem, n=4)
  learner = _silent_adam_learner(problem)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  traj, _, nominal = fit(learner, variables, problem, batch.kp2d, batch.conf, 4,
                         return_nominal=True)
  adam = run_optimizer(problem, optax.adam(0.01), jnp.zeros_like(batch.theta), batch.kp2d,
                       batch.conf, 4)
  np.testing.assert_allclose(traj.theta, adam.theta, atol=TRAJ_ATOL)
  np.testing.assert_array_equal(nominal.count, 4)
  # Continuing from the returned state is the same as one longer fit.
  first, _, state = fit(learner, variables, problem, batch.kp2d, batch.conf, 2,
                        return_nominal=True)
  rest, _ = fit(learner, variables, problem, batch.kp2d, batch.conf, 2, theta0=first.theta[-1],
                nominal0=state)
  np.testing.assert_allclose(rest.theta, traj.theta[2:], atol=TRAJ_ATOL)


def test_masked_steps_leave_the_adam_state_alone(problem):
  batch = _batch(problem, n=2)
  learner = _silent_adam_learner(problem)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  masked, _, state = fit(learner, variables, problem, batch.kp2d, batch.conf, 4,
                         active_steps=jnp.int32(2), return_nominal=True)
  plain, _, plain_state = fit(learner, variables, problem, batch.kp2d, batch.conf, 2,
                              return_nominal=True)
  np.testing.assert_allclose(masked.theta[-1], plain.theta[-1], atol=TRAJ_ATOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), state, plain_state)


def test_continued_fits_carry_their_adam_state_through_the_buffer(problem):
  batch = _batch(problem, n=8)
  learner = _silent_adam_learner(problem)
  # Batch rows [fresh 0-3 | continued 4-5 | fixed point 6-7]; a buffer of 2 rounds of 2 slots.
  u = train_state.UnrollSettings("fixed", 2, 2, 2, 2, 100, 2, 0.01, 1.0)
  buffer = train_state.empty_buffer(problem, 4, learner)
  assert buffer.nominal.mu.shape == (4, problem.num_params)
  stored = lgd.NominalState(jnp.full((4, problem.num_params), 0.5),
                            jnp.full((4, problem.num_params), 2.0), jnp.array([7, 8, 9, 10]))
  buffer = buffer.replace(age=jnp.array([3, 3, -1, -1]), nominal=stored,
                          theta_gt=batch.theta[:4], kp3d=batch.kp3d[:4], kp2d=batch.kp2d[:4],
                          conf=batch.conf[:4])
  theta0 = jnp.zeros_like(batch.theta)
  plan = unrolling.plan_unroll(problem, batch, theta0, buffer, jnp.int32(0),
                               jax.random.PRNGKey(0), u, learner)
  np.testing.assert_array_equal(plan.continued, [False] * 4 + [True] * 2 + [False] * 2)
  np.testing.assert_array_equal(plan.nominal0.count, [0, 0, 0, 0, 7, 8, 0, 0])
  np.testing.assert_array_equal(plan.nominal0.mu[4:6], 0.5)
  np.testing.assert_array_equal(plan.nominal0.mu[:4], 0.0)
  np.testing.assert_array_equal(plan.nominal0.nu[6:], 0.0)
  final = lgd.NominalState(jnp.full((8, problem.num_params), 1.5),
                           jnp.full((8, problem.num_params), 3.0), jnp.arange(8) + 20)
  out = unrolling.update_buffer(buffer, plan, plan.theta0, jnp.int32(2), jnp.int32(0), u, final)
  # Slots 0-1 (this step's round) take rows 4-5's states; slots 2-3 keep theirs.
  np.testing.assert_array_equal(out.nominal.count, [24, 25, 9, 10])
  np.testing.assert_array_equal(out.nominal.mu[:2], 1.5)
  np.testing.assert_array_equal(out.nominal.mu[2:], 0.5)
  np.testing.assert_array_equal(out.age[:2], 5)


def test_stopping_rule_freezes_the_adam_state_with_the_sample(problem):
  batch = _batch(problem, n=4)
  learner = _silent_adam_learner(problem, rate=0.05)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  full, _ = fit(learner, variables, problem, batch.kp2d, batch.conf, 12)
  traj, stop = fit_until(learner, variables, problem, batch.kp2d, batch.conf, 12, 5e-2, 2)
  for b in range(4):
    n = int(stop.steps[b])
    np.testing.assert_allclose(traj.theta[:n + 1, b], full.theta[:n + 1, b], atol=TRAJ_ATOL)
    np.testing.assert_array_equal(traj.theta[-1, b], traj.theta[n, b])


# ----------------------------------------------------------------------------------------------
# Normalisation.


@pytest.mark.slow
def test_per_step_batchnorm_keeps_statistics_per_step(problem):
  batch = _batch(problem, n=16)
  net = networks.PaperUpdateNet(problem.num_params, hidden=8, num_blocks=1,
                                norm="batch_per_step")
  learner = lgd.Learner(net, None, ("kp2d", "conf", "theta", "grad"), output_scale=0.1,
                        step_input=True)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  stats = variables["batch_stats"]["update"]["DenseBlock_0"]["StepBatchNorm_0"]
  assert stats["mean"].shape == (networks.STEP_SLOTS, 8)
  _, new = jax.jit(lgd.fit, static_argnames=("learner", "num_steps", "train"))(
      learner, variables, problem, batch.kp2d, batch.conf, 3, train=True,
      rng=jax.random.PRNGKey(1))
  mean = np.asarray(new["update"]["DenseBlock_0"]["StepBatchNorm_0"]["mean"])
  # Rows 0..2 were updated by steps 0..2 (different statistics), the others untouched.
  assert np.all(np.abs(mean[:3]).sum(-1) > 0) and np.all(mean[3:] == 0)
  assert not np.allclose(mean[0], mean[1])
  # At inference steps past the slots use the last row; LayerNorm has no batch statistics.
  net_vars = {"params": variables["params"]["update"],
              "batch_stats": new["update"]}
  out = jax.jit(lambda x: net.apply(net_vars, x, train=False, step=100))(jnp.ones((2, 218)))
  ref = jax.jit(lambda x: net.apply(net_vars, x, train=False,
                                    step=networks.STEP_SLOTS - 1))(jnp.ones((2, 218)))
  other = jax.jit(lambda x: net.apply(net_vars, x, train=False, step=0))(jnp.ones((2, 218)))
  np.testing.assert_array_equal(out, ref)
  assert not np.allclose(out, other)
  ln = networks.PaperUpdateNet(problem.num_params, hidden=8, num_blocks=1, norm="layer")
  assert "batch_stats" not in ln.init(jax.random.PRNGKey(0), jnp.ones((2, 218)), train=False)


# ----------------------------------------------------------------------------------------------
# Unroll lengths, continued fits and fixed-point samples.


@pytest.mark.slow
def test_masked_steps_repeat_the_last_state_and_leave_statistics_alone(problem):
  batch = _batch(problem, n=8)
  net = networks.PaperUpdateNet(problem.num_params, hidden=8, num_blocks=1)
  learner = lgd.Learner(net, None, ("kp2d", "conf", "theta", "grad"), output_scale=0.1)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  run = jax.jit(lgd.fit, static_argnames=("learner", "num_steps", "train"))
  full, stats_full = run(learner, variables, problem, batch.kp2d, batch.conf, 3, train=True,
                         rng=jax.random.PRNGKey(2))
  masked, stats_masked = run(learner, variables, problem, batch.kp2d, batch.conf, 6, train=True,
                             rng=jax.random.PRNGKey(2), active_steps=jnp.int32(3))
  np.testing.assert_allclose(masked.theta[:4], full.theta, atol=1e-6)
  for k in range(4, 7):
    np.testing.assert_array_equal(masked.theta[k], masked.theta[3])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), stats_masked,
               stats_full)


def _step_fn(config, learner, problem):
  tx = build.make_optimizer(config, config.steps_per_epoch)
  state = train_state.new_state(config, learner, problem, tx)
  return state, steps.make_train_step(learner, config, config.steps_per_epoch)


@pytest.mark.slow
def test_random_unroll_length_compiles_once_and_loss_covers_the_steps_taken(monkeypatch):
  # A copy of the step whose Python function may be traced once (chex raises on a second).
  monkeypatch.setattr(steps, "train_step", jax.jit(
      chex.assert_max_traces(steps.train_step.__wrapped__, n=1), **steps.TRAIN_STEP_JIT))
  config = tiny_train_config(**{"unroll.length": "uniform", "unroll.max_steps": 4,
                                "unroll.min_steps": 1, "batch_size": 16})
  model = build.load_body_model(config)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  state, step = _step_fn(config, learner, problem)
  source = build.synthetic_source(config)
  before = steps.train_step._cache_size()
  lengths = []
  for i in range(6):
    state, out = step(state, problem, source, jax.random.PRNGKey(i))
    lengths.append(int(out["unroll_length"]))
  assert steps.train_step._cache_size() - before == 1
  assert len(set(lengths)) > 1 and all(1 <= n <= 4 for n in lengths)
  # The states after the sampled length carry no weight.
  w = np.asarray(losses.step_weights(jnp.int32(2), 5, 1.0))
  np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 0, 0])
  w = np.asarray(losses.step_weights(jnp.int32(2), 5, 0.5))
  np.testing.assert_allclose(w, np.array([0.25, 0.5, 1, 0, 0]) / 1.75)


@pytest.mark.slow
def test_fit_buffer_continues_fits_and_restarts_old_ones():
  config = tiny_train_config(**{"unroll.late_fraction": 0.25, "unroll.buffer_rounds": 2,
                                "unroll.max_age": 5, "batch_size": 16, "num_steps": 2})
  model = build.load_body_model(config)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  state, step = _step_fn(config, learner, problem)
  assert state.buffer.theta.shape == (8, problem.num_params)
  assert np.all(np.asarray(state.buffer.age) == -1)
  source = build.synthetic_source(config)
  ages = []
  for i in range(8):
    state, _ = step(state, problem, source, jax.random.PRNGKey(i))
    ages.append(np.asarray(state.buffer.age).copy())
  # Slots 0-3 on even steps, 4-7 on odd ones; each visit adds N = 2 iterations, and a slot that
  # reached max_age (5) restarts from a fresh sample (age 0 + 2).
  np.testing.assert_array_equal(ages[0][:4], 2)
  np.testing.assert_array_equal(ages[0][4:], -1)
  np.testing.assert_array_equal(ages[1][4:], 2)
  np.testing.assert_array_equal(ages[2][:4], 4)
  np.testing.assert_array_equal(ages[4][:4], 6)
  np.testing.assert_array_equal(ages[6][:4], 2)
  # The stored state is the fit's state: it is the ground truth's problem, not another's.
  assert np.all(np.isfinite(np.asarray(state.buffer.theta)))
  kp3d = objective.keypoints_3d(problem, state.buffer.theta_gt)
  np.testing.assert_allclose(kp3d, state.buffer.kp3d, atol=1e-5)


def test_fixed_point_samples_start_near_the_truth_and_pay_for_moving(problem):
  batch = _batch(problem, n=8)
  u = train_state.UnrollSettings("fixed", 2, 2, 0, 1, 100, 2, 0.01, 1.0)
  theta0 = jnp.zeros_like(batch.theta)
  plan = unrolling.plan_unroll(problem, batch, theta0, None, jnp.int32(0),
                              jax.random.PRNGKey(0), u)
  np.testing.assert_array_equal(plan.fixed_point, [False] * 6 + [True] * 2)
  np.testing.assert_array_equal(plan.theta0[:6], 0.0)
  offset = np.asarray(plan.theta0[6:] - batch.theta[6:])
  assert 0 < np.abs(offset).max() < 0.1
  # The update-size loss: the mean |ΔΘ| of the fixed-point rows over the steps taken.
  traj = lgd.Trajectory(jnp.stack([plan.theta0, plan.theta0 + 0.5, plan.theta0 + 0.5]),
                        *[jnp.zeros((3, 8) + s) for s in ((), (), (18, 3), (18, 2))])
  weights = {"kp2d": 0.0, "kp3d": 0.0, "pose": 0.0, "betas": 0.0, "update": 1.0}
  loss, parts = losses.training_loss(problem, traj, batch, weights, None, plan.fixed_point,
                                       jnp.int32(2))
  np.testing.assert_allclose(parts["update"], 0.25, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.25, rtol=1e-6)


@pytest.mark.slow
def test_buffer_is_checkpointed_and_restored_exactly(tmp_path):
  config = tiny_train_config(**{"unroll.late_fraction": 0.25, "unroll.buffer_rounds": 2,
                                "unroll.max_age": 6, "unroll.fixed_point_fraction": 0.125,
                                "loss.update": 1.0, "unroll.length": "log_uniform",
                                "unroll.max_steps": 3, "batch_size": 16,
                                "model.nominal": "adam", "model.gd_rate": 0.01})
  config.num_epochs = 2
  config.steps_per_epoch = 4
  config.checkpoint_every = 4
  uninterrupted = loop.train_and_evaluate(config, str(tmp_path / "a"), show_progress=False)
  config.num_epochs = 1
  half = loop.train_and_evaluate(config, str(tmp_path / "b"), show_progress=False)
  mngr = checkpoints.manager(str(tmp_path / "b"))
  model = build.load_body_model(config)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  template = train_state.new_state(config, learner, problem, build.make_optimizer(config, 4))
  restored = checkpoints.restore_verified(mngr, 4, template)
  jax.tree.map(np.testing.assert_array_equal, restored.buffer, half.buffer)
  assert int(np.max(np.asarray(restored.buffer.age))) > 0
  assert int(np.max(np.asarray(restored.buffer.nominal.count))) > 0
  config.num_epochs = 2
  resumed = loop.train_and_evaluate(config, str(tmp_path / "b"), show_progress=False)
  jax.tree.map(np.testing.assert_array_equal, resumed.buffer, uninterrupted.buffer)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)


class _OldFitBuffer(flax.struct.PyTreeNode):
  """train_state.FitBuffer as it was before the nominal term's state (2026-12-07)."""

  theta_gt: jnp.ndarray
  kp3d: jnp.ndarray
  kp2d: jnp.ndarray
  conf: jnp.ndarray
  theta: jnp.ndarray
  age: jnp.ndarray


def test_a_checkpoint_from_before_the_nominal_state_restores(tmp_path):
  config = tiny_train_config(**{"unroll.late_fraction": 0.25, "unroll.buffer_rounds": 1,
                                "batch_size": 16})
  problem = build.problem_from_config(config, body.tiny_model(num_verts=300))
  learner = build.make_learner(config, problem)
  state = train_state.new_state(config, learner, problem, build.make_optimizer(config, 4))
  assert state.buffer is not None and state.buffer.nominal is None
  # What a checkpoint of the fit buffer looked like before it had the nominal term's field.
  fields = ("theta_gt", "kp3d", "kp2d", "conf", "theta", "age")
  old = state.replace(buffer=_OldFitBuffer(*(getattr(state.buffer, f) + 1 for f in fields)))
  mngr = checkpoints.manager(str(tmp_path))
  checkpoints.save(mngr, 3, old, config)
  restored = checkpoints.restore_verified(mngr, 3, state)
  assert restored.buffer.nominal is None
  for f in fields:
    np.testing.assert_array_equal(getattr(restored.buffer, f), getattr(old.buffer, f))


@pytest.mark.parametrize("overrides, field", [
    ({"unroll.length": "sometimes"}, "unroll.length"),
    ({"unroll.late_fraction": 0.6, "unroll.fixed_point_fraction": 0.5}, "fixed_point_fraction"),
    ({"unroll.length": "uniform", "unroll.min_steps": 5, "unroll.max_steps": 3}, "min_steps"),
    ({"model.norm": "group"}, "model.norm"),
    ({"objective_loss": "huber"}, "objective_loss"),
    ({"model.damping": -1.0}, "model.damping"),
    ({"model.damping_power": 0.0}, "model.damping_power"),
    ({"model.nominal": "momentum"}, "model.nominal"),
])
def test_config_mistakes_name_the_field(overrides, field):
  config = tiny_train_config(**overrides)
  with pytest.raises(build.ConfigError, match=field):
    loop.check_config(config)
    model = body.tiny_model(num_verts=300)
    problem = build.problem_from_config(config, model)
    build.make_learner(config, problem)


# ----------------------------------------------------------------------------------------------
# The stopping rule.


@pytest.mark.slow
def test_stopping_rule_stops_where_the_relative_change_falls_below_tol(problem):
  batch = _batch(problem, n=6)
  learner = lgd.Learner(_NegativeGradient(), None, ("grad",), output_scale=20.0)
  tol = 2e-2
  full, _ = fit(learner, _NO_VARS, problem, batch.kp2d, batch.conf, 40)
  traj, stop = fit_until(learner, _NO_VARS, problem, batch.kp2d, batch.conf, 40, tol, 2)
  loss = np.asarray(full.loss)
  rel = np.abs(np.diff(loss, axis=0)) <= tol * loss[:-1]  # rel[n-1]: the change into state n
  for b in range(6):
    candidates = [n for n in range(2, 41) if rel[n - 1, b]]
    want = candidates[0] if candidates else 40
    assert int(stop.steps[b]) == want
    assert bool(stop.converged[b]) == bool(candidates)
    # Up to the stop the trajectory is the plain fit's; after it the state is frozen.
    np.testing.assert_allclose(traj.theta[:want + 1, b], full.theta[:want + 1, b], atol=1e-5)
    for n in range(want, 41):
      np.testing.assert_array_equal(traj.theta[n, b], traj.theta[want, b])
  assert int(stop.num_iterations) == int(np.max(stop.steps))
  # max_steps bounds it.
  _, stop = fit_until(learner, _NO_VARS, problem, batch.kp2d, batch.conf, 3, 1e-12, 1)
  np.testing.assert_array_equal(stop.steps, 3)
  assert not np.any(stop.converged)
