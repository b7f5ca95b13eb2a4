"""The paper's settings (supplementary §1): AMASS, batch 1024, Adam 1e-3 for 20 epochs, N = 10,
4 blocks of [Dense 1024, BatchNorm, PReLU, Dropout 0.2].

    python train.py --config configs/paper.py --workdir runs/paper \
        --config.body_model=third_party/smpl/SMPL_NEUTRAL.pkl --config.amass_dir=/data/AMASS
"""

from lgd_jax.config import base_config


def get_config():
  c = base_config()
  c.requires_data = True  # SMPL file and AMASS directory must be given
  return c
