"""The free default: the built-in body model and synthetic poses, no licence-gated files.
1000 steps of batch 256 on a 2-core CPU, trained with the convergent scheme
(``lgd_jax.config.CONVERGENT``: the fitted update keeps converging when iterated past its
N = 10 training steps) and detector-like 2D inputs (``DEMO_DETECTOR``), so that its fits of real
detections hold up; see the README for the measured figures.

    python train.py --config configs/demo.py --workdir runs/demo
    python evaluate.py --ckpt runs/demo --out runs/demo/results.json

``configs/demo.py:published`` is the same budget with the paper's training scheme and exact 2D
inputs (the ablation's reference, ``configs/ablation.py``).
"""

from lgd_jax.config import apply_overrides, base_config, with_scheme

# Detector-like corruption of the training inputs (lgd_jax.data.augment): up to 2 % of the
# person's size of 2D noise, 10 % of the joints with low scores, a left/right limb swap in 10 %
# of the samples, 5 % cut by an image border, 1 % outlier joints.
DEMO_DETECTOR = {"detector.noise": 0.02, "detector.score_jitter": 0.1, "detector.swap_prob": 0.1,
                 "detector.truncate_prob": 0.05, "detector.outlier_prob": 0.01}


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


def get_config(scheme: str = "demo"):
  if scheme == "published":
    return published_config()
  if scheme != "demo":
    raise ValueError(f"configs/demo.py:{scheme}: expected 'published' or nothing")
  return apply_overrides(with_scheme(published_config(), "convergent"), DEMO_DETECTOR)
