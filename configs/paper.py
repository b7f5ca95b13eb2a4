"""The paper's settings (supplementary §1): AMASS, batch 1024, Adam 1e-3 for 20 epochs, N = 10,
4 blocks of [Dense 1024, BatchNorm, PReLU, Dropout 0.2].

    python train.py --config configs/paper.py --workdir runs/paper \
        --config.body_model=third_party/smpl/SMPL_NEUTRAL.pkl --config.amass_dir=/data/AMASS

The published training scheme by default; ``--config configs/paper.py:convergent`` (or
``configs/paper_converge.py``) trains the same network with the convergent scheme
(``lgd_jax.config.CONVERGENT``), whose update keeps converging past N steps.
"""

from lgd_jax.config import base_config, with_scheme


def get_config(scheme: str = "published"):
  c = base_config()
  c.requires_data = True  # SMPL file and AMASS directory must be given
  return with_scheme(c, scheme)
