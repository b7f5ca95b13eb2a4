"""Classical baselines: gradient descent with an Armijo line search, the SMPLify-style fit and its
Gaussian-mixture pose prior."""

import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lgd_jax import body, build
from lgd_jax.body.model import JOINT_NAMES
from lgd_jax.config import base_config
from lgd_jax.data import batches, synthetic
from lgd_jax.eval import methods
from lgd_jax.fitting import lgd, linesearch, objective, priors, smplify

NUM_STEPS = 20  # SMPLify: 10 + 10
BATCH = 8
ARMIJO_ATOL = 1e-6  # float32: the recorded loss and the line search's trial evaluate f apart
MONOTONE_ATOL = 1e-6
LS_REDUCTION = 0.7  # the line search's mean objective after NUM_STEPS, relative to the start
SAME_TRAJ_ATOL = 1e-5  # parallel and while-loop line searches pick the same trials
GMM_MEANS_ATOL = 0.1  # EM on 3000 samples of well-separated components (std <= 0.5)
GMM_WEIGHTS_ATOL = 0.05
NLL_RTOL = 1e-4  # float32 prior vs the float64 reference formula
GMM_TRACE_ATOL = 1e-5  # the same EM in the jitted caller's constant folding and on its own
PRIOR_PULL = 0.5  # distance to the prior mean after the prior-only fit, relative to the start


@pytest.fixture(scope="module")
def problem():
  return objective.make_problem(body.tiny_model(num_verts=300), "coco18")


@pytest.fixture(scope="module")
def batch(problem):
  rng = np.random.default_rng(0)
  src = batches.PoseSource(jnp.asarray(rng.normal(size=(64, 72)) * 0.2, jnp.float32),
                            jnp.asarray(rng.normal(size=(64, 10)), jnp.float32))
  aug = ml_collections.FrozenConfigDict(base_config().augment)
  return jax.jit(batches.make_batch, static_argnames=("n", "aug"))(
      problem, src, jax.random.PRNGKey(0), n=BATCH, aug=aug)


@pytest.fixture(scope="module")
def line_search(problem, batch):
  theta0 = jnp.zeros_like(batch.theta)
  return linesearch.gd_line_search(problem, theta0, batch.kp2d, batch.conf, NUM_STEPS,
                                  init_step=100.0)


@pytest.fixture(scope="module")
def prior():
  """A small mixture (cheap to build) standing in for SMPLify's gmm_08.pkl."""
  rng = np.random.default_rng(1)
  # As many components as the default prior: the default-prior test reuses this program.
  c = priors.GMM_COMPONENTS
  means = rng.normal(size=(c, 69)) * 0.2
  covars = np.repeat(np.eye(69)[None] * 0.05, c, 0)
  return priors.GMMPrior.from_arrays(means, covars, rng.dirichlet(np.full(c, 10.0)))


# ----------------------------------------------------------------------------------------------
# Line search.


def test_armijo_holds_at_every_accepted_step(line_search):
  traj, info = line_search
  loss, gn = np.asarray(traj.loss), np.asarray(traj.grad_norm)
  step, acc = np.asarray(info.step_size), np.asarray(info.accepted)
  assert acc.mean() > 0.5
  bound = loss[:-1] - linesearch.GD_LS_ARMIJO_C * step * gn[:-1] ** 2
  assert np.all((loss[1:] <= bound + ARMIJO_ATOL)[acc])
  # A sample without an accepted trial stays where it is.
  theta = np.asarray(traj.theta)
  np.testing.assert_array_equal(theta[1:][~acc], theta[:-1][~acc])
  assert np.all(step[acc] > 0)


def test_line_search_is_monotone_and_reduces_the_objective(line_search):
  traj, info = line_search
  loss = np.asarray(traj.loss)
  assert np.all(np.isfinite(loss))
  assert np.all(np.diff(loss, axis=0) <= MONOTONE_ATOL)
  assert loss[-1].mean() < LS_REDUCTION * loss[0].mean()
  evals = np.asarray(info.num_evals)
  assert evals.min() >= 2 and evals.max() <= 2 + linesearch.GD_LS_MAX_BACKTRACKS
  # The batched loop runs until its slowest sample accepts.
  np.testing.assert_array_equal(np.asarray(info.batch_trials), evals.max(1) - 1)


def _fixed_step_gd(problem, batch, step):
  """Fixed-step gradient descent from the same compiled program: with c = -inf every first
  trial passes Armijo's test, and grow = 1 keeps the step (checked against optax.sgd in
  test_fixed_step_configuration_is_plain_gd)."""
  return linesearch.gd_line_search(problem, jnp.zeros_like(batch.theta), batch.kp2d, batch.conf,
                                  NUM_STEPS, init_step=step, c=-np.inf, grow=1.0)


def test_line_search_beats_fixed_step_gd_from_the_same_step(problem, batch, line_search):
  traj, _ = line_search
  gd, info = _fixed_step_gd(problem, batch, 100.0)
  assert np.all(np.asarray(info.step_size) == 100.0)
  assert float(gd.loss[-1].mean()) > float(gd.loss[0].mean()) * LS_REDUCTION  # GD struggles
  assert float(traj.loss[-1].mean()) <= float(gd.loss[-1].mean())


@pytest.mark.slow
def test_fixed_step_configuration_is_plain_gd(problem, batch):
  gd, _ = _fixed_step_gd(problem, batch, 100.0)
  ref = jax.jit(lgd.run_optimizer, static_argnames=("tx", "num_steps"))(
      problem, optax.sgd(100.0), jnp.zeros_like(batch.theta), batch.kp2d, batch.conf, NUM_STEPS)
  np.testing.assert_allclose(gd.theta, ref.theta, atol=SAME_TRAJ_ATOL)


@pytest.mark.slow
def test_parallel_candidates_pick_the_same_steps(problem, batch, line_search):
  traj, info = line_search
  par, pinfo = linesearch.gd_line_search(problem, jnp.zeros_like(batch.theta), batch.kp2d,
                                        batch.conf, NUM_STEPS, init_step=100.0, parallel=True)
  np.testing.assert_allclose(par.theta, traj.theta, atol=SAME_TRAJ_ATOL)
  np.testing.assert_array_equal(pinfo.accepted, info.accepted)
  assert np.all(np.asarray(pinfo.num_evals) == 2 + linesearch.GD_LS_MAX_BACKTRACKS)


# ----------------------------------------------------------------------------------------------
# SMPLify-style fit.


@pytest.fixture(scope="module")
def smplify_run(problem, batch, prior):
  settings = {"prior_scale": 1.0, "pose_prior": prior}
  return methods.eval_method(problem, "smplify", settings, batch, NUM_STEPS)


def test_eval_method_returns_finite_metrics(problem, batch, prior, smplify_run):
  ls = methods.eval_method(problem, "gd_ls", {"init_step": 100.0}, batch, NUM_STEPS)
  for metrics, theta in (smplify_run, ls):
    assert set(metrics) == {"mpjpe_mm", "pa_mpjpe_mm", "pck150", "auc", "reproj"}
    for v in metrics.values():
      assert v.shape == (NUM_STEPS + 1,) and np.all(np.isfinite(v))
    assert theta.shape == (NUM_STEPS + 1, BATCH, problem.num_params)
    np.testing.assert_array_equal(theta[0], 0.0)
  with pytest.raises(ValueError, match="method"):
    methods.eval_method(problem, "lbfgs", {}, batch, NUM_STEPS)


def test_stage1_moves_only_the_global_orientation(smplify_run):
  theta = np.asarray(smplify_run[1])
  s1, _ = smplify.smplify_stages(NUM_STEPS)
  np.testing.assert_array_equal(theta[:s1 + 1, :, 3:], 0.0)
  assert np.abs(theta[s1, :, :3]).max() > 0
  assert np.abs(theta[-1, :, 3:]).max() > 0  # stage 2 moves everything


def test_smplify_reduces_its_robust_objective(problem, batch, prior, smplify_run):
  theta = jnp.asarray(smplify_run[1])
  s1, _ = smplify.smplify_stages(NUM_STEPS)
  w = smplify.spin_weights(problem, 1.0)
  fn = jax.jit(jax.vmap(lambda t, x, c: smplify.smplify_objective(problem, t, x, c, prior, w)))

  before = fn(theta[s1], batch.kp2d, batch.conf)
  after = fn(theta[-1], batch.kp2d, batch.conf)
  assert float(after.mean()) < float(before.mean())
  # Stage 1 brought the torso closer to the keypoints (its own objective).
  mask = jnp.asarray(smplify._joint_mask(problem, smplify.STAGE1_JOINTS))
  s1_fn = jax.jit(jax.vmap(lambda t, x, c: smplify.stage1_objective(problem, t, x, c, mask)))
  assert float(s1_fn(theta[s1], batch.kp2d, batch.conf).mean()) < float(
      s1_fn(theta[0], batch.kp2d, batch.conf).mean())


def test_priors_pull_toward_the_prior_mean(problem, batch, prior):
  # No keypoint is seen: only the priors act. Start away from the prior.
  rng = np.random.default_rng(2)
  theta0 = jnp.asarray(rng.normal(size=batch.theta.shape) * 0.3, jnp.float32)
  conf = jnp.zeros_like(batch.conf)
  # The same program as the other SMPLify tests (only traced values differ); with no keypoint
  # the yaw search keeps the start.
  traj = methods.run_method(problem, "smplify", {"pose_prior": prior, "lr": 0.05}, theta0,
                              batch.kp2d, conf, NUM_STEPS)
  p0 = objective.split(problem, theta0)
  p1 = objective.split(problem, traj.theta[-1])
  mean = np.asarray(prior.means)
  nearest = lambda pose: np.min(  # noqa: E731
      np.linalg.norm(np.asarray(pose)[:, None, 3:] - mean[None], axis=-1), 1)
  assert np.all(nearest(p1.pose) < PRIOR_PULL * nearest(p0.pose))
  assert np.all(np.linalg.norm(p1.betas, axis=-1) < PRIOR_PULL * np.linalg.norm(p0.betas, axis=-1))
  np.testing.assert_array_equal(p1.pose[:, :3], p0.pose[:, :3])  # nothing moves the root


def test_smplify_default_prior(problem, batch, prior, smplify_run, tmp_path, monkeypatch):
  """The documented default: run_method("smplify") without a pose prior uses
  build.synthetic_pose_prior, resolved before the jitted fit (it used to be fitted inside the
  trace, which cannot convert its poses to NumPy); fitting.smplify itself asks for one."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})
  # smplify_run's program: the same stages, start and prior shapes (only traced values differ).
  theta0 = jnp.zeros_like(batch.theta)
  traj = methods.run_method(problem, "smplify", {}, theta0, batch.kp2d, batch.conf, NUM_STEPS)
  default = build.synthetic_pose_prior()
  assert default.means.shape == prior.means.shape
  assert traj.theta.shape == (NUM_STEPS + 1, BATCH, problem.num_params)
  assert np.all(np.isfinite(np.asarray(traj.loss)))
  iters = smplify.smplify_stages(NUM_STEPS)
  explicit = smplify.smplify(problem, batch.kp2d, batch.conf, iters, theta0=theta0,
                             pose_prior=default)
  np.testing.assert_array_equal(traj.theta, explicit.theta)
  # A different prior gives a different stage 2: the default was really used.
  assert np.abs(np.asarray(traj.theta[-1]) - np.asarray(smplify_run[1][-1])).max() > 0
  with pytest.raises(ValueError, match="pose_prior"):
    smplify.smplify(problem, batch.kp2d, batch.conf, iters, theta0=theta0)
  # Without stage 2 no prior is needed and none is fitted (detections' "zero" start); tracing
  # is enough to show that the program builds.
  monkeypatch.setattr(priors, "default_pose_prior", lambda *a, **k: pytest.fail("fitted"))
  shape = jax.eval_shape(lambda x, c: smplify.smplify(problem, x, c, (2, 0)).theta,
                         batch.kp2d, batch.conf)
  assert shape.shape == (3, BATCH, problem.num_params)


def test_default_prior_can_be_fitted_while_tracing(monkeypatch):
  """A jitted caller may ask for the default prior: its poses and EM are evaluated concretely."""
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})
  fit = lambda: build.synthetic_pose_prior(2, 200, cache_dir=None)  # noqa: E731
  inside = jax.jit(lambda: fit().means)()
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})
  np.testing.assert_allclose(inside, fit().means, atol=GMM_TRACE_ATOL)


def test_angle_prior_penalises_hyperextension_in_our_conventions():
  limits = synthetic.JOINT_LIMITS_DEG  # (24, 3, 2): flexion is the allowed side of each hinge
  names = {55: "left_elbow", 58: "right_elbow", 12: "left_knee", 15: "right_knee"}
  for idx, sign in zip(priors.ANGLE_PRIOR_INDICES, priors.ANGLE_PRIOR_SIGNS):
    joint, axis = divmod(idx, 3)
    assert JOINT_NAMES[joint] == names[idx]
    lo, hi = limits[joint, axis]
    # The side that the prior penalises (sign * angle > 0) is outside the joint's range.
    assert (hi <= 0) if sign > 0 else (lo >= 0)
    pose = np.zeros((2, 72), np.float32)
    pose[0, idx] = 0.5 * sign  # hyper-extended
    pose[1, idx] = -0.5 * sign  # flexed
    val = np.asarray(priors.angle_prior(jnp.asarray(pose))).sum(-1)
    assert val[0] > val[1]


def test_gmof_is_robust():
  x = jnp.array([0.0, 0.1, 1.0, 100.0])
  v = np.asarray(priors.gmof(x, 0.5))
  np.testing.assert_allclose(v[:2], [0.0, 0.01 * 0.25 / (0.25 + 0.01)], rtol=1e-6)
  assert v[-1] < 0.25 and np.all(np.diff(v) > 0)


def test_spin_weights_are_rescaled_to_unit_box_units(problem):
  w = smplify.spin_weights(problem, 4.0)
  s = smplify.SPIN_PIXELS_PER_UNIT
  np.testing.assert_allclose(float(w.sigma), 100.0 / s)
  np.testing.assert_allclose(float(w.pose), 4.78 * 2.0 / s, rtol=1e-6)
  np.testing.assert_allclose(float(w.angle), 15.2 * 2.0 / s, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# The Gaussian-mixture pose prior.


def test_em_recovers_a_known_mixture():
  rng = np.random.default_rng(0)
  mu = np.array([[2.0, 0.0, 0.0], [0.0, -1.0, -1.0]])
  x = np.concatenate([rng.normal(size=(1000, 3)) * 0.3 + mu[0],
                      rng.normal(size=(2000, 3)) * 0.5 + mu[1]])
  g = priors.fit_gmm(x, 2, num_iters=30, reg_covar=1e-6)
  order = np.argsort(-np.asarray(g.means)[:, 0])
  np.testing.assert_allclose(np.asarray(g.means)[order], mu, atol=GMM_MEANS_ATOL)
  np.testing.assert_allclose(np.asarray(g.weights)[order], [1 / 3, 2 / 3], atol=GMM_WEIGHTS_ATOL)


def _fake_gmm08(path, seed=0):
  """A file laid out as SMPLify's gmm_08.pkl: a latin1-readable pickle of numpy arrays."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(8, 69, 69)) * 0.05
  data = {"means": rng.normal(size=(8, 69)) * 0.3,
          "covars": a @ np.swapaxes(a, 1, 2) + 0.02 * np.eye(69),
          "weights": rng.dirichlet(np.ones(8))}
  with open(path, "wb") as f:
    pickle.dump(data, f, protocol=2)
  return data


def test_gmm08_file_round_trips(tmp_path):
  data = _fake_gmm08(tmp_path / "gmm_08.pkl")
  g = priors.GMMPrior.load(tmp_path / "gmm_08.pkl")
  x = np.random.default_rng(3).normal(size=(5, 69)) * 0.3
  # SMPLify-X's merged max-mixture log-likelihood, in float64.
  want = []
  for xi in x:
    terms = []
    for m, c, w in zip(data["means"], data["covars"], data["weights"]):
      d = xi - m
      coef = w / ((2 * np.pi) ** (69 / 2) * np.sqrt(np.linalg.det(c)))
      terms.append(0.5 * d @ np.linalg.inv(c) @ d - np.log(coef))
    want.append(min(terms))
  np.testing.assert_allclose(np.asarray(g.nll(jnp.asarray(x, jnp.float32))), want, rtol=NLL_RTOL)
  for name in ("copy.pkl", "copy.npz"):
    g.save(tmp_path / name)
    g2 = priors.GMMPrior.load(tmp_path / name)
    for key in ("means", "covars", "weights"):
      np.testing.assert_array_equal(getattr(g, key), getattr(g2, key))
    np.testing.assert_allclose(g2.nll(jnp.asarray(x, jnp.float32)), want, rtol=NLL_RTOL)
  with np.load(tmp_path / "copy.npz", allow_pickle=False) as z:  # plain arrays, no pickle
    assert sorted(z.files) == ["covars", "means", "weights"]


class _RunsCode:
  """Pickles as a call of os.system: unpickling it with pickle.load runs the command."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    import os
    return os.system, (self.command,)


def test_malicious_gmm08_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "executed"
  path = tmp_path / "gmm_08.pkl"
  data = dict(_fake_gmm08(tmp_path / "ok.pkl"), weights=_RunsCode(f"touch {marker}"))
  with open(path, "wb") as f:
    pickle.dump(data, f, protocol=2)
  with pytest.raises(priors.PriorFileError) as e:
    priors.GMMPrior.load(path)
  msg = str(e.value)
  assert "\n" not in msg and str(path) in msg and "system" in msg and "not allowed" in msg
  assert not marker.exists()


def test_bad_prior_files_get_one_clear_line(tmp_path):
  data = _fake_gmm08(tmp_path / "ok.pkl")
  bad = dict(data, means=data["means"][:, :60])
  with open(tmp_path / "short.pkl", "wb") as f:
    pickle.dump(bad, f)
  with pytest.raises(priors.PriorFileError, match=r"short\.pkl.*'means'.*\(C, 69\)"):
    priors.GMMPrior.load(tmp_path / "short.pkl")
  with open(tmp_path / "nokey.pkl", "wb") as f:
    pickle.dump({"means": data["means"]}, f)
  with pytest.raises(priors.PriorFileError, match=r"nokey\.pkl.*'covars'"):
    priors.GMMPrior.load(tmp_path / "nokey.pkl")
  (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
  with pytest.raises(priors.PriorFileError, match="junk.pkl"):
    priors.GMMPrior.load(tmp_path / "junk.pkl")
  with pytest.raises(priors.PriorFileError, match="not found"):
    priors.GMMPrior.load(tmp_path / "missing.pkl")


def test_default_prior_is_fitted_once_and_cached(tmp_path, monkeypatch):
  poses = np.random.default_rng(5).normal(size=(400, 72)).astype(np.float32) * 0.3
  calls = []
  real = priors.fit_gmm
  monkeypatch.setattr(priors, "fit_gmm", lambda *a, **k: calls.append(1) or real(*a, **k))
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})
  g = priors.default_pose_prior(poses, num_components=2, cache_dir=tmp_path)
  assert len(calls) == 1 and [p.suffix for p in tmp_path.iterdir()] == [".npz"]
  (cached,) = tmp_path.glob("pose_gmm_*.npz")
  with np.load(cached, allow_pickle=False) as z:  # plain arrays: reading it runs nothing
    np.testing.assert_array_equal(z["means"], g.means)
  assert priors.default_pose_prior(poses, num_components=2, cache_dir=tmp_path) is g
  # A pickle planted under the cache's old name is never read.
  marker = tmp_path / "executed"
  with open(cached.with_suffix(".pkl"), "wb") as f:
    pickle.dump(_RunsCode(f"touch {marker}"), f, protocol=2)
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})  # a new process: read from disk
  g2 = priors.default_pose_prior(poses, num_components=2, cache_dir=tmp_path)
  assert len(calls) == 1 and not marker.exists()
  for key in ("means", "covars", "weights"):
    np.testing.assert_array_equal(getattr(g2, key), getattr(g, key))
  # A damaged entry is refitted and replaced.
  cached.write_bytes(b"PK\x03\x04 not really a zip")
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})
  priors.default_pose_prior(poses, num_components=2, cache_dir=tmp_path)
  assert len(calls) == 2
  with np.load(cached, allow_pickle=False) as z:
    np.testing.assert_array_equal(z["means"], g.means)
  # The mixture describes its training poses better than poses far from them.
  body_pose = jnp.asarray(poses[:, 3:])
  assert float(g.nll(body_pose).mean()) < float(g.nll(body_pose + 0.5).mean())


def test_config_prior_takes_its_amass_poses_on_the_host(tmp_path, monkeypatch):
  """The SMPLify prior of an AMASS config fits the same 10 k evenly spaced poses as before, but
  never puts the training split on the device."""
  from conftest import tiny_train_config
  from fake_datasets import write_amass_tree

  from lgd_jax.data import amass
  write_amass_tree(tmp_path / "amass", [4200, 4100, 3700])  # more frames than the fit takes
  num = 12000
  assert num > priors.GMM_SAMPLES
  config = tiny_train_config(amass_dir=str(tmp_path / "amass"), amass_fps=0.0, val_fraction=0.0,
                             amass_cache=str(tmp_path / "cache.npz"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})
  fitted = []
  monkeypatch.setattr(priors, "fit_gmm", lambda x, k: fitted.append(np.array(x)) or
                      priors.GMMPrior.from_arrays(np.zeros((1, 69)), np.eye(69)[None], [1.0]))
  to_device = []

  def spy(fn):
    def wrapped(x, *args, **kwargs):
      to_device.extend(leaf.shape for leaf in jax.tree.leaves(x)
                       if getattr(leaf, "ndim", 0) and leaf.shape[0] >= num)
      return fn(x, *args, **kwargs)
    return wrapped

  monkeypatch.setattr(jnp, "asarray", spy(jnp.asarray))
  monkeypatch.setattr(jnp, "array", spy(jnp.array))
  monkeypatch.setattr(jax, "device_put", spy(jax.device_put))
  prior = build.config_pose_prior(config)
  assert to_device == [] and len(fitted) == 1
  monkeypatch.undo()
  # The former route: the whole split as device arrays, subsampled by default_pose_prior.
  poses = amass.load_preprocessed(tmp_path / "cache.npz")["train_poses"]
  assert poses.shape == (num, 72)
  monkeypatch.setattr(priors, "_PRIOR_CACHE", {})
  monkeypatch.setattr(priors, "fit_gmm", lambda x, k: fitted.append(np.array(x)) or prior)
  assert priors.default_pose_prior(np.asarray(jnp.asarray(poses)), cache_dir=None) is prior
  assert fitted[1].shape == (priors.GMM_SAMPLES, 69)
  np.testing.assert_array_equal(fitted[0], fitted[1])


@pytest.mark.slow
def test_smplify_with_a_fitted_translation(problem, prior):
  prob = objective.make_problem(problem.model, "coco18", fit_translation=True)
  aug = ml_collections.FrozenConfigDict(base_config().augment)
  rng = np.random.default_rng(4)
  src = batches.PoseSource(jnp.asarray(rng.normal(size=(16, 72)) * 0.2, jnp.float32),
                            jnp.asarray(rng.normal(size=(16, 10)), jnp.float32))
  b = jax.jit(batches.make_batch, static_argnames=("n", "aug"))(
      prob, src, jax.random.PRNGKey(1), n=4, aug=aug)
  metrics, theta = methods.eval_method(prob, "smplify", {"pose_prior": prior}, b, 8)
  assert all(np.all(np.isfinite(v)) for v in metrics.values())
  s1, _ = smplify.smplify_stages(8)
  assert np.abs(np.asarray(theta[s1, :, -3:])).max() > 0  # stage 1 moves the translation
  np.testing.assert_array_equal(theta[s1, :, 3:-3], 0.0)
