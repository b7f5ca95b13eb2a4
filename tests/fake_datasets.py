"""Writers of small synthetic files in the exact formats of the licence-gated benchmarks: 3DPW's
sequence pickles, SPIN's evaluation .npz files, gendered SMPL-layout models and a Human3.6M joint
regressor. The loaders under test know nothing about these writers.

The 3DPW writer starts from parameters in the frame our fits predict in and builds the world-frame
poses, translations and per-frame cameras that a real file would hold, such that the camera sees
the body exactly where the official camera (f = 256, 6 m away) would; poses2d are those camera
images in pixels of another focal length and principal point.
"""

from __future__ import annotations

import pickle

import jax
import numpy as np
from scipy.spatial.transform import Rotation

from lgd_jax import body
from lgd_jax.body.keypoint_sets import COCO18_NAMES
from lgd_jax.geometry import camera

CAMERA_TO_WORLD = np.diag([1.0, -1.0, -1.0])
# A phone camera's intrinsics in 3DPW's range (portrait 1080 x 1920).
INTRINSICS = np.array([[1961.0, 0.0, 540.0], [0.0, 1961.0, 960.0], [0.0, 0.0, 1.0]])
# SPIN's h36m_idx -> global_idx: where each row of J_regressor_h36m lands in SPIN's 24 joints.
H36M17_TO_SPIN24 = (14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6)

# The SMPL joints followed by the COCO-18 keypoints, in one pass.
JOINTS_AND_COCO18 = body.KeypointSet("smpl24+coco18", body.JOINT_NAMES + COCO18_NAMES)
_forward = jax.jit(body.forward)
_keypoints = jax.jit(body.keypoints, static_argnames=("kpset",))


def forward(model, pose, betas):
  """Jitted :func:`body.forward`; models differing only by name share one compiled program."""
  return _forward(model.replace(name=""), pose, betas)


def keypoints(model, pose, betas, kpset):
  return _keypoints(model.replace(name=""), pose, betas, None, kpset)


def write_smpl_models(directory, num_verts: int = 120, names=("SMPL_MALE.npz", "SMPL_FEMALE.npz"),
                      seeds=(1, 2)) -> dict:
  """Procedural SMPL-layout models saved under gendered SMPL names; returns {name: path}."""
  directory.mkdir(parents=True, exist_ok=True)
  out = {}
  for name, seed in zip(names, seeds):
    path = directory / name
    body.save_npz(path, body.synthetic_smpl_arrays(num_verts, 10, seed, shape_scale=0.05))
    out[name] = path
  return out


def write_regressor(path, num_verts: int, seed: int = 0) -> np.ndarray:
  """A (17, num_verts) J_regressor_h36m-like .npy: each row a convex mix of 6 vertices."""
  rng = np.random.default_rng(seed)
  reg = np.zeros((17, num_verts))
  for row in reg:
    ids = rng.choice(num_verts, 6, replace=False)
    w = rng.uniform(0.5, 1.5, 6)
    row[ids] = w / w.sum()
  np.save(path, reg)
  return reg


def random_theta(rng, n: int, pose_scale: float = 0.25) -> np.ndarray:
  """(n, 72) poses: a random global orientation and small joint rotations."""
  pose = rng.normal(0.0, pose_scale, (n, 72))
  pose[:, :3] = Rotation.random(n, random_state=rng).as_rotvec()
  return pose


def random_camera(rng, n: int):
  """(n, 3, 3) world-to-camera rotations and (n, 3) translations."""
  return Rotation.random(n, random_state=rng).as_matrix(), rng.normal(0.0, 2.0, (n, 3))


def actor_arrays(model: body.BodyModel, theta_ours: np.ndarray, betas: np.ndarray,
                 cam_rot: np.ndarray, cam_t: np.ndarray, rng, missing: float = 0.2) -> dict:
  """One actor's 3DPW fields for per-frame cameras, from parameters in our frame.

  Returns:
    {"poses" (F, 72) world frame, "trans" (F, 3), "jointPositions" (F, 72), "poses2d"
    (F, 3, 18)}.
  """
  f = theta_ours.shape[0]
  world = theta_ours.copy()
  r_ours = Rotation.from_rotvec(theta_ours[:, :3]).as_matrix()
  world[:, :3] = Rotation.from_matrix(np.swapaxes(cam_rot, 1, 2) @ CAMERA_TO_WORLD @ r_ours
                                      ).as_rotvec()
  rest_pelvis = np.asarray(model.j_template[0] + model.j_shapedirs[0] @ betas, np.float64)
  target = CAMERA_TO_WORLD @ rest_pelvis + np.array([0.0, 0.0, camera.OFFICIAL_DISTANCE])
  trans = np.einsum("fji,fj->fi", cam_rot, target - cam_t) - rest_pelvis
  b = np.tile(betas, (f, 1))
  both = np.asarray(keypoints(model, world, b, JOINTS_AND_COCO18), np.float64)
  joints = both[:, :24] + trans[:, None]
  kp_world = both[:, 24:]
  kp_cam = np.einsum("fij,fkj->fki", cam_rot, kp_world + trans[:, None]) + cam_t[:, None]
  pix = INTRINSICS[:2, :2].diagonal() * kp_cam[..., :2] / kp_cam[..., 2:] + INTRINSICS[:2, 2]
  conf = rng.uniform(0.3, 1.0, (f, len(COCO18_NAMES)))
  conf[rng.uniform(size=conf.shape) < missing] = 0.0
  pix[conf == 0] = 0.0
  poses2d = np.concatenate([pix, conf[..., None]], -1).transpose(0, 2, 1)
  return {"poses": world, "trans": trans, "jointPositions": joints.reshape(f, 72),
          "poses2d": poses2d}


def write_3dpw_sequence(path, name: str, actors: list[dict], cam_rot: np.ndarray,
                        cam_t: np.ndarray) -> dict:
  """Writes a 3DPW sequence .pkl (latin1-readable protocol-2 pickle, the real keys and shapes).

  Args:
    path: the .pkl to write.
    name: the sequence name.
    actors: per actor {"gender": 'm'/'f', "betas": (10,), "valid": (F,) bool, and the
      :func:`actor_arrays` fields}.
    cam_rot, cam_t: (F, 3, 3), (F, 3) world-to-camera extrinsics.

  Returns:
    The dict written.
  """
  f = cam_rot.shape[0]
  cam_poses = np.tile(np.eye(4), (f, 1, 1))
  cam_poses[:, :3, :3] = cam_rot
  cam_poses[:, :3, 3] = cam_t
  data = {
      "sequence": name,
      "betas": [np.asarray(a["betas"], np.float64) for a in actors],
      "betas_clothed": [np.asarray(a["betas"], np.float64) for a in actors],
      "poses": [a["poses"] for a in actors],
      "trans": [a["trans"] for a in actors],
      "poses_60Hz": [np.repeat(a["poses"], 2, 0) for a in actors],
      "trans_60Hz": [np.repeat(a["trans"], 2, 0) for a in actors],
      "genders": [a["gender"] for a in actors],
      "jointPositions": [a["jointPositions"] for a in actors],
      "poses2d": [a["poses2d"] for a in actors],
      "campose_valid": [np.asarray(a["valid"], bool) for a in actors],
      "cam_poses": cam_poses,
      "cam_intrinsics": INTRINSICS.copy(),
      "img_frame_ids": np.arange(f),
  }
  with open(path, "wb") as fh:
    pickle.dump(data, fh, protocol=2)
  return data


def spin_arrays(joints17_ours: np.ndarray, with_part: bool = True) -> dict:
  """SPIN's S and part from H36M-17 joints (N, 17, 3) in our frame (as the official camera sees
  them, transl 0): S root-centred in the camera frame, part the camera's pixels."""
  n = joints17_ours.shape[0]
  cam = joints17_ours @ CAMERA_TO_WORLD.T + np.array([0.0, 0.0, camera.OFFICIAL_DISTANCE])
  s = np.zeros((n, 24, 4))
  s[:, H36M17_TO_SPIN24, :3] = cam - cam[:, :1]
  s[:, H36M17_TO_SPIN24, 3] = 1.0
  out = {"S": s}
  if with_part:
    pix = 1145.0 * cam[..., :2] / cam[..., 2:] + np.array([500.0, 500.0])
    part = np.zeros((n, 24, 3))
    part[:, H36M17_TO_SPIN24, :2] = pix
    part[:, H36M17_TO_SPIN24, 2] = 1.0
    out["part"] = part
  return out


def write_spin_npz(path, joints17_ours: np.ndarray, imgnames=None, with_part: bool = True,
                   **extra) -> dict:
  """Writes a SPIN evaluation .npz (imgname, center, scale, [part], S, plus ``extra`` keys)."""
  n = joints17_ours.shape[0]
  arrays = spin_arrays(joints17_ours, with_part)
  if imgnames is None:
    imgnames = [f"images/S9_Walking.60457274_{5 * i + 1:06d}.jpg" for i in range(n)]
  data = {"imgname": np.array(imgnames), "center": np.full((n, 2), 500.0),
          "scale": np.full(n, 1.2), **arrays, **extra}
  np.savez(path, **data)
  return data


def build_3dpw(root, num_frames: int = 7, seed: int = 0, num_verts: int = 120):
  """A 3DPW root with SMPL files beside it: one test sequence of two actors (male, female) whose
  campose_valid marks some frames invalid.

  Returns:
    (smpl_dir, {gender: BodyModel}, truth): per actor (gender 'm'/'f', theta in our frame (F, 72),
    betas (10,), valid (F,) bool, poses2d (F, 3, 18)).
  """
  smpl_dir = root / "smpl"
  write_smpl_models(smpl_dir, num_verts)
  models = {"male": body.load_model(smpl_dir / "SMPL_MALE.npz"),
            "female": body.load_model(smpl_dir / "SMPL_FEMALE.npz")}
  rng = np.random.default_rng(seed)
  cam_rot, cam_t = random_camera(rng, num_frames)
  actors, truth = [], []
  for gender, drop in (("m", (2, 5)), ("f", (0, 4))):
    valid = np.ones(num_frames, bool)
    valid[[d % num_frames for d in drop]] = False
    theta = random_theta(rng, num_frames)
    betas = rng.normal(0.0, 1.0, 10)
    model = models["male" if gender == "m" else "female"]
    arrays = actor_arrays(model, theta, betas, cam_rot, cam_t, rng)
    actors.append({"gender": gender, "betas": betas, "valid": valid, **arrays})
    truth.append((gender, theta, betas, valid, arrays["poses2d"]))
  split = root / "sequenceFiles" / "test"
  split.mkdir(parents=True)
  write_3dpw_sequence(split / "courtyard_fake_00.pkl", "courtyard_fake_00", actors, cam_rot, cam_t)
  return smpl_dir, models, truth


def write_amass_tree(root, lengths, seed: int = 0, fps: float = 60.0) -> list[str]:
  """A tree of AMASS SMPL+H sequence .npz files (one subject folder each) with the real keys:
  poses (F, 156) standing in AMASS's z-up world, betas (16,) of the sequence, trans, gender,
  mocap_framerate, dmpls. Returns the relative paths."""
  rng = np.random.default_rng(seed)
  rels = []
  for i, num in enumerate(lengths):
    poses = rng.normal(0.0, 0.2, (num, 156))
    poses[:, :3] = [np.pi / 2, 0.0, 0.0]  # SMPL's up axis along world +z
    rel = f"DS/subject{i}/motion_{i:02d}_poses.npz"
    (root / f"DS/subject{i}").mkdir(parents=True, exist_ok=True)
    np.savez(root / rel, poses=poses, betas=rng.normal(size=16), trans=np.zeros((num, 3)),
             gender=np.array("male"), mocap_framerate=np.array(fps), dmpls=np.zeros((num, 8)))
    rels.append(rel)
  return rels
