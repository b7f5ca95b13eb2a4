import os

# Tests run on the CPU even where a GPU is present, and never grab all its memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


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
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    setattr(node, leaf, v)
  return c


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A training workdir with a checkpoint of :func:`tiny_train_config` (read-only for tests)."""
  from lgd_jax import training
  workdir = str(tmp_path_factory.mktemp("tiny_ckpt"))
  training.train_and_evaluate(tiny_train_config(), workdir, show_progress=False)
  return workdir
