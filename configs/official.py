"""The public PyTorch code's settings: separate pose and shape heads (residual MLPs), a learned
initial guess from the keypoints, features [x, θ, ∂L/∂θ], output scale 0.1, 3 update steps,
batch 512, learning rate ×0.8 per epoch, every AMASS frame (shuffled once per epoch, the base
config's default), Dense layers started as PyTorch's nn.Linear. ``configs/official.py:convergent``
trains it with the convergent scheme (``lgd_jax.config.CONVERGENT``) instead.

    python train.py --config configs/official.py --workdir runs/official \
        --config.body_model=third_party/smpl/SMPL_MALE.pkl --config.amass_dir=/data/AMASS
"""

from lgd_jax.config import base_config, with_scheme


def get_config(scheme: str = "published"):
  c = base_config()
  c.requires_data = True
  c.batch_size = 512
  c.num_steps = 3
  c.lr_decay = 0.8
  c.amass_fps = 0.0  # every frame
  c.model.variant = "official"
  c.model.init = "learned"
  c.model.output_scale = 0.1
  c.model.init_style = "pytorch"  # the official nn.Linear layers keep PyTorch's default init
  return with_scheme(c, scheme)
