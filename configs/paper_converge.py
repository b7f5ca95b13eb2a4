"""The paper's settings (``configs/paper.py``) trained with the convergent scheme
(``lgd_jax.config.CONVERGENT``: robust objective, late-iteration starts from a buffer of earlier
fits, fixed-point samples, a learned Adam nominal term beside a summably damped network), so that
iterating the update past N steps keeps converging:

    python train.py --config configs/paper_converge.py --workdir runs/paper_converge \
        --config.body_model=third_party/smpl/SMPL_NEUTRAL.pkl --config.amass_dir=/data/AMASS

the same as ``--config configs/paper.py:convergent``.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_paper_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper.py"))
_paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_paper)


def get_config():
  return _paper.get_config("convergent")
