"""A functional SMPL body model: loading, forward pass, keypoints.

    from lgd_jax import body
    model = body.load_model(path, num_betas=10)          # .pkl or .npz
    out = body.forward(model, pose, betas, transl)       # pose (B, 72), global orientation first
    kp = body.keypoints(model, pose, betas, transl, "coco18")   # (B, 18, 3), no mesh computed
"""

from lgd_jax.body.io import ModelFileError, load_model, save_npz
from lgd_jax.body.keypoint_sets import (
                                        KEYPOINT_SETS,
                                        KeypointSet,
                                        get_keypoint_set,
                                        regressor_keypoint_set,
)
from lgd_jax.body.lbs import BodyOutput, forward, forward_kinematics, keypoints
from lgd_jax.body.model import (
                                        JOINT_NAMES,
                                        NUM_JOINTS,
                                        NUM_POSE,
                                        SMPL_LANDMARKS,
                                        SMPL_PARENTS,
                                        BodyModel,
                                        make_model,
)
from lgd_jax.body.procedural import synthetic_smpl_arrays, tiny_model

__all__ = [
    "BodyModel", "BodyOutput", "JOINT_NAMES", "KEYPOINT_SETS", "KeypointSet", "ModelFileError",
    "NUM_JOINTS", "NUM_POSE", "SMPL_LANDMARKS", "SMPL_PARENTS", "forward", "forward_kinematics",
    "get_keypoint_set", "keypoints", "load_model", "make_model", "regressor_keypoint_set",
    "save_npz", "synthetic_smpl_arrays", "tiny_model",
]
