"""Benchmark protocols: data specs, the 2D input maps, the metrics on hand-made cases, zero error
for the ground truth on every protocol, clear errors, and evaluate_dataset end to end on the tiny
checkpoint."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_datasets import build_3dpw, keypoints, random_theta, write_regressor, write_spin_npz
from scipy.spatial.transform import Rotation

from lgd_jax import body
from lgd_jax.body.keypoint_sets import COCO18_NAMES
from lgd_jax.data import spin
from lgd_jax.eval import protocols, restore
from lgd_jax.fitting import objective
from lgd_jax.geometry import camera

ZERO_MM = 0.05  # float32 error of identical bodies, millimetres
NUM_STEPS = 3  # fit length of the end-to-end runs
B = 4  # samples of the tiny-model cases (one shape: the metric programs compile once per kind)


# ---------------------------------------------------------------------------------------------
# Specs and inputs.


@pytest.mark.parametrize("spec, expected", [
    (None, ("synthetic", None)), ("synthetic", ("synthetic", None)),
    ("amass:/d/amass", ("amass", "/d/amass")), ("3dpw:/d/3DPW", ("3dpw", "/d/3DPW")),
    ("3dpw-validation:/d", ("3dpw-validation", "/d")), ("h36m-p2:/x.npz", ("h36m-p2", "/x.npz")),
    ("mpi-inf-3dhp:C:/x.npz", ("mpi-inf-3dhp", "C:/x.npz")),
])
def test_parse_spec(spec, expected):
  assert protocols.parse_spec(spec) == expected


@pytest.mark.parametrize("spec, match", [("3dpw", "3dpw:PATH"), ("h36m-p3:/x", "unknown"),
                                         ("amass:", "amass:DIR")])
def test_parse_spec_errors(spec, match):
  with pytest.raises(protocols.ProtocolError, match=match):
    protocols.parse_spec(spec)


def test_map_keypoints_by_name_with_aliases():
  names = spin.SPIN24_NAMES
  kp = np.arange(2 * 24 * 2, dtype=np.float32).reshape(2, 24, 2)
  conf = np.ones((2, 24), np.float32)
  conf[1, names.index("neck")] = 0.0  # falls back to the thorax
  out, c, unmatched = protocols.map_keypoints(names, kp, conf, COCO18_NAMES)
  assert unmatched == []  # SPIN's 24 joints include the face keypoints
  for k, name in enumerate(COCO18_NAMES):
    if name != "neck":
      np.testing.assert_array_equal(out[:, k], kp[:, names.index(name)])
  np.testing.assert_array_equal(out[:, 1], [kp[0, names.index("neck")],
                                            kp[1, names.index("thorax")]])
  out, c, unmatched = protocols.map_keypoints(COCO18_NAMES, kp[:, :18], conf[:, :18],
                                              body.get_keypoint_set("body25").names)
  assert set(unmatched) == {"mid_hip", "left_big_toe", "left_small_toe", "left_heel",
                            "right_big_toe", "right_small_toe", "right_heel"}
  assert np.all(c[:, [body.get_keypoint_set("body25").index(n) for n in unmatched]] == 0)


# ---------------------------------------------------------------------------------------------
# Metrics on hand-made cases.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny body model, a matching regressor file and the problem that fits with it."""
  d = tmp_path_factory.mktemp("smpl")
  model = body.tiny_model(120)
  write_regressor(d / "J_regressor_h36m.npy", 120)
  reg = body.regressor_keypoint_set(d / "J_regressor_h36m.npy")
  return d, model, reg, objective.make_problem(model, "coco18")


def _centred17(model, reg, theta):
  j = np.asarray(keypoints(model, theta[:, :72], theta[:, 72:], reg), np.float64)
  return j - j[:, :1]


def test_a_root_rotation_costs_mpjpe_but_not_pa_mpjpe(tiny):
  """A prediction turned about the vertical by a known angle: MPJPE is the chord length of every
  joint's horizontal radius; Procrustes undoes it."""
  _, model, reg, problem = tiny
  rng = np.random.default_rng(0)
  theta = np.concatenate([random_theta(rng, B, 0.2), np.zeros((B, 10))], -1)
  angle = 0.3
  turned = theta.copy()
  turned[:, :3] = (Rotation.from_rotvec([0.0, angle, 0.0]) *
                   Rotation.from_rotvec(theta[:, :3])).as_rotvec()
  gt = _centred17(model, reg, theta)[:, list(spin.H36M_TO_J17[:14])]
  values = protocols.step_metrics(problem, jnp.asarray(turned[None], jnp.float32),
                                  {"joints": jnp.asarray(gt, jnp.float32)}, "h36m", reg)
  radius = np.linalg.norm(gt[..., [0, 2]], axis=-1)
  expected = 1000.0 * np.mean(2.0 * np.sin(angle / 2.0) * radius, axis=-1)
  np.testing.assert_allclose(values["mpjpe_mm"][0], expected, rtol=1e-3)
  np.testing.assert_allclose(values["pa_mpjpe_mm"][0], 0.0, atol=ZERO_MM)


def test_scaled_ground_truth_and_pck_auc_on_constructed_errors(tiny):
  _, model, reg, problem = tiny
  rng = np.random.default_rng(1)
  theta = np.concatenate([random_theta(rng, B, 0.2), np.zeros((B, 10))], -1)
  pred = _centred17(model, reg, theta)[:, list(spin.H36M_TO_J17)]
  theta_j = jnp.asarray(theta[None], jnp.float32)
  # A ground truth 10 % larger: MPJPE is 10 % of the mean joint radius, PA-MPJPE zero.
  values = protocols.step_metrics(problem, theta_j, {"joints": jnp.asarray(1.1 * pred)}, "mpi",
                                  reg)
  np.testing.assert_allclose(values["mpjpe_mm"][0],
                             100.0 * np.mean(np.linalg.norm(pred, axis=-1), -1), rtol=1e-3)
  np.testing.assert_allclose(values["pa_mpjpe_mm"][0], 0.0, atol=ZERO_MM)
  np.testing.assert_allclose(values["pa_pck150"][0], 100.0)
  # Errors of 102 mm on 5 joints and 200 mm on the other 12 (off the 5 mm grid of thresholds).
  offsets = np.zeros_like(pred)
  offsets[:, :5, 0] = 0.102
  offsets[:, 5:, 1] = 0.2
  values = protocols.step_metrics(problem, theta_j, {"joints": jnp.asarray(pred + offsets)},
                                  "mpi", reg)
  np.testing.assert_allclose(values["pck150"][0], 100.0 * 5 / 17, rtol=1e-5)
  # AUC: the 102 mm joints count at the 10 thresholds 105..150 of 31, the others at none.
  np.testing.assert_allclose(values["auc"][0], 100.0 * 5 / 17 * 10 / 31, rtol=1e-5)
  np.testing.assert_allclose(values["mpjpe_mm"][0], (5 * 102.0 + 12 * 200.0) / 17, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# The ground truth fed as the prediction scores zero.


@pytest.fixture(scope="module")
def fake_3dpw(tmp_path_factory):
  root = tmp_path_factory.mktemp("3dpw")
  smpl_dir, models, truth = build_3dpw(root)
  return root, smpl_dir, models, truth


def test_3dpw_ground_truth_scores_zero_with_every_metric(fake_3dpw):
  """With the male model as the predictor, the male frames' ground truth parameters give zero
  24-joint, 14-joint and vertex errors; the female frames (another body) do not."""
  root, smpl_dir, models, truth = fake_3dpw
  write_regressor(smpl_dir / "J_regressor_h36m.npy", models["male"].num_verts)
  try:
    problem = objective.make_problem(models["male"], "coco18")
    data = protocols.prepare(problem, "3dpw", str(root), smpl_dir, log=lambda m: None)
  finally:
    (smpl_dir / "J_regressor_h36m.npy").unlink()
  assert data.pve and data.regressor is not None
  assert data.metrics == ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "mpjpe14_mm", "pa_mpjpe14_mm",
                          "reproj")
  assert data.description["gt_vs_jointPositions_mm"] < ZERO_MM
  gt = {k: jnp.asarray(v) for k, v in data.gt.items()}
  gt.update(protocols.gt_mesh_points(data.gt_models, gt["pose"], gt["betas"],
                                     gt["gender_index"], data.regressor, True))
  theta = jnp.concatenate([gt["pose"], gt["betas"]], -1)[None]
  values = jax.device_get(protocols.step_metrics(
      problem, theta, {k: gt[k] for k in ("joints", "vertices", "joints14")}, "3dpw",
      data.regressor, True))
  male = data.gt["gender_index"] == sorted(data.description["smpl_models"]).index("male")
  assert 0 < male.sum() < len(data)
  for k, v in values.items():
    np.testing.assert_allclose(v[0, male], 0.0, atol=ZERO_MM, err_msg=k)
    assert np.all(v[0, ~male] > 1.0), k


@pytest.mark.parametrize("name", ["h36m-p1", "mpi-inf-3dhp"])
def test_spin_ground_truth_scores_zero(tiny, tmp_path, name):
  smpl_dir, model, reg, problem = tiny
  rng = np.random.default_rng(2)
  theta = np.concatenate([random_theta(rng, B, 0.3), rng.normal(0, 1, (B, 10))], -1)
  j17 = np.asarray(keypoints(model, theta[:, :72], theta[:, 72:], reg), np.float64)
  path = tmp_path / "data.npz"
  write_spin_npz(path, j17)
  data = protocols.prepare(problem, name, str(path), smpl_dir)
  # Ground truth in, so the tables must not pass for detection-based numbers.
  assert data.input_2d == data.description["input_2d"] == "ground-truth projection"
  values = protocols.step_metrics(problem, jnp.asarray(theta[None], jnp.float32), {
      "joints": jnp.asarray(data.gt["joints"])}, data.kind, data.regressor)
  for k in ("mpjpe_mm", "pa_mpjpe_mm"):
    np.testing.assert_allclose(values[k], 0.0, atol=ZERO_MM, err_msg=k)
  if name == "mpi-inf-3dhp":
    np.testing.assert_allclose(values["pck150"], 100.0)
    np.testing.assert_allclose(values["auc"], 100.0)
  # The 2D input: the regressed joints seen by the camera, mapped by name (neck = thorax).
  names = ("neck",) + tuple(f"{s}_{p}" for p in ("shoulder", "elbow", "wrist", "hip", "knee",
                                                  "ankle") for s in ("left", "right"))
  rows = [body.keypoint_sets.H36M17_NAMES.index("thorax" if n == "neck" else n) for n in names]
  cols = [COCO18_NAMES.index(n) for n in names]
  pix = np.asarray(jax.jit(camera.project)(jnp.asarray(j17[:, rows], jnp.float32),
                                           problem.camera))
  np.testing.assert_allclose(data.kp2d[:, cols], _normalised(pix), atol=1e-4)
  assert np.all(data.conf[:, [COCO18_NAMES.index(n) for n in COCO18_NAMES if n not in names]]
                == 0)


@pytest.mark.parametrize("name, with_part, input_2d", [
    ("h36m-p2", False, "ground-truth projection"),  # S through the nominal camera
    ("mpi-inf-3dhp", True, "ground-truth projection"),  # SPIN's ground-truth part
])
def test_tables_and_results_name_the_2d_input(tiny, tmp_path, name, with_part, input_2d):
  """The printed table and the results JSON say what the fit saw, for every SPIN protocol."""
  smpl_dir, model, reg, problem = tiny
  rng = np.random.default_rng(5)
  theta = np.concatenate([random_theta(rng, B, 0.3), np.zeros((B, 10))], -1)
  path = tmp_path / "data.npz"
  write_spin_npz(path, np.asarray(keypoints(model, theta[:, :72], theta[:, 72:], reg)),
                 with_part=with_part)
  data = protocols.prepare(problem, name, str(path), smpl_dir, log=lambda m: None)
  assert spin.load(path).keypoints_source == ("part" if with_part else "S projected")
  results = {"dataset": name, "num_samples": len(data), "num_steps": 1, "training_window": 1,
             "keypoints": "coco18", "input_2d": data.input_2d,
             "protocol": {**data.description, "metrics": list(data.metrics)},
             "methods": {"lgd": {k: [1.0, 2.0] for k in data.metrics}}}
  assert json.loads(json.dumps(results))["input_2d"] == input_2d
  assert json.loads(json.dumps(results))["protocol"]["input_2d"] == input_2d
  lines = protocols.table(results).splitlines()
  assert lines[1].startswith(f"2D input: {input_2d}") and "detected" in lines[1]


def _normalised(pix):
  """The unit box of all points, computed independently of lgd_jax.geometry.camera."""
  lo, hi = pix.min(axis=-2, keepdims=True), pix.max(axis=-2, keepdims=True)
  return (pix - 0.5 * (lo + hi)) / (hi - lo).max(axis=-1, keepdims=True) + 0.5


# ---------------------------------------------------------------------------------------------
# Errors.


def test_regressor_missing_or_for_another_mesh(tiny, tmp_path):
  _, model, _, problem = tiny
  path = tmp_path / "h36m_valid_protocol2.npz"
  write_spin_npz(path, np.random.default_rng(0).normal(size=(2, 17, 3)))
  with pytest.raises(protocols.ProtocolError) as e:
    protocols.prepare(problem, "h36m-p2", str(path), tmp_path)
  msg = str(e.value)
  assert "\n" not in msg and "J_regressor_h36m.npy" in msg and "SPIN" in msg
  assert str(tmp_path) in msg
  write_regressor(tmp_path / "J_regressor_h36m.npy", 6890)
  with pytest.raises(protocols.ProtocolError, match="6890 vertex columns.*120 vertices"):
    protocols.prepare(problem, "h36m-p2", str(path), tmp_path)


def test_fit_translation_needs_intrinsics(tiny):
  _, model, _, _ = tiny
  problem = objective.make_problem(model, "coco18", fit_translation=True)
  with pytest.raises(protocols.ProtocolError, match="intrinsics"):
    protocols.problem_inputs(problem, np.zeros((1, 18, 2)), np.ones((1, 18)), None, "x.npz")
  k = np.array([[[1000.0, 0, 500], [0, 1000.0, 400], [0, 0, 1]]])
  out, conf = protocols.problem_inputs(problem, np.full((1, 18, 2), 600.0), np.ones((1, 18)), k)
  np.testing.assert_allclose(out[0, 0], [0.1, 0.2], atol=1e-6)
  np.testing.assert_array_equal(conf, 1.0)


# ---------------------------------------------------------------------------------------------
# End to end on the tiny checkpoint (free 13718-vertex model, COCO-18).


@pytest.fixture(scope="module")
def restored(tiny_checkpoint):
  return restore.restore(tiny_checkpoint)


def _zero_method(problem, kp2d, conf, num_steps):
  return jnp.zeros((num_steps + 1, kp2d.shape[0], problem.num_params), kp2d.dtype)


def _check_layout(results, restored, metrics):
  assert results["num_steps"] == NUM_STEPS and results["training_window"] == 2
  assert results["checkpoint_step"] == restored.step and results["keypoints"] == "coco18"
  assert results["protocol"]["metrics"] == list(metrics)
  for method in ("lgd", "zero"):
    vals = results["methods"][method]
    assert set(vals) == set(metrics)
    for k, v in vals.items():
      assert len(v) == NUM_STEPS + 1 and np.all(np.isfinite(v)), (method, k)
  # LGD starts from the zero pose (this config): its step 0 is the zero method's.
  for k in metrics:
    np.testing.assert_allclose(results["methods"]["lgd"][k][0], results["methods"]["zero"][k][0],
                               rtol=1e-4, atol=1e-4, err_msg=k)
  json.dumps(results)
  text = protocols.table(results)
  assert "learned (ours)" in text and "zero" in text


@pytest.mark.slow
def test_evaluate_3dpw_end_to_end(restored, fake_3dpw):
  root, smpl_dir, _, truth = fake_3dpw
  logs = []
  results = protocols.evaluate_dataset(restored, f"3dpw:{root}", NUM_STEPS, batch_size=4,
                                       log=logs.append, extra_methods={"zero": _zero_method},
                                       smpl_dir=smpl_dir)
  assert results["dataset"] == "3dpw"
  assert results["num_samples"] == sum(int(t[3].sum()) for t in truth)
  _check_layout(results, restored, ("mpjpe_mm", "pa_mpjpe_mm", "reproj"))
  notes = " ".join(results["protocol"]["notes"])
  assert "no PVE" in notes and "J_regressor_h36m.npy" in notes
  assert "MPJPE" in protocols.table(results) and "PA-MPJPE" in protocols.table(results)
  assert results["input_2d"] == results["protocol"]["input_2d"] == "detections (OpenPose)"
  assert protocols.table(results).splitlines()[1] == "2D input: detections (OpenPose)"
  assert any("3dpw samples" in line for line in logs)


def test_max_samples_takes_an_evenly_spaced_subset(fake_3dpw):
  root, smpl_dir, models, _ = fake_3dpw
  problem = objective.make_problem(models["male"], "coco18")
  full = protocols.prepare(problem, "3dpw", str(root), smpl_dir, log=lambda m: None)
  part = protocols.prepare(problem, "3dpw", str(root), smpl_dir, max_samples=3,
                           log=lambda m: None)
  keep = [0, (len(full) - 1) // 2, len(full) - 1]
  assert len(part) == 3
  np.testing.assert_array_equal(part.gt["joints"], full.gt["joints"][keep])
  np.testing.assert_array_equal(part.kp2d, full.kp2d[keep])


@pytest.mark.slow
def test_evaluate_mpi_end_to_end(restored, tmp_path):
  model = restored.problem.model
  write_regressor(tmp_path / "J_regressor_h36m.npy", model.num_verts)
  reg = body.regressor_keypoint_set(tmp_path / "J_regressor_h36m.npy")
  rng = np.random.default_rng(4)
  theta = np.concatenate([random_theta(rng, 5, 0.3), np.zeros((5, 10))], -1)
  path = tmp_path / "mpi_inf_3dhp_valid.npz"
  write_spin_npz(path, np.asarray(keypoints(model, theta[:, :72], theta[:, 72:], reg)))
  results = protocols.evaluate_dataset(restored, f"mpi-inf-3dhp:{path}", NUM_STEPS,
                                       batch_size=8, log=lambda m: None,
                                       extra_methods={"zero": _zero_method}, smpl_dir=tmp_path)
  _check_layout(results, restored, protocols.METRICS["mpi"])
  assert results["num_samples"] == 5 and results["protocol"]["joints"] == 17
  assert "PCK" in protocols.table(results) and "AUC" in protocols.table(results)
  assert results["input_2d"] == "ground-truth projection"
  assert "2D input: ground-truth projection" in protocols.table(results)


def test_evaluate_rejects_pass_through_specs():
  with pytest.raises(protocols.ProtocolError, match="heldout.evaluate"):
    protocols.evaluate_dataset(None, "amass:/d")
