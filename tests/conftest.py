import contextlib
import os
import shutil
import tempfile

# Tests run on the CPU even where a GPU is present, and never grab all its memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test run, shared by the xdist workers and the child
# processes the tests start (they inherit the environment): a program that one module, worker or
# child compiled is read back by the others instead of compiled again (the modules drop their
# in-memory programs, see _release_compiled_programs). Every run starts cold, as CI does; set
# JAX_COMPILATION_CACHE_DIR yourself to keep one across runs.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "lgd_jax_test_programs", _RUN_ID))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pytest  # noqa: E402

from lgd_jax.train import loop  # noqa: E402


@contextlib.contextmanager
def forced_matmul_precision(value):
  """``jax_default_matmul_precision`` set to ``value`` (e.g. "tensorfloat32", the default of
  float32 products on Ampere/Hopper GPUs) for the block, then restored; None leaves it as is."""
  import jax
  if value is None:
    yield
    return
  old = jax.config.jax_default_matmul_precision
  jax.config.update("jax_default_matmul_precision", value)
  try:
    yield
  finally:
    jax.config.update("jax_default_matmul_precision", old)


@pytest.fixture(params=[None, "tensorfloat32"], ids=["default", "tf32"])
def matmul_default(request):
  """Runs a test twice: at the global default matmul precision and with TF32 forced (the
  geometry must not depend on it, see lgd_jax.geometry.numerics.full_precision); use it through
  ``pytestmark = pytest.mark.usefixtures("matmul_default")``."""
  with forced_matmul_precision(request.param):
    yield request.param


def tiny_train_config(**overrides):
  """A config that trains in seconds on the free built-in body model (synthetic poses)."""
  from lgd_jax.config import base_config
  c = base_config()
  c.batch_size = 32
  c.num_epochs = 1
  c.steps_per_epoch = 12
  c.num_steps = 2
  c.checkpoint_every = 6
  c.log_every = 1
  c.val_samples = 32
  c.learning_rate = 3e-3
  c.model.hidden = 64
  c.model.num_blocks = 2
  c.model.unroll = 1
  # The keyframe sampler for training and validation: the one a 24-step run learns measurably
  # (the broad and held-out sources need the demo's budget; tests of them use their own).
  c.poses = "keyframes"
  c.test_poses = "keyframes"
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    setattr(node, leaf, v)
  return c


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test module: a worker that runs many modules would
  otherwise hold every program it ever compiled (several GB by the end of the suite)."""
  yield
  import gc

  import jax
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A training workdir with a checkpoint of :func:`tiny_train_config` (read-only for tests).

  Trained once per test run: pytest-xdist's workers share one copy (the first to arrive trains
  it under a file lock in the run's common temporary directory, the others wait and reuse it).
  """
  import fcntl

  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the directory every worker's basetemp lives in
  workdir = os.path.join(str(base), "tiny_ckpt_shared")
  with open(workdir + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not os.path.exists(workdir + ".done"):
        shutil.rmtree(workdir, ignore_errors=True)  # a run that died half-way
        loop.train_and_evaluate(tiny_train_config(), workdir, show_progress=False)
        open(workdir + ".done", "w").close()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return workdir
