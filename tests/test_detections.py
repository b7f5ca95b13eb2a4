"""Fitting real detections: OpenPose/COCO readers, the camera translation, the whole file path.

Keypoint files are written in tmp_path in the exact OpenPose and COCO formats, from bodies of the
checkpoint's model rendered with a known camera. One fit of a 3-frame directory (3 persons, one
compiled program) serves most tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lgd_jax import body
from lgd_jax.data import detection_files
from lgd_jax.data.detection_files import DetectionError
from lgd_jax.eval import detection_inputs, detection_outputs, detections, restore
from lgd_jax.fitting import objective, relabel
from lgd_jax.geometry import camera, translation

IMAGE_W, IMAGE_H = 640, 480  # sqrt(640² + 480²) = 800: the default focal length is the truth
FOCAL = 800.0
TRANSL_ATOL = 1e-4  # metres; float32 least squares on exact projections
PIXEL_ATOL = 0.05  # float32 projections of the same body by two routes
FIT_GAIN = 0.9  # the fit's mean pixel error is below this fraction of the zero pose's
# The refinement on BODY_25 brings the feet's six keypoints at least this much closer (a fraction
# of their error when it fits the checkpoint's COCO-18 set, which has no feet; measured 0.26-0.48).
FEET_GAIN = 0.7
SHORT_REFINE = 30  # refinement iterations of the fit_batch tests (one compiled program for both)
# OpenPose/COCO orders written out by hand (OpenPose docs), not taken from the module.
BODY25_RHIP, BODY25_MIDHIP, BODY25_LHIP, BODY25_LBIGTOE = 9, 8, 12, 19
COCO18_RHIP, COCO18_LHIP, COCO18_NECK, COCO18_LEYE, COCO18_REAR = 8, 11, 1, 15, 16
COCO17_NOSE, COCO17_LEYE, COCO17_LSHOULDER, COCO17_RSHOULDER, COCO17_REAR = 0, 1, 5, 6, 4
HALF_MISSING = (2, 3, 4, 9, 10, 14, 15, 16, 17)  # COCO-18 joints dropped from person "c"


@pytest.fixture(scope="module")
def restored(tiny_checkpoint):
  return restore.restore(tiny_checkpoint)


# Root rotations (yaw, pitch, roll in degrees) within training's augmentation ranges: tilted
# bodies, which even the barely trained tiny checkpoint learns to straighten (its fit then has
# 0.70-0.80 times the zero pose's pixel error over seeds, against 0.9-1.0 for upright bodies).
ROOT_DEG = ((-30.0, 20.0, -20.0), (30.0, -20.0, 20.0), (0.0, 20.0, 15.0))
BODY_POSE_SD = 0.1  # radians, every body joint
_keypoints_3d = jax.jit(objective.keypoints_3d)


@pytest.fixture(scope="module")
def bodies(restored):
  """Three bodies (theta, camera-frame translation) and their COCO-18 pixels through the default
  camera of a 640x480 image."""
  problem = restored.problem
  n = len(ROOT_DEG)
  rng = np.random.default_rng(0)
  pose = rng.normal(0.0, BODY_POSE_SD, (n, 72))
  yaw, pitch, roll = np.deg2rad(np.array(ROOT_DEG)).T
  # training.rotate_root's order: R_z(roll) R_y(yaw) R_x(pitch).
  pose[:, :3] = Rotation.from_euler("ZYX", np.stack([roll, yaw, pitch], -1)).as_rotvec()
  betas = 0.5 * rng.normal(size=(n, problem.num_betas))
  theta = objective.join(problem, jnp.asarray(pose, jnp.float32), jnp.asarray(betas, jnp.float32))
  transl = np.stack([np.linspace(-0.6, 0.6, n), np.full(n, 0.2), np.linspace(4.0, 6.0, n)], -1)
  points = _keypoints_3d(problem, theta) @ problem.camera.rotation.T
  cam = np.asarray(points) + transl[:, None]
  pix = FOCAL * cam[..., :2] / cam[..., 2:3] + np.array([IMAGE_W / 2, IMAGE_H / 2])
  return theta, transl.astype(np.float32), pix.astype(np.float32)


def _body25(coco18_pix, coco18_conf):
  """COCO-18 keypoints in BODY_25 order (mid-hip from the hips, feet missing)."""
  names18 = body.KEYPOINT_SETS["coco18"].names
  names25 = body.KEYPOINT_SETS["body25"].names
  out = np.zeros((25, 3))
  for j, name in enumerate(names25):
    if name in names18:
      k = names18.index(name)
      out[j] = [*coco18_pix[k], coco18_conf[k]]
  out[BODY25_MIDHIP] = [*(0.5 * (coco18_pix[COCO18_RHIP] + coco18_pix[COCO18_LHIP])), 0.9]
  return out


def _openpose(path, persons):
  """Writes an OpenPose file; ``persons`` are (J, 3) arrays."""
  people = [{"person_id": [-1], "pose_keypoints_2d": [float(v) for v in np.ravel(p)],
             "face_keypoints_2d": [], "hand_left_keypoints_2d": [],
             "hand_right_keypoints_2d": []} for p in persons]
  path.write_text(json.dumps({"version": 1.3, "people": people}))
  return path


def _write_png(path, w, h):
  from PIL import Image
  Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _directory(root, pix, moved=0.0):
  """Frames a (two people, BODY_25), b (empty), c (one person with half the joints missing, one
  with two joints, one whose joints coincide). ``moved`` shifts the missing joints' coordinates."""
  root.mkdir()
  conf = np.full(18, 0.9)
  _openpose(root / "a_keypoints.json", [_body25(pix[0], conf), _body25(pix[1], conf)])
  _openpose(root / "b_keypoints.json", [])
  half = conf.copy()
  half[list(HALF_MISSING)] = 0.0
  c_pix = pix[2].copy()
  c_pix[list(HALF_MISSING)] += moved
  two = np.zeros(18)
  two[[COCO18_RHIP, COCO18_LHIP]] = 0.9
  same = np.full((18, 2), 200.0)  # all joints at one point: no camera can be solved
  _openpose(root / "c_keypoints.json",
            [_body25(c_pix, half), _body25(pix[0] + 50, two), _body25(same, conf)])
  return root


@pytest.fixture(scope="module")
def fitted(restored, bodies, tmp_path_factory):
  """The directory fitted once: (summary, out_dir, theta, transl, pix, base)."""
  theta, transl, pix = bodies
  base = tmp_path_factory.mktemp("det")
  src = _directory(base / "json", pix)
  images = base / "images"
  images.mkdir()
  _write_png(images / "a.png", IMAGE_W, IMAGE_H)
  out = base / "out"
  summary = detections.fit_file(restored, src, out, images=images, log=None)
  return summary, out, theta, transl, pix, base


# ---------------------------------------------------------------------------------------------
# Readers.


def test_openpose_body25_maps_by_name(tmp_path):
  kp = np.stack([10.0 + np.arange(25), 100.0 + np.arange(25), np.full(25, 0.8)], -1)
  kp[BODY25_LBIGTOE, 2] = 0.5
  det = detection_files.load(_openpose(tmp_path / "f_keypoints.json", [kp]))
  assert det.format == "openpose_body25" and det.frames == ("f",) and det.num_persons == 1
  pts, conf = detection_files.to_keypoint_set(det, "coco18")
  assert pts.shape == (1, 18, 2) and conf.shape == (1, 18)
  np.testing.assert_array_equal(pts[0, COCO18_RHIP], [10 + BODY25_RHIP, 100 + BODY25_RHIP])
  np.testing.assert_array_equal(pts[0, COCO18_LHIP], [10 + BODY25_LHIP, 100 + BODY25_LHIP])
  np.testing.assert_array_equal(pts[0, COCO18_NECK], [11, 101])  # BODY_25 joint 1 is the neck
  np.testing.assert_allclose(conf, 0.8)
  # To BODY_25 itself: identity, toes included.
  pts25, conf25 = detection_files.to_keypoint_set(det, "body25")
  np.testing.assert_array_equal(pts25[0], kp[:, :2])
  assert conf25[0, BODY25_LBIGTOE] == pytest.approx(0.5)


def test_openpose_coco18_and_threshold(tmp_path):
  kp = np.stack([5.0 * np.arange(18), 7.0 * np.arange(18), np.full(18, 0.7)], -1)
  kp[COCO18_LEYE, 2] = 0.5 * camera.CONFIDENCE_THRESHOLD  # below the official threshold
  det = detection_files.load(_openpose(tmp_path / "g_keypoints.json", [kp, kp]))
  assert det.format == "openpose_coco18" and det.num_persons == 2
  pts, conf = detection_files.to_keypoint_set(det, "coco18")
  vis = np.arange(18) != COCO18_LEYE
  np.testing.assert_array_equal(pts[0, vis], kp[vis, :2])
  assert conf[0, COCO18_LEYE] == 0 and np.all(pts[:, COCO18_LEYE] == 0)
  # COCO-18 has no mid-hip: the hips' midpoint for BODY_25; the feet stay missing.
  pts25, conf25 = detection_files.to_keypoint_set(det, "body25")
  np.testing.assert_allclose(pts25[0, BODY25_MIDHIP],
                             0.5 * (kp[COCO18_RHIP, :2] + kp[COCO18_LHIP, :2]))
  assert conf25[0, BODY25_LBIGTOE] == 0


def test_coco_results_file(tmp_path):
  kp = np.stack([3.0 * np.arange(17), 2.0 * np.arange(17), np.full(17, 0.6)], -1)
  weak = kp.copy()
  weak[COCO17_RSHOULDER, 2] = 0.0
  entries = [{"image_id": 397133, "category_id": 1, "keypoints": kp.ravel().tolist(),
              "score": 0.9},
             {"image_id": 12, "category_id": 1, "keypoints": weak.ravel().tolist(), "score": 0.5},
             {"image_id": 397133, "category_id": 1, "keypoints": kp.ravel().tolist(),
              "score": 0.7}]
  path = tmp_path / "person_keypoints_results.json"
  path.write_text(json.dumps(entries))
  det = detection_files.load(path)
  assert det.format == "coco17" and det.num_persons == 3
  assert set(det.frames) == {"12", "397133"}
  f = det.frames.index("397133")
  assert list(det.person_index[det.persons_in(f)]) == [0, 1]
  pts, conf = detection_files.to_keypoint_set(det, "coco18")
  first = det.persons_in(f)[0]
  np.testing.assert_array_equal(pts[first, 0], kp[COCO17_NOSE, :2])
  np.testing.assert_array_equal(pts[first, COCO18_LEYE], kp[COCO17_LEYE, :2])
  np.testing.assert_array_equal(pts[first, COCO18_REAR], kp[COCO17_REAR, :2])
  # The neck is the shoulders' midpoint, missing when a shoulder is.
  np.testing.assert_allclose(pts[first, COCO18_NECK],
                             0.5 * (kp[COCO17_LSHOULDER, :2] + kp[COCO17_RSHOULDER, :2]))
  assert conf[first, COCO18_NECK] == pytest.approx(0.6)
  weak_person = det.persons_in(det.frames.index("12"))[0]
  assert conf[weak_person, COCO18_NECK] == 0


def test_coco_annotation_file(tmp_path):
  kp = np.stack([3.0 * np.arange(17), 2.0 * np.arange(17), np.full(17, 2.0)], -1)
  kp[COCO17_NOSE] = [0, 0, 0]  # not labelled
  kp[COCO17_LEYE, 2] = 1  # labelled, occluded: still a keypoint
  data = {"images": [{"id": 7, "file_name": "train/000007.jpg", "width": 320, "height": 200},
                     {"id": 8, "file_name": "000008.jpg", "width": 320, "height": 200}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "num_keypoints": 16,
                           "keypoints": kp.ravel().astype(int).tolist()}],
          "categories": [{"id": 1, "name": "person"}]}
  path = tmp_path / "ann.json"
  path.write_text(json.dumps(data))
  det = detection_files.load(path)
  assert det.frames == ("000007", "000008") and det.image_sizes == ((320, 200), (320, 200))
  assert len(det.persons_in(1)) == 0  # an image without people: an empty frame
  _, conf = detection_files.to_keypoint_set(det, "coco18")
  assert conf[0, 0] == 0 and conf[0, COCO18_LEYE] == 1.0 and conf[0, COCO18_NECK] == 1.0


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file.


def _bad_openpose(values):
  return json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": values}]})


GOOD25 = [1.0, 2.0, 0.5] * 25
BAD_INPUTS = {
    "malformed": '{"version": 1.3, "people": [',
    "no_people": json.dumps({"version": 1.3}),
    "no_keypoints": json.dumps({"version": 1.3, "people": [{"face_keypoints_2d": []}]}),
    "not_triples": _bad_openpose(GOOD25[:-1]),
    "19_joints": _bad_openpose([1.0, 2.0, 0.5] * 19),
    "nan": _bad_openpose(GOOD25[:30] + [float("nan")] + GOOD25[31:]),
    "inf": _bad_openpose(GOOD25[:3] + [float("inf")] + GOOD25[4:]),
    "negative_conf": _bad_openpose(GOOD25[:5] + [-0.5] + GOOD25[6:]),
    "strings": _bad_openpose(["1"] * 75),
    "coco_54": json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [1.0] * 54}]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_file_gives_one_line_error(tmp_path, case):
  path = tmp_path / f"{case}_keypoints.json"
  path.write_text(BAD_INPUTS[case])
  with pytest.raises(DetectionError) as e:
    detection_files.load(path)
  msg = str(e.value)
  assert str(path) in msg and "\n" not in msg and "expected" in msg


def test_bad_file_in_directory_is_named(tmp_path):
  _openpose(tmp_path / "a_keypoints.json", [np.ones((25, 3))])
  (tmp_path / "b_keypoints.json").write_text(BAD_INPUTS["nan"])
  with pytest.raises(DetectionError, match="b_keypoints.json"):
    detection_files.load(tmp_path)


def test_empty_directory_and_mixed_formats(tmp_path):
  with pytest.raises(DetectionError, match=str(tmp_path)):
    detection_files.load(tmp_path)
  _openpose(tmp_path / "a_keypoints.json", [np.ones((25, 3))])
  _openpose(tmp_path / "b_keypoints.json", [np.ones((18, 3))])
  with pytest.raises(DetectionError, match="b_keypoints.json"):
    detection_files.load(tmp_path)


def test_unreadable_image(restored, tmp_path):
  src = _openpose(tmp_path / "a_keypoints.json", [np.ones((25, 3))])
  images = tmp_path / "images"
  images.mkdir()
  (images / "a.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(DetectionError, match="a.jpg"):
    detections.fit_file(restored, src, tmp_path / "out", images=images, log=None)


# ---------------------------------------------------------------------------------------------
# Camera.


def _camera(n):
  return jnp.full((n,), FOCAL, jnp.float32), jnp.tile(jnp.array([IMAGE_W / 2, IMAGE_H / 2]), (n, 1))


def test_translation_recovers_known_camera(restored, bodies):
  problem = restored.problem
  theta, transl, pix = bodies
  points = _keypoints_3d(problem, theta) @ problem.camera.rotation.T
  weights = np.random.default_rng(0).uniform(0.2, 1.0, pix.shape[:2]).astype(np.float32)
  weights[:, ::3] = 0.0  # missing joints
  pix_moved = np.where(weights[..., None] > 0, pix, 1e4)  # their coordinates are ignored
  t = translation.estimate_translation(points, jnp.asarray(pix_moved), jnp.asarray(weights),
                                      *_camera(len(pix)))
  np.testing.assert_allclose(t, transl, atol=TRANSL_ATOL)


def test_place_gives_smplx_parameters_in_the_camera_frame(restored, bodies):
  problem = restored.problem
  theta, transl, pix = bodies
  focal, center = _camera(len(pix))
  pl = detections.place(problem, theta, jnp.asarray(pix), jnp.ones(pix.shape[:2]), focal, center)
  np.testing.assert_allclose(pl.cam_translation, transl, atol=TRANSL_ATOL)
  assert np.all(pl.reproj_px < PIXEL_ATOL) and np.all(pl.in_front)
  # smplx's forward with the saved names puts the body where the camera sees it.
  pose = jnp.concatenate([pl.global_orient, pl.body_pose], -1)
  verts = _vertices(problem.model, pose, pl.betas, pl.transl)
  p = objective.split(problem, theta)
  want = _vertices(problem.model, p.pose, p.betas, jnp.zeros_like(pl.transl))
  want = want @ problem.camera.rotation.T + transl[:, None]
  np.testing.assert_allclose(verts, want, atol=TRANSL_ATOL)
  np.testing.assert_allclose(pl.keypoints_2d, pix, atol=PIXEL_ATOL)


@jax.jit
def _vertices(model, pose, betas, transl):
  return body.forward(model, pose, betas, transl).vertices


# ---------------------------------------------------------------------------------------------
# The whole file.


def test_fit_file_outputs(fitted, restored):
  summary, out, *_ = fitted
  model = restored.problem.model
  nb = restored.problem.num_betas
  assert summary["totals"]["fitted"] == 3 and summary["totals"]["persons"] == 5
  assert [(f["frame"], f["person"]) for f in summary["fits"]] == [("a", 0), ("a", 1), ("c", 0)]
  reasons = {(s["frame"], s["person"]): s["reason"] for s in summary["skipped"]}
  assert set(reasons) == {("b", None), ("c", 1), ("c", 2)}
  assert "no person" in reasons[("b", None)] and "2 confident" in reasons[("c", 1)]
  assert "span" in reasons[("c", 2)]
  assert summary["totals"]["skipped_frames"] == 1 and summary["totals"]["skipped_persons"] == 2
  assert summary["fits"][2]["num_confident_joints"] == 18 - len(HALF_MISSING)
  assert summary["fits"][0]["size_from"] == "image" and summary["fits"][2]["size_from"] == "canvas"
  assert summary["refine_keypoint_set"] == "body25"  # BODY_25 input: refined on its own joints
  assert json.loads((out / "summary.json").read_text()) == summary
  for fit in summary["fits"]:
    assert math.isfinite(fit["reproj_px"]) and math.isfinite(fit["reproj"])
    stem = f"{fit['frame']}_p{fit['person']}"
    assert fit["files"] == [f"{stem}.npz", f"{stem}.obj", f"{stem}.png"]
    with np.load(out / f"{stem}.npz") as z:
      shapes = {k: z[k].shape for k in z.files}
      assert shapes["global_orient"] == (3,) and shapes["body_pose"] == (69,)
      assert shapes["betas"] == (nb,) and shapes["transl"] == (3,)
      assert shapes["focal_length"] == () and shapes["camera_center"] == (2,)
      assert shapes["keypoints_2d"] == shapes["keypoints_2d_fit"] == (18, 2)
      assert float(z["reproj_px"]) == pytest.approx(fit["reproj_px"])
      vis = z["confidence"] > 0
      err = np.linalg.norm(z["keypoints_2d_fit"] - z["keypoints_2d"], axis=-1)[vis].mean()
      assert err == pytest.approx(fit["reproj_px"], rel=1e-4)
    lines = (out / f"{stem}.obj").read_text().splitlines()
    assert sum(ln.startswith("v ") for ln in lines) == model.num_verts
    faces = np.array([ln.split()[1:] for ln in lines if ln.startswith("f ")], int)
    assert faces.shape == (model.faces.shape[0], 3) and faces.min() == 1
    assert faces.max() == model.num_verts
    from PIL import Image
    with Image.open(out / f"{stem}.png") as im:
      assert max(im.size) == detection_outputs.PNG_MAX_SIDE_PX
  with np.load(out / "a_p0.npz") as z:  # frame a's camera comes from its 640x480 image
    assert float(z["focal_length"]) == pytest.approx(FOCAL)
    np.testing.assert_allclose(z["camera_center"], [IMAGE_W / 2, IMAGE_H / 2])


def test_fit_beats_the_zero_pose(fitted, restored):
  """The barely trained checkpoint still moves the projections towards the detections."""
  summary, out, *_ = fitted
  problem = restored.problem
  saved = []
  for fit in summary["fits"]:
    with np.load(out / f"{fit['frame']}_p{fit['person']}.npz") as z:
      saved.append({k: z[k] for k in ("keypoints_2d", "confidence", "focal_length",
                                      "camera_center")})
  stack = {k: jnp.asarray(np.stack([s[k] for s in saved])) for k in saved[0]}
  zero = detections.place(problem, jnp.zeros((len(saved), problem.num_params)),
                          stack["keypoints_2d"], stack["confidence"], stack["focal_length"],
                          stack["camera_center"])
  fit_err = np.array([fit["reproj_px"] for fit in summary["fits"]])
  zero_err = np.asarray(zero.reproj_px)
  print("re-projection error (px), fit:", fit_err, "zero pose:", zero_err)
  assert np.mean(fit_err) < FIT_GAIN * np.mean(zero_err), (fit_err, zero_err)


def test_missing_joints_do_not_pull_and_overwrite_is_refused(fitted, restored):
  summary, out, _, _, pix, base = fitted
  src = _directory(base / "json_moved", pix, moved=300.0)
  out2 = base / "out2"
  out2.mkdir()
  (out2 / "summary.json").write_text("{}")
  with pytest.raises(DetectionError, match="summary.json"):
    detections.fit_file(restored, src, out2, log=None, draw=False)
  assert (out2 / "summary.json").read_text() == "{}"
  # Same camera as the first run (no image there), so only the missing joints differ.
  detections.fit_file(restored, src, out2, log=None, draw=False, overwrite=True,
                      focal_length=FOCAL)
  again = base / "out3"
  detections.fit_file(restored, base / "json", again, log=None, draw=False, focal_length=FOCAL)
  with np.load(out2 / "c_p0.npz") as moved, np.load(again / "c_p0.npz") as ref:
    for key in ("global_orient", "body_pose", "betas", "transl", "keypoints_2d_fit"):
      np.testing.assert_array_equal(moved[key], ref[key])
  # The files of a run are never replaced silently.
  with pytest.raises(DetectionError, match="summary.json"):
    detections.fit_file(restored, src, again, log=None, draw=False)


def test_zero_start_is_the_orientation_stage_not_the_learned_fit(restored, bodies, tmp_path):
  """start="zero" (the SMPLify-style baseline's start) turns only the zero pose's root: no
  learned step, body pose and shape stay exactly zero. (fit_file's batch loop once overwrote
  ``start`` with the batch offset, so this ran the learned fit.)"""
  _, _, pix = bodies
  conf = np.full(18, 0.9)
  src = _openpose(tmp_path / "a_keypoints.json", [_body25(pix[0], conf), _body25(pix[1], conf)])
  out = tmp_path / "out"
  summary = detections.fit_file(restored, src, out, log=None, draw=False, refine_steps=0,
                                start="zero")
  assert len(summary["fits"]) == 2
  for fit in summary["fits"]:
    assert fit["learned_steps"] == 0 and fit["refine_steps"] == 0
    npz = next(f for f in fit["files"] if f.endswith(".npz"))
    with np.load(out / Path(npz).name) as person:
      np.testing.assert_array_equal(person["body_pose"], 0.0)
      np.testing.assert_array_equal(person["betas"], 0.0)
      assert np.abs(person["global_orient"]).max() > 0  # the root was turned


def test_relabelling_keeps_each_persons_fit_of_the_labelling_chosen(restored, bodies):
  """fit_batch(relabel=True) fits every labelling of the limbs side by side and returns, per
  person, exactly the fit of its chosen labelling (the same as fitting that labelling alone)."""
  _, _, pix = bodies
  problem = restored.problem
  perms, labels = relabel.hypotheses(problem.kpset)
  kp = np.array(pix)
  kp[1] = kp[1][perms[labels.index("legs")]]  # the second person's legs exchanged
  conf = np.ones(kp.shape[:2], np.float32)
  focal = np.full(len(kp), FOCAL, np.float32)
  center = np.tile(np.array([IMAGE_W / 2, IMAGE_H / 2], np.float32), (len(kp), 1))
  fit = lambda k, relabelling: detections.fit_batch(  # noqa: E731
      restored.learner, restored.variables, problem, jnp.asarray(k), jnp.asarray(conf),
      jnp.asarray(focal), jnp.asarray(center), 2, with_vertices=False,
      refine_steps=SHORT_REFINE, relabel=relabelling)
  res = fit(kp, True)
  assert res.labelling.shape == (len(kp),)
  for b in range(len(kp)):
    alone = fit(kp[:, perms[int(res.labelling[b])]], False)
    np.testing.assert_allclose(res.placement.body_pose[b], alone.placement.body_pose[b],
                               atol=1e-5)
    np.testing.assert_allclose(res.placement.reproj_px[b], alone.placement.reproj_px[b],
                               rtol=1e-4)
  # Without relabelling nothing is exchanged.
  assert not np.any(np.asarray(fit(kp, False).labelling))


def test_refinement_keypoint_set():
  assert detection_inputs.refine_keypoint_set("openpose_body25", "coco18") == "body25"
  assert detection_inputs.refine_keypoint_set("openpose_body25", "coco18", "checkpoint") == "coco18"
  for fmt in ("openpose_coco18", "coco17"):  # nothing beyond COCO-18
    assert detection_inputs.refine_keypoint_set(fmt, "coco18") == "coco18"
  with pytest.raises(DetectionError, match="refine_keypoints"):
    detection_inputs.refine_keypoint_set("coco17", "coco18", "all")


@pytest.mark.slow  # two more compiled fits (~40 s on 2 cores); the default suite is near 10 min
def test_refinement_fits_the_feet_of_body25_detections(restored, bodies):
  """With BODY_25 detections the refinement fits their feet (toes, heels; the checkpoint's
  COCO-18 has none), exchanged feet given back to their ankles first."""
  theta, transl, pix18 = bodies
  problem = restored.problem
  p25 = problem.replace(kpset="body25")
  center = np.array([IMAGE_W / 2, IMAGE_H / 2], np.float32)
  cam = np.asarray(_keypoints_3d(p25, theta) @ problem.camera.rotation.T) + transl[:, None]
  pix25 = (FOCAL * cam[..., :2] / cam[..., 2:3] + center).astype(np.float32)
  names = list(body.get_keypoint_set("body25").names)
  feet = [names.index(f"{side}_{part}") for side in ("left", "right")
          for part in relabel.FOOT_PARTS]
  given = pix25.copy()  # the second person's feet labelled the other way round
  half = len(feet) // 2
  given[1, feet] = pix25[1, feet[half:] + feet[:half]]
  n = len(pix18)
  focal = jnp.full((n,), FOCAL)
  centers = jnp.tile(jnp.asarray(center), (n, 1))

  def feet_px(**kw):
    res = detections.fit_batch(
        restored.learner, restored.variables, problem, jnp.asarray(pix18),
        jnp.ones(pix18.shape[:2]), focal, centers, 2, with_vertices=False,
        refine_steps=SHORT_REFINE, relabel=True, **kw)
    pl = res.placement
    pose = jnp.concatenate([pl.global_orient, pl.body_pose], -1)
    k = np.asarray(body.keypoints(problem.model, pose, pl.betas, pl.transl, "body25"))
    fit = FOCAL * k[..., :2] / k[..., 2:3] + center
    return np.linalg.norm(fit - pix25, axis=-1)[:, feet].mean(-1)

  base = feet_px()
  with_feet = feet_px(refine_problem=p25, refine_keypoints=jnp.asarray(given),
                      refine_conf=jnp.ones(given.shape[:2]))
  print("foot keypoints' error (px), COCO-18 refinement:", base, "BODY_25:", with_feet)
  assert np.all(with_feet < FEET_GAIN * base), (base, with_feet)


def test_frames_without_fits_are_reported(restored, tmp_path):
  src = tmp_path / "json"
  src.mkdir()
  _openpose(src / "x_keypoints.json", [])
  _openpose(src / "y_keypoints.json", [np.zeros((25, 3))])
  summary = detections.fit_file(restored, src, tmp_path / "out", log=None)
  assert summary["fits"] == [] and summary["totals"]["skipped_frames"] == 1
  assert summary["totals"]["skipped_persons"] == 1
  assert (tmp_path / "out" / "summary.json").exists()
