"""The SMPL forward pass (smplx's ``lbs``) and the keypoint fast path, as pure functions.

All functions take per-sample or batched inputs: any leading batch dimensions are carried through,
and ``vmap`` over them works too. Their products run at full float32 precision whatever
``jax_default_matmul_precision`` says (:func:`lgd_jax.geometry.numerics.full_precision`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from lgd_jax.body import keypoint_sets
from lgd_jax.body.model import BodyModel
from lgd_jax.geometry import rotations
from lgd_jax.geometry.numerics import full_precision


class BodyOutput(NamedTuple):
  """Result of :func:`forward`.

  Attributes:
    vertices: (..., V, 3) posed, translated mesh vertices.
    joints: (..., J, 3) posed, translated joints.
    rotations: (..., J, 3, 3) global (world) rotation of every joint.
  """

  vertices: jnp.ndarray
  joints: jnp.ndarray
  rotations: jnp.ndarray


def _mat_mat(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  # A batched dot: measured faster than broadcast-multiply-reduce for the 3x3 chain on XLA:CPU
  # (forward kinematics at batch 1024: 0.7 ms against 9 ms).
  return a @ b


def _mat_vec(a: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  # Matrix-vector products fuse well as multiply-reduce; as dots they measured no faster.
  return jnp.sum(a * v[..., None, :], axis=-1)


@full_precision
def forward_kinematics(local_rot: jnp.ndarray, rest_joints: jnp.ndarray,
                       parents: tuple[int, ...]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Chains joint rotations down the kinematic tree.

  Args:
    local_rot: (..., J, 3, 3) rotation of every joint relative to its parent.
    rest_joints: (..., J, 3) joint positions in the rest pose.
    parents: parent of every joint, -1 for the root; parents precede children.

  Returns:
    global_rot: (..., J, 3, 3) world rotation of every joint.
    posed_joints: (..., J, 3) world position of every joint (root stays at its rest position).
  """
  # Joint by joint, unrolled at trace time. Walking the tree level by level (9 levels instead of
  # 23 joints, with gathers and scatters) measured slower on XLA:CPU: 3.6 ms against 3.0 ms forward
  # and 8.2 ms against 4.1 ms with the gradient, at batch 1024.
  rest_joints = jnp.broadcast_to(rest_joints, local_rot.shape[:-1])
  # Per-joint pieces by one split each, not by indexing: the gradient of a split is one
  # concatenation, where that of J index operations is J zero-padded copies summed (at batch 1024
  # a 3 ms pass per gradient on XLA:CPU).
  local = _unstack(local_rot, -3)
  rest = _unstack(rest_joints, -2)
  rots = [local[0]]
  locs = [rest[0]]
  for j in range(1, len(parents)):
    p = parents[j]
    rots.append(_mat_mat(rots[p], local[j]))
    locs.append(locs[p] + _mat_vec(rots[p], rest[j] - rest[p]))
  return jnp.stack(rots, -3), jnp.stack(locs, -2)


def _unstack(x: jnp.ndarray, axis: int) -> list[jnp.ndarray]:
  """The slices of ``x`` along ``axis`` by one split (``jnp.split`` is ``lax.split`` in current
  JAX, whose transpose concatenates; older JAX slices, which is correct but slower)."""
  axis = axis % x.ndim
  return [jnp.squeeze(part, axis) for part in jnp.split(x, x.shape[axis], axis=axis)]


def _prepare(model: BodyModel, pose: jnp.ndarray, betas: jnp.ndarray):
  """Rotations, pose feature and rest joints shared by the full and the keypoint forward."""
  num_joints = model.num_joints
  if pose.shape[-1] != 3 * num_joints:
    raise ValueError(f"pose has {pose.shape[-1]} values per sample, expected {3 * num_joints} "
                     "(axis-angle, global orientation first)")
  if betas.shape[-1] > model.num_betas:
    raise ValueError(f"betas has {betas.shape[-1]} components, model {model.name!r} has "
                     f"{model.num_betas}")
  pose = pose.astype(model.dtype)
  betas = betas.astype(model.dtype)
  local_rot = rotations.axis_angle_to_matrix(pose.reshape(pose.shape[:-1] + (num_joints, 3)))
  rest_joints = model.j_template + jnp.einsum("...b,jcb->...jc", betas,
                                              model.j_shapedirs[..., :betas.shape[-1]])
  eye = jnp.eye(3, dtype=model.dtype)
  pose_feature = (local_rot[..., 1:, :, :] - eye).reshape(local_rot.shape[:-3] + (-1,))
  return local_rot, rest_joints, pose_feature, betas


def _rest_vertices(model: BodyModel, betas: jnp.ndarray, pose_feature: jnp.ndarray,
                   ids=None) -> jnp.ndarray:
  """Template plus shape and pose blend shapes, for all vertices or the static ``ids``."""
  parts = [model.v_template, model.shapedirs[..., :betas.shape[-1]], model.posedirs]
  if ids is not None:
    parts = [part[ids] for part in parts]
  return (parts[0] + jnp.einsum("...b,vcb->...vc", betas, parts[1])
          + jnp.einsum("...p,vcp->...vc", pose_feature, parts[2]))


def _skin(weights: jnp.ndarray, global_rot: jnp.ndarray, posed_joints: jnp.ndarray,
          rest_joints: jnp.ndarray, v_posed: jnp.ndarray) -> jnp.ndarray:
  """Linear blend skinning: sum_k w_vk (R_k (v - J_k) + G_k) for (..., V, 3) rest vertices."""
  offset = posed_joints - _mat_vec(global_rot, rest_joints)  # (..., J, 3)
  affine = jnp.concatenate([global_rot, offset[..., None]], -1)  # (..., J, 3, 4)
  v_homo = jnp.concatenate([v_posed, jnp.ones_like(v_posed[..., :1])], -1)
  return jnp.einsum("vk,...kij,...vj->...vi", weights, affine, v_homo)


def _broadcast_batch(pose, betas, transl):
  batch = jnp.broadcast_shapes(pose.shape[:-1], betas.shape[:-1],
                               () if transl is None else transl.shape[:-1])
  pose = jnp.broadcast_to(pose, batch + pose.shape[-1:])
  betas = jnp.broadcast_to(betas, batch + betas.shape[-1:])
  return pose, betas


@full_precision
def forward(model: BodyModel, pose: jnp.ndarray, betas: jnp.ndarray,
            transl: jnp.ndarray | None = None) -> BodyOutput:
  """The full SMPL forward pass, identical to smplx's ``lbs`` followed by the translation.

  Args:
    model: the body model.
    pose: (..., 72) axis-angle, global orientation first.
    betas: (..., B') shape coefficients, B' <= model.num_betas (the first B' components).
    transl: optional (..., 3) translation added to vertices and joints.

  Returns:
    A :class:`BodyOutput` with (..., V, 3) vertices and (..., J, 3) joints.
  """
  pose, betas = _broadcast_batch(jnp.asarray(pose), jnp.asarray(betas), transl)
  local_rot, rest_joints, pose_feature, betas = _prepare(model, pose, betas)
  v_posed = _rest_vertices(model, betas, pose_feature)
  global_rot, joints = forward_kinematics(local_rot, rest_joints, model.parents)
  vertices = _skin(model.weights, global_rot, joints, rest_joints, v_posed)
  if transl is not None:
    transl = jnp.asarray(transl, model.dtype)[..., None, :]
    vertices, joints = vertices + transl, joints + transl
  return BodyOutput(vertices, joints, global_rot)


@full_precision
def keypoints(model: BodyModel, pose: jnp.ndarray, betas: jnp.ndarray,
              transl: jnp.ndarray | None = None,
              kpset: str | keypoint_sets.KeypointSet = "coco18") -> jnp.ndarray:
  """Keypoints of a named set without computing the mesh.

  Joints come from forward kinematics on the shape's rest joints (regressed once, at load time,
  as ``j_template + j_shapedirs @ betas``); vertex keypoints skin only the vertices they need,
  pose blend shapes included. Equal to selecting the keypoints from :func:`forward`.

  Args:
    model: the body model.
    pose: (..., 72) axis-angle, global orientation first.
    betas: (..., B') shape coefficients.
    transl: optional (..., 3) translation.
    kpset: a keypoint set or its name: "smpl24", "coco17", "coco18", "body25", "h36m17".

  Returns:
    (..., K, 3) keypoints.
  """
  plan = keypoint_sets.resolve(kpset, model)
  pose, betas = _broadcast_batch(jnp.asarray(pose), jnp.asarray(betas), transl)
  local_rot, rest_joints, pose_feature, betas = _prepare(model, pose, betas)
  global_rot, joints = forward_kinematics(local_rot, rest_joints, model.parents)
  points = joints
  if plan.vertex_ids.size:
    ids = plan.vertex_ids
    v_rest = _rest_vertices(model, betas, pose_feature, ids)
    vertex_kps = _skin(model.weights[ids], global_rot, joints, rest_joints, v_rest)
    if plan.vertex_weights is not None:
      vertex_kps = jnp.einsum("ks,...sc->...kc", jnp.asarray(plan.vertex_weights, model.dtype),
                              vertex_kps)
    points = jnp.concatenate([joints, vertex_kps], -2)
  points = points[..., plan.order, :]
  if transl is not None:
    points = points + jnp.asarray(transl, model.dtype)[..., None, :]
  return points
