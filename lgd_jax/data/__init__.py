"""Training poses: AMASS motion capture, or a synthetic pose source that needs no download.

    from lgd_jax import data
    poses = data.synthetic.sample_poses(key, 256)                 # (256, 72), no files needed
    amass = data.amass.load_or_preprocess("/data/AMASS")          # dict of (N, 72) poses, betas
"""

from lgd_jax.data import amass, synthetic
from lgd_jax.data.amass import (
                                AmassError,
                                find_sequences,
                                load_or_preprocess,
                                load_preprocessed,
                                load_sequence,
                                preprocess,
                                split_of,
)
from lgd_jax.data.synthetic import (
                                JOINT_LIMITS_DEG,
                                KEYFRAMES,
                                sample_betas,
                                sample_euler,
                                sample_poses,
)

__all__ = [
    "AmassError", "JOINT_LIMITS_DEG", "KEYFRAMES", "amass", "find_sequences",
    "load_or_preprocess", "load_preprocessed", "load_sequence", "preprocess", "sample_betas",
    "sample_euler", "sample_poses", "split_of", "synthetic",
]
