"""The packaged pretrained model (``lgd_jax/pretrained/lgd_free.npz``): the demo's network,
scheme and detector-like inputs (``configs/demo.py``) trained four times as long: 4000 steps of
batch 256 on the free body model and the broad synthetic pose source, at the demo's constant
learning rate.

    python train.py --config configs/pretrained.py --workdir runs/pretrained
    python tools/export_pretrained.py --ckpt runs/pretrained

The packaged file was made by continuing the quick start's own run (``runs/demo``, 1000 steps)
in a copy of its workdir: the first 1000 steps are the demo's, and a run from scratch gives the
same result (resumes retrace exactly).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_demo_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)


def get_config():
  c = _demo.get_config()
  c.num_epochs = 16  # of 250 steps
  c.checkpoint_every = 500
  return c
