"""Full float32 products for the geometry under a TF32 default, and the GPU determinism switch
(lgd_jax.geometry.numerics).

On the CPU the precision attribute does not change a single bit (XLA:CPU has no TF32), so these
tests read the compiled programs instead: with ``jax_default_matmul_precision`` forced to
"tensorfloat32", every dot of the body model, cameras, metrics, the translation solve and the EM
must still say HIGHEST, while the update network's dots keep the (TF32) default. The numerical
checks under that setting are the parity and metrics tests, run a second time with it
(``tests/test_smplx_parity.py``, ``tests/test_metrics.py``).
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import forced_matmul_precision, tiny_train_config

from lgd_jax import body, build, metrics
from lgd_jax.eval import detections
from lgd_jax.fitting import objective, priors, refine
from lgd_jax.geometry import camera, numerics, translation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A StableHLO dot: dot_general (what jnp emits) or the older plain dot.
_DOT = re.compile(r"stablehlo\.dot(_general)?\b")
_HIGHEST = "precision = [HIGHEST, HIGHEST]"
# What "tensorfloat32" lowers to: the evidence that the forced default reaches the program.
_TF32 = "precision = [HIGH, HIGH]"


@pytest.fixture
def tf32():
  """``jax_default_matmul_precision`` = "tensorfloat32" for one test, restored afterwards."""
  with forced_matmul_precision("tensorfloat32"):
    yield


def _dots(fn, *args) -> list[str]:
  text = jax.jit(fn).lower(*args).as_text()
  return [line.strip() for line in text.splitlines() if _DOT.search(line)]


def _assert_all_highest(fn, *args, some=True):
  dots = _dots(fn, *args)
  assert dots or not some, "the program has no dot at all: nothing was checked"
  low = [d for d in dots if _HIGHEST not in d]
  assert not low, f"{len(low)} of {len(dots)} dots below HIGHEST, e.g. {low[0][:200]}"


@pytest.fixture(scope="module")
def model():
  return body.tiny_model(num_verts=120)


@pytest.fixture(scope="module")
def params():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(0, 0.4, (3, 72)), jnp.float32),
          jnp.asarray(rng.normal(0, 1, (3, 10)), jnp.float32),
          jnp.asarray(rng.normal(0, 0.3, (3, 3)), jnp.float32))


def test_body_model_products_are_highest(tf32, model, params):
  pose, betas, transl = params
  _assert_all_highest(lambda p, b, t: body.forward(model, p, b, t), pose, betas, transl)
  for kpset in ("coco18", "body25"):
    _assert_all_highest(lambda p, b, t, kpset=kpset: body.keypoints(model, p, b, t, kpset),
                        pose, betas,
                        transl)
  # A vertex regressor (the h36m17 layout): its rows are one more einsum.
  reg = np.random.default_rng(1).dirichlet(np.ones(model.num_verts), 17)
  kpset = body.KeypointSet("h36m17", tuple(f"joint_{k}" for k in range(17)), reg)
  _assert_all_highest(lambda p, b: body.keypoints(model, p, b, None, kpset), pose, betas)
  # The gradient's transposed products too (the objective's gradient is the network's input).
  _assert_all_highest(jax.grad(lambda p, b: jnp.sum(body.keypoints(model, p, b) ** 2),
                               argnums=(0, 1)), pose, betas)


def test_camera_metrics_and_translation_products_are_highest(tf32, model, params):
  pose, betas, _ = params
  joints = body.forward(model, pose, betas).joints
  gt = joints + 0.01
  _assert_all_highest(metrics.pa_mpjpe, joints, gt)
  _assert_all_highest(metrics.procrustes_align, joints, gt)
  cam = camera.official_camera()
  # Multiply-reduce today (no dot); should it become one, it must be HIGHEST too.
  _assert_all_highest(lambda x: camera.project(x, cam), joints, some=False)
  focal = jnp.full((3,), 500.0)
  center = jnp.zeros((3, 2))
  pix = jnp.ones(joints.shape[:-1] + (2,))
  w = jnp.ones(joints.shape[:-1])
  _assert_all_highest(translation.estimate_translation, joints + jnp.array([0, 0, 5.0]), pix, w,
                      focal, center)


def test_objective_placement_and_em_products_are_highest(tf32, model, params):
  problem = objective.make_problem(model, "coco18")
  theta = objective.join(problem, params[0], params[1])
  k = problem.num_keypoints
  kp2d, conf = jnp.full((3, k, 2), 0.5), jnp.ones((3, k))
  _assert_all_highest(lambda t, x, c: objective.value_and_grad(problem, t, x, c), theta, kp2d,
                      conf)
  focal, center = jnp.full((3,), 500.0), jnp.zeros((3, 2))
  _assert_all_highest(lambda t: detections.place(problem, t, kp2d, conf, focal, center), theta)
  _assert_all_highest(lambda t: refine.camera_keypoints(problem, t, jnp.ones((3, 3))), theta)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(64, 69)), jnp.float32)
  init = (x[:2], jnp.broadcast_to(jnp.eye(69), (2, 69, 69)), jnp.full((2,), 0.5))
  _assert_all_highest(lambda x, i: priors._em(x, i, 2, 1e-3), x, init)
  prior = priors.GMMPrior.from_arrays(np.asarray(init[0]), np.asarray(init[1]),
                                         np.asarray(init[2]))
  _assert_all_highest(prior.nll, x)


def test_update_network_keeps_the_default(tf32, model):
  """The MLP may stay fast: its dots follow the global default, the objective's do not."""
  config = tiny_train_config()
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  variables = learner.init(jax.random.PRNGKey(0), problem)
  k = problem.num_keypoints
  from lgd_jax.fitting import lgd
  dots = _dots(lambda x, c: lgd.fit(learner, variables, problem, x, c, 2)[0].theta,
               jnp.full((2, k, 2), 0.5), jnp.ones((2, k)))
  assert any(_TF32 in d for d in dots), "no TF32 dot: the forced default never reached the program"
  assert any(_HIGHEST in d for d in dots), "the objective inside the fit lost its HIGHEST dots"


# ----------------------------------------------------------------------------------------------
# GPU determinism: XLA_FLAGS set before JAX starts.

_TRAIN_WITH_SWITCH = r"""
import os, sys
from lgd_jax.commands import train
from lgd_jax.geometry import numerics
from lgd_jax.train import loop

def fake_training(config, workdir, show_progress):
  started = numerics.backends_initialized()
  import jax
  devices = jax.device_count()  # starts the backend: XLA parses XLA_FLAGS (unknown flags abort)
  print("RESULT", started, devices, os.environ["XLA_FLAGS"])

loop.train_and_evaluate = fake_training
sys.exit(train.main(["lgd-train", "--deterministic", "--config", "configs/tiny.py",
                     "--workdir", sys.argv[1]]))
"""


def test_deterministic_switch_sets_the_xla_flag_before_jax_starts(tmp_path):
  # The user's own flags stay; a contrary setting of ours is replaced.
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                       "--xla_gpu_deterministic_ops=false")
  proc = subprocess.run([sys.executable, "-c", _TRAIN_WITH_SWITCH, str(tmp_path / "w")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (line,) = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
  _, started, devices, *flags = line.split()
  assert started == "False"  # training began before any backend existed
  assert devices == "2"  # XLA parsed the combined XLA_FLAGS, the new flag included
  assert flags == ["--xla_force_host_platform_device_count=2", numerics.DETERMINISTIC_XLA_FLAG]


def test_deterministic_switch_refuses_when_too_late(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  jax.devices()  # the backends exist now: XLA_FLAGS would be ignored
  with pytest.raises(RuntimeError, match="already initialised"):
    numerics.enable_gpu_determinism()
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
