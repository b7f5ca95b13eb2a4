"""The functional body model: forward pass, keypoint fast path, transforms and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lgd_jax import body
from lgd_jax.body import keypoint_sets
from lgd_jax.geometry import rotations

# float32 round-off on metre-scale coordinates.
F32_TOL = 2e-5
# float64 agreement with the independent NumPy reference.
F64_TOL = 1e-10
# check_grads tolerance in float64.
GRAD_TOL = 1e-5

ALL_SETS = ["smpl24", "coco17", "coco18", "body25"]


@pytest.fixture(scope="module")
def model():
  return body.tiny_model(num_verts=120)


@pytest.fixture(scope="module")
def model64():
  with jax.enable_x64(True):
    return body.tiny_model(num_verts=60, num_betas=4, dtype=np.float64)


def _random_params(key, batch, num_betas=10, scale=0.5, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(key, 3)
  return (jax.random.normal(k1, (batch, 72), dtype) * scale,
          jax.random.normal(k2, (batch, num_betas), dtype),
          jax.random.normal(k3, (batch, 3), dtype))


def _reference_lbs(arrays, pose, betas, transl):
  """smplx's lbs transcribed in float64 NumPy with 4x4 matrices, one sample at a time."""
  v_shaped = arrays["v_template"] + arrays["shapedirs"][..., :betas.size] @ betas
  joints = arrays["J_regressor"] @ v_shaped
  aa = pose.reshape(24, 3)
  rots = []
  for a in aa:
    t = np.linalg.norm(a)
    if t == 0:
      rots.append(np.eye(3))
      continue
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]]) / t
    rots.append(np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k)
  rots = np.stack(rots)
  feature = (rots[1:] - np.eye(3)).reshape(-1)
  v_posed = v_shaped + arrays["posedirs"] @ feature
  parents = body.SMPL_PARENTS
  chain = []
  for j in range(24):
    local = np.eye(4)
    local[:3, :3] = rots[j]
    local[:3, 3] = joints[j] - (joints[parents[j]] if j else 0)
    chain.append(local if j == 0 else chain[parents[j]] @ local)
  chain = np.stack(chain)
  posed_joints = chain[:, :3, 3]
  rel = chain.copy()
  rel[:, :3, 3] -= np.einsum("jab,jb->ja", chain[:, :3, :3], joints)
  t_vert = np.einsum("vk,kab->vab", arrays["weights"], rel)
  verts = np.einsum("vab,vb->va", t_vert[:, :3, :3], v_posed) + t_vert[:, :3, 3]
  return verts + transl, posed_joints + transl


def test_forward_matches_numpy_reference():
  arrays = body.synthetic_smpl_arrays(num_verts=300, num_betas=10, seed=4)
  with jax.enable_x64(True):
    m = body.make_model(arrays["v_template"], arrays["shapedirs"], arrays["posedirs"],
                        arrays["J_regressor"], arrays["weights"], arrays["f"],
                        landmarks=arrays["landmarks"], dtype=jnp.float64)
    pose, betas, transl = _random_params(jax.random.PRNGKey(0), 3, dtype=jnp.float64)
    pose = pose.at[0].set(0.0)  # exactly the zero pose
    out = body.forward(m, pose, betas, transl)
    for b in range(3):
      verts, joints = _reference_lbs(arrays, np.asarray(pose[b]), np.asarray(betas[b]),
                                     np.asarray(transl[b]))
      np.testing.assert_allclose(out.vertices[b], verts, atol=F64_TOL)
      np.testing.assert_allclose(out.joints[b], joints, atol=F64_TOL)


def test_zero_pose_is_the_shaped_template(model):
  betas = jax.random.normal(jax.random.PRNGKey(2), (2, 10))
  out = body.forward(model, jnp.zeros((2, 72)), betas)
  shaped = model.v_template + jnp.einsum("bk,vck->bvc", betas, model.shapedirs)
  np.testing.assert_allclose(out.vertices, shaped, atol=F32_TOL)
  np.testing.assert_allclose(out.joints, jnp.einsum("jv,bvc->bjc", model.J_regressor, shaped),
                             atol=F32_TOL)


@pytest.mark.slow  # jit/vmap agreement is also exercised by every batched test
def test_jit_vmap_and_batch_shapes_agree(model):
  pose, betas, transl = _random_params(jax.random.PRNGKey(1), 6)
  batched = body.forward(model, pose, betas, transl)
  jitted = jax.jit(body.forward)(model, pose, betas, transl)
  mapped = jax.vmap(body.forward, in_axes=(None, 0, 0, 0))(model, pose, betas, transl)
  for out in (jitted, mapped):
    np.testing.assert_allclose(out.vertices, batched.vertices, atol=F32_TOL)
    np.testing.assert_allclose(out.joints, batched.joints, atol=F32_TOL)
  # Extra leading dimensions and a single unbatched sample.
  nested = body.forward(model, pose.reshape(2, 3, 72), betas.reshape(2, 3, 10),
                        transl.reshape(2, 3, 3))
  np.testing.assert_allclose(nested.vertices.reshape(batched.vertices.shape), batched.vertices,
                             atol=F32_TOL)
  single = body.forward(model, pose[0], betas[0], transl[0])
  np.testing.assert_allclose(single.joints, batched.joints[0], atol=F32_TOL)


def test_fewer_betas_use_the_first_components(model):
  pose, betas, _ = _random_params(jax.random.PRNGKey(5), 2)
  few = body.forward(model, pose, betas[:, :4])
  padded = body.forward(model, pose, betas.at[:, 4:].set(0.0))
  np.testing.assert_allclose(few.vertices, padded.vertices, atol=F32_TOL)
  with pytest.raises(ValueError, match="betas has 11 components"):
    body.forward(model, pose, jnp.zeros((2, 11)))
  with pytest.raises(ValueError, match="expected 72"):
    body.forward(model, jnp.zeros((2, 69)), betas)


def test_root_rotation_rotates_the_body_about_the_root(model):
  pose, betas, _ = _random_params(jax.random.PRNGKey(7), 1)
  rest = body.forward(model, pose.at[:, :3].set(0.0), betas)
  root_aa = jnp.array([0.4, -1.2, 0.3])
  turned = body.forward(model, pose.at[:, :3].set(root_aa), betas)
  rot = rotations.axis_angle_to_matrix(root_aa)[None]
  root = rest.joints[:, :1]
  expected = jnp.einsum("bij,bvj->bvi", rot, rest.vertices - root) + root
  np.testing.assert_allclose(turned.vertices, expected, atol=F32_TOL)


@pytest.mark.parametrize("name", ALL_SETS)
def test_keypoint_fast_path_equals_full_forward(model, name):
  pose, betas, transl = _random_params(jax.random.PRNGKey(3), 5)
  out = body.forward(model, pose, betas, transl)
  kp = jax.jit(body.keypoints, static_argnums=4)(model, pose, betas, transl, name)
  kpset = body.get_keypoint_set(name)
  landmarks = dict(model.landmarks)
  expected = []
  for kp_name in kpset.names:
    joint = {"mid_hip": "pelvis"}.get(kp_name, kp_name)
    if joint in body.JOINT_NAMES:
      expected.append(out.joints[:, body.JOINT_NAMES.index(joint)])
    else:
      expected.append(out.vertices[:, landmarks[kp_name]])
  assert kp.shape == (5, len(kpset), 3)
  np.testing.assert_allclose(kp, jnp.stack(expected, 1), atol=F32_TOL)


def test_official_coco18_order_on_smpl_layout():
  # The official code's SMPL_TO_COCO map into smplx's 45 joints (24 + nose, eyes, ears, ...).
  smpl_to_coco18 = [24, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28]
  smpl_to_body25 = [24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30,
                    31, 32, 33, 34]
  extra = ["nose", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe",
           "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
  names45 = list(body.JOINT_NAMES) + extra
  coco18 = [names45[i] for i in smpl_to_coco18]
  assert tuple(coco18) == keypoint_sets.COCO18_NAMES
  body25 = [names45[i] for i in smpl_to_body25]
  body25[8] = "mid_hip"  # OpenPose's MidHip is SMPL's pelvis
  assert tuple(body25) == keypoint_sets.BODY25_NAMES


def test_regressor_keypoints(model, tmp_path):
  rng = np.random.default_rng(0)
  reg = np.zeros((17, model.num_verts))
  for k in range(17):
    cols = rng.choice(model.num_verts, 6, replace=False)
    reg[k, cols] = rng.uniform(0.1, 1.0, 6)
  reg /= reg.sum(1, keepdims=True)
  path = tmp_path / "J_regressor_h36m.npy"
  np.save(path, reg)
  kpset = body.regressor_keypoint_set(path)
  assert kpset.names == keypoint_sets.H36M17_NAMES
  pose, betas, transl = _random_params(jax.random.PRNGKey(9), 4)
  kp = body.keypoints(model, pose, betas, transl, kpset)
  full = body.forward(model, pose, betas, transl).vertices
  np.testing.assert_allclose(kp, jnp.einsum("kv,bvc->bkc", reg, full), atol=F32_TOL)
  plan = keypoint_sets.resolve(kpset, model)
  assert plan.vertex_ids.size <= 17 * 6  # only the regressor's support is skinned

  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((17, model.num_verts + 1)))
  with pytest.raises(ValueError, match="has 121 vertex columns"):
    body.keypoints(model, pose, betas, transl, body.regressor_keypoint_set(bad))
  with pytest.raises(FileNotFoundError, match="J_regressor_h36m.npy"):
    body.regressor_keypoint_set(tmp_path / "missing.npy")
  text = tmp_path / "text.npy"
  text.write_text("hello")
  with pytest.raises(ValueError, match="text.npy: not a NumPy"):
    body.regressor_keypoint_set(text)


def test_keypoint_errors(model):
  pose = jnp.zeros((1, 72))
  with pytest.raises(KeyError, match="unknown keypoint set 'coco19'"):
    body.keypoints(model, pose, jnp.zeros((1, 10)), None, "coco18".replace("8", "9"))
  bare = model.replace(landmarks=())
  with pytest.raises(ValueError, match="needs 'nose'"):
    body.keypoints(bare, pose, jnp.zeros((1, 10)), None, "coco18")
  # Joint-only sets need no landmarks.
  assert body.keypoints(bare, pose, jnp.zeros((1, 10)), None, "smpl24").shape == (1, 24, 3)


def test_keypoints_never_build_the_mesh():
  m = body.tiny_model(num_verts=997)  # a vertex count no other array has
  pose, betas, transl = _random_params(jax.random.PRNGKey(0), 8)
  jaxpr = jax.make_jaxpr(lambda p, b, t: body.keypoints(m, p, b, t, "body25"))(pose, betas, transl)
  shapes = [v.aval.shape for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars]
  assert shapes and not any(8 in s and 997 in s for s in shapes), "a batched mesh-sized array"
  full = jax.make_jaxpr(lambda p, b, t: body.forward(m, p, b, t).vertices)(pose, betas, transl)
  assert any(8 in v.aval.shape and 997 in v.aval.shape
             for eqn in full.jaxpr.eqns for v in eqn.outvars)  # the check can fail


def _fk_points(local_aa, rest_joints, parents):
  rot, pts = body.forward_kinematics(rotations.axis_angle_to_matrix(local_aa), rest_joints, parents)
  return jnp.concatenate([rot.reshape(-1), pts.reshape(-1)])


def test_check_grads_forward_kinematics(model64):
  with jax.enable_x64(True):
    aa = jax.random.normal(jax.random.PRNGKey(0), (24, 3), jnp.float64) * 0.6
    aa = aa.at[5].set(0.0)  # a joint exactly at the zero rotation
    rest = model64.j_template
    check_grads(lambda a, j: _fk_points(a, j, model64.parents), (aa, rest), order=1,
                modes=("fwd", "rev"), atol=GRAD_TOL, rtol=GRAD_TOL)


# float64 check_grads through the skinned mesh: about 40 s each, in the slow run.
@pytest.mark.slow
@pytest.mark.parametrize("at_zero", [False, True])
def test_check_grads_skinned_mesh_and_keypoints(model64, at_zero):
  with jax.enable_x64(True):
    pose, betas, transl = _random_params(jax.random.PRNGKey(1), 2, num_betas=4,
                                         dtype=jnp.float64)
    if at_zero:
      pose = jnp.zeros_like(pose)
    f_mesh = lambda p, b, t: body.forward(model64, p, b, t).vertices
    check_grads(f_mesh, (pose, betas, transl), order=1, modes=("fwd", "rev"), atol=GRAD_TOL,
                rtol=GRAD_TOL)
    f_kp = lambda p, b, t: body.keypoints(model64, p, b, t, "body25")
    check_grads(f_kp, (pose, betas, transl), order=1, modes=("fwd", "rev"), atol=GRAD_TOL,
                rtol=GRAD_TOL)
    # The keypoint gradient equals the gradient through the full mesh.
    idx = [dict(model64.landmarks)["nose"]]
    g_fast = jax.grad(
        lambda p: body.keypoints(model64, p, betas, transl, "coco18")[:, 0].sum())(pose)
    g_full = jax.grad(lambda p: f_mesh(p, betas, transl)[:, idx].sum())(pose)
    np.testing.assert_allclose(g_fast, g_full, atol=1e-10)


def test_grad_through_the_model_arrays(model):
  # The model is a pytree: gradients w.r.t. its arrays work (e.g. for fitting a template).
  pose, betas, _ = _random_params(jax.random.PRNGKey(4), 2)
  g = jax.grad(lambda m: body.forward(m, pose, betas).vertices.sum(), allow_int=True)(model)
  assert g.v_template.shape == model.v_template.shape
  assert np.isfinite(np.asarray(g.posedirs)).all() and float(jnp.abs(g.v_template).sum()) > 0



def test_h36m17_by_name_needs_the_user_supplied_regressor(model):
  if keypoint_sets.DEFAULT_H36M_REGRESSOR.exists():
    pytest.skip("a J_regressor_h36m.npy is installed here")
  with pytest.raises(FileNotFoundError, match="third_party/smpl/J_regressor_h36m.npy"):
    body.keypoints(model, jnp.zeros((1, 72)), jnp.zeros((1, 10)), None, "h36m17")
