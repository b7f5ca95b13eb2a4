"""The free default: the built-in body model and synthetic poses, no licence-gated files.
1000 steps of batch 256 on a 2-core CPU; validation PA-MPJPE after 10 learned steps falls from
185 mm to about 70 mm.

    python train.py --config configs/demo.py --workdir runs/demo
    python evaluate.py --ckpt runs/demo --out runs/demo/results.json
"""

from lgd_jax.config import base_config


def published_config():
  """The demo's budget with the published training scheme (L1, fixed N = 10, shared BatchNorm)."""
  c = base_config()
  c.batch_size = 256
  c.num_epochs = 4
  c.steps_per_epoch = 250
  c.num_steps = 10
  c.checkpoint_every = 250
  c.val_samples = 1024
  c.model.hidden = 512
  return c


def get_config():
  return published_config()
