"""The learned fit: the objective, the gradient fed to the network, the unrolled loop, baselines."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lgd_jax import body, build
from lgd_jax.config import base_config
from lgd_jax.data import batches
from lgd_jax.fitting import lgd, networks, objective
from lgd_jax.geometry import camera, rotations

GRAD_RTOL = 1e-5  # float32 per-sample gradients, vmapped vs one at a time
TRAJ_ATOL = 1e-5  # two float32 routes to the same gradient-descent trajectory


@pytest.fixture(scope="module")
def model():
  return body.tiny_model(num_verts=300)


@pytest.fixture(scope="module")
def problem(model):
  return objective.make_problem(model, "coco18")


make_batch = jax.jit(batches.make_batch, static_argnames=("n", "aug"))
fit = jax.jit(lgd.fit, static_argnames=("learner", "num_steps", "train"))
run_optimizer = jax.jit(lgd.run_optimizer, static_argnames=("tx", "num_steps"))


def _batch(problem, n=8, seed=0):
  rng = np.random.default_rng(seed)
  src = batches.PoseSource(jnp.asarray(rng.normal(size=(64, 72)) * 0.2, jnp.float32),
                            jnp.asarray(rng.normal(size=(64, 10)), jnp.float32))
  aug = ml_collections.FrozenConfigDict(base_config().augment)
  return make_batch(problem, src, jax.random.PRNGKey(seed), n=n, aug=aug)


def test_objective_is_official_weighted_l1(problem):
  batch = _batch(problem)
  theta = batch.theta + 0.1
  loss, (kp3d, pred2d) = jax.vmap(objective.objective, (None, 0, 0, 0))(problem, theta,
                                                                         batch.kp2d, batch.conf)
  # The official code: normalise the projection with the confidences, then
  # mean(conf * |pred - x|) over joints and coordinates.
  pix = camera.project(np.asarray(kp3d), camera.official_camera())
  want_pred = camera.normalize_unit_box(pix, batch.conf)
  conf = np.asarray(batch.conf)[..., None]
  want = (conf * np.abs(np.asarray(want_pred) - np.asarray(batch.kp2d))).reshape(8, -1).mean(-1)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  # Dropped keypoints sit at 0.5 in both and add nothing.
  dropped = np.asarray(batch.conf) == 0
  assert dropped.any()
  np.testing.assert_array_equal(np.asarray(batch.kp2d)[dropped], 0.5)


def test_l2_objective(model):
  prob = objective.make_problem(model, "coco18", loss="l2")
  batch = _batch(prob)
  loss, (_, pred) = jax.vmap(objective.objective, (None, 0, 0, 0))(prob, batch.theta + 0.1,
                                                                    batch.kp2d, batch.conf)
  d = np.asarray(pred) - np.asarray(batch.kp2d)
  want = (np.asarray(batch.conf)[..., None] * d ** 2).reshape(8, -1).mean(-1)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  with pytest.raises(ValueError, match="loss"):
    objective.make_problem(model, "coco18", loss="huber")


def test_joint_weights_match_official_coco18():
  w = objective.joint_weights("coco18")
  want = np.ones(18)
  want[[4, 7, 10, 13]] = 8
  want[[3, 6, 9, 12]] = 4
  want[[2, 5, 8, 11]] = 2
  np.testing.assert_array_equal(w, want)


class _NegativeGradient(nn.Module):
  """N(features) = -features: with the gradient as the only feature, LGD becomes plain GD."""

  @nn.compact
  def __call__(self, x, train):
    return -x


def test_fed_gradient_is_per_sample_grad_and_lgd_can_be_gd(problem):
  batch = _batch(problem, n=6)
  eta = 20.0
  learner = lgd.Learner(_NegativeGradient(), None, ("grad",), output_scale=eta)
  variables = {"params": {"update": {}}, "batch_stats": {"update": {}}}
  traj, _ = fit(learner, variables, problem, batch.kp2d, batch.conf, 4)
  # The zero pose, where the fit starts, has a finite, non-zero gradient.
  norms = np.asarray(traj.grad_norm)
  assert np.isfinite(norms).all() and (norms[0] > 0).all()
  # The gradient of each sample on its own, without vmap.
  grad = jax.jit(jax.grad(lambda t, x, c: objective.objective(problem, t, x, c)[0]))
  for b in range(6):
    g = grad(traj.theta[2, b], batch.kp2d[b], batch.conf[b])
    np.testing.assert_allclose(traj.grad_norm[2, b], np.linalg.norm(g), rtol=GRAD_RTOL)
  gd = run_optimizer(problem, optax.sgd(eta), jnp.zeros_like(batch.theta), batch.kp2d,
                         batch.conf, 4)
  np.testing.assert_allclose(traj.theta, gd.theta, atol=TRAJ_ATOL)
  np.testing.assert_allclose(traj.loss, gd.loss, atol=TRAJ_ATOL)
  assert traj.theta.shape == (5, 6, problem.num_params)
  assert traj.kp3d.shape == (5, 6, 18, 3) and traj.kp2d.shape == (5, 6, 18, 2)


def _tiny_config(**overrides):
  c = base_config()
  c.batch_size, c.num_steps = 16, 3
  c.model.hidden, c.model.num_blocks, c.model.unroll = 32, 2, 1
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.mark.parametrize("variant,init", [("paper", "zero"), ("official", "learned")])
def test_variants_shapes_and_features(problem, variant, init):
  c = _tiny_config(**{"model.variant": variant, "model.init": init})
  learner = build.make_learner(c, problem)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  assert ("init" in variables["params"]) == (init == "learned")
  batch = _batch(problem)
  traj, stats = fit(learner, variables, problem, batch.kp2d, batch.conf, 5)
  assert traj.theta.shape == (6, 8, problem.num_params)
  assert np.isfinite(np.asarray(traj.loss)).all()
  # Inference (train=False) does not change the batch statistics.
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), stats,
                                   variables["batch_stats"]))
  if init == "zero":
    np.testing.assert_array_equal(traj.theta[0], 0.0)
  else:
    assert float(jnp.abs(traj.theta[0]).max()) > 0


def test_paper_network_is_four_blocks(problem):
  net = networks.PaperUpdateNet(82)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((2, 208)), train=False)["params"]
  shapes = [np.shape(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
            if "kernel" in jax.tree_util.keystr(k)]
  assert sorted(shapes) == sorted([(208, 1024), (1024, 1024), (1024, 1024), (1024, 1024),
                                   (1024, 82)])


def test_unknown_config_values_are_named(problem):
  for key, value, field in (("model.variant", "transformer", "model.variant"),
                            ("model.init", "random", "model.init"),
                            ("model.features", "kp2d,velocity", "model.features"),
                            ("model.dtype", "int8", "model.dtype")):
    with pytest.raises(build.ConfigError, match=field.replace(".", r"\.")):
      build.make_learner(_tiny_config(**{key: value}), problem)


def test_rotate_root_turns_the_body_about_the_vertical(model):
  rng = np.random.default_rng(1)
  pose = jnp.asarray(rng.normal(size=(4, 72)) * 0.2, jnp.float32)
  betas = jnp.zeros((4, 10))
  yaw = jnp.deg2rad(jnp.array([90.0, -45.0, 180.0, 10.0]))
  zero = jnp.zeros(4)
  before = body.keypoints(model, pose, betas, None, "smpl24")
  after = body.keypoints(model, rotations.rotate_root(pose, yaw, zero, zero), betas, None, "smpl24")
  # The root joint stays fixed; everything turns about the pelvis's vertical axis.
  rel_b = np.asarray(before - before[:, :1])
  rel_a = np.asarray(after - after[:, :1])
  np.testing.assert_allclose(rel_a[..., 1], rel_b[..., 1], atol=1e-5)  # heights unchanged
  c, s = np.cos(np.asarray(yaw))[:, None], np.sin(np.asarray(yaw))[:, None]
  np.testing.assert_allclose(rel_a[..., 0], c * rel_b[..., 0] + s * rel_b[..., 2], atol=1e-5)
  np.testing.assert_allclose(rel_a[..., 2], -s * rel_b[..., 0] + c * rel_b[..., 2], atol=1e-5)


def test_make_batch_augments_within_ranges(problem):
  batch = _batch(problem, n=512, seed=3)
  drop = 1.0 - float(np.asarray(batch.conf).mean())
  assert abs(drop - 0.2) < 0.03
  # Yaw covers the full circle: the hip-to-hip direction points every way in the ground plane.
  k3 = np.asarray(batch.kp3d)
  facing = k3[:, 11] - k3[:, 8]  # right hip -> left hip (coco18 indices 8 right hip, 11 left)
  ang = np.degrees(np.arctan2(facing[:, 2], facing[:, 0]))
  assert np.ptp(ang) > 300


@pytest.mark.slow  # the optional camera-translation path
def test_translation_in_theta(model):
  prob = objective.make_problem(model, "coco18", fit_translation=True)
  assert prob.num_params == 85
  aug = ml_collections.FrozenConfigDict(base_config().augment)
  batch = make_batch(prob, batches.PoseSource(jnp.zeros((4, 72)), jnp.zeros((4, 10))),
                     jax.random.PRNGKey(0), n=64, aug=aug)
  t = np.asarray(objective.split(prob, batch.theta).transl)
  depth = 6.0 - t[:, 2]  # the official camera looks down -z from z = 6
  assert depth.min() >= aug.depth_min - 1e-5 and depth.max() <= aug.depth_max + 1e-5
  # With intrinsics normalisation the depth is observable: a farther body is smaller in 2D.
  theta_far = batch.theta.at[:, -1].add(-2.0)
  near = objective.to_2d(prob, objective.keypoints_3d(prob, batch.theta), batch.conf)
  far = objective.to_2d(prob, objective.keypoints_3d(prob, theta_far), batch.conf)
  spread = lambda p: np.ptp(np.asarray(p)[..., 1], axis=-1)
  assert (spread(far) < spread(near)).mean() > 0.9


REMAT_RTOL = 1e-5  # the same float32 network recomputed: only reassociation differs


def test_remat_keeps_the_training_loss_and_gradient_and_saves_memory(problem):
  """``model.remat`` recomputes the network's elementwise layers (or all of it) in the backward:
  the loss, its gradient and the updated batch statistics are those of the plain step, and the
  compiled program needs less scratch memory."""
  batch = _batch(problem, n=64)
  assert base_config().model.remat == "dots"  # the configs' default
  results, temps = {}, {}
  for remat in lgd.REMATS:
    learner = build.make_learner(_tiny_config(**{"model.hidden": 128, "model.remat": remat}),
                                 problem)
    variables = learner.init(jax.random.PRNGKey(0), problem)

    def loss(params, learner=learner, variables=variables):
      traj, stats = lgd.fit(learner, {"params": params,
                                      "batch_stats": variables["batch_stats"]},
                            problem, batch.kp2d, batch.conf, 4, train=True,
                            rng=jax.random.PRNGKey(3))
      return jnp.mean(jnp.abs(traj.theta[1:] - batch.theta)), stats

    # Compiled once: the same program is run and its memory analysed.
    step = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(variables["params"]).compile()
    results[remat] = step(variables["params"])
    temps[remat] = step.memory_analysis().temp_size_in_bytes
  (ref_loss, ref_stats), ref_grad = results["none"]
  assert float(ref_loss) > 0
  for remat in ("dots", "full", "step"):
    (loss_r, stats_r), grad_r = results[remat]
    np.testing.assert_allclose(loss_r, ref_loss, rtol=REMAT_RTOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=REMAT_RTOL, atol=1e-7),
                 grad_r, ref_grad)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=REMAT_RTOL, atol=1e-7),
                 stats_r, ref_stats)
  assert temps["dots"] < temps["none"] and temps["full"] <= temps["dots"], temps
  # "step" (the whole scan step checkpointed) is not compared with "none" here: with the fused
  # BatchNorm-PReLU-dropout tail "none" keeps only each layer's Dense output and its input, and
  # at this test's widths the step's recomputation needs more scratch than that saves (at the
  # paper's width it needs less: benchmarks/bench_remat.py).
  with pytest.raises(build.ConfigError, match=r"model\.remat"):
    build.make_learner(_tiny_config(**{"model.remat": "some"}), problem)
