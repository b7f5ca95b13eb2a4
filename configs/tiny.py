"""A tiny config for tests and smoke runs: seconds on a CPU."""

from lgd_jax.config import base_config


def get_config():
  c = base_config()
  c.batch_size = 16
  c.num_epochs = 2
  c.steps_per_epoch = 3
  c.num_steps = 2
  c.checkpoint_every = 2
  c.log_every = 1
  c.val_samples = 32
  c.model.hidden = 32
  c.model.num_blocks = 2
  c.model.unroll = 1
  return c
