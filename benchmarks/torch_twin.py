"""A PyTorch twin of lgd_jax's training step and inference, for the side-by-side benchmark.

The same computation as ``lgd_jax.train.steps.train_step`` and ``lgd_jax.fitting.lgd.fit``,
written the way a
PyTorch user would write it:

* the update networks of :mod:`lgd_jax.fitting.networks` (``PaperUpdateNet``: blocks of Linear,
  BatchNorm
  (momentum 0.1, eps 1e-5), PReLU (one slope, 0.25), Dropout and a linear output;
  ``OfficialUpdateNet``: one residual MLP per parameter group, outputs concatenated), and the
  learned initial guess;
* the SMPL-layout keypoints by the algorithm of ``lgd_jax.body.lbs.keypoints``: rest joints from the
  precomputed regressor arrays, forward kinematics joint by joint, and skinning of only the
  keypoint vertices (pose blend shapes included); ``body="full"`` instead skins the whole mesh and
  regresses the joints from it, as smplx (and so the official LGD code) does;
* the official camera, unit-box normalisation and confidence-weighted L1 objective of
  :mod:`lgd_jax.fitting.objective`;
* the per-sample gradient ∂L/∂Θ_n as ``torch.autograd.grad`` of the summed per-sample losses
  (samples are independent), not differentiated further (the stopped gradient);
* the training loss of ``lgd_jax.train.losses.training_loss`` averaged over the steps 0..N, and
  Adam.

One known difference: ``nn.BatchNorm1d`` updates its running variance with the unbiased batch
variance, Flax with the biased one (a factor n / (n - 1), 1.001 at batch 1024). It changes neither
the training loss nor its gradient, only the running statistics used at inference.

    twin = TorchTwin.from_config(config, problem)
    twin.load_flax(variables)                       # the JAX learner's {"params", "batch_stats"}
    opt = torch.optim.Adam(twin.parameters(), lr=config.learning_rate)
    loss = twin.train_step(opt, batch)              # batch: theta, kp3d, kp2d, conf tensors
    theta = twin.infer(kp2d, conf, num_steps)       # (B, P), networks in eval mode
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from lgd_jax import build
from lgd_jax.body import keypoint_sets
from lgd_jax.body.model import NUM_POSE
from lgd_jax.fitting import objective as jobjective
from lgd_jax.geometry import camera as jcamera
from lgd_jax.train import losses

BN_MOMENTUM = 0.1  # PyTorch's convention; Flax's 0.9 decay (lgd_jax.fitting.networks.BN_MOMENTUM)
BN_EPSILON = 1e-5
PRELU_INIT = 0.25
# Below this squared angle Rodrigues' coefficients switch to their Taylor series
# (lgd_jax.geometry.rotations._SMALL_ANGLE_SQ).
SMALL_ANGLE_SQ = 1e-2


# ----------------------------------------------------------------------------------------------
# Networks.


class DenseBlock(nn.Module):
  """Linear, BatchNorm, PReLU, Dropout."""

  def __init__(self, d_in: int, d_out: int, dropout: float):
    super().__init__()
    self.linear = nn.Linear(d_in, d_out)
    self.bn = nn.BatchNorm1d(d_out, eps=BN_EPSILON, momentum=BN_MOMENTUM)
    self.act = nn.PReLU(1, init=PRELU_INIT)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    return self.drop(self.act(self.bn(self.linear(x))))


class PaperNet(nn.Module):
  """``num_blocks`` DenseBlocks of width ``hidden`` and a linear output."""

  def __init__(self, d_in: int, out: int, hidden: int, num_blocks: int, dropout: float):
    super().__init__()
    self.blocks = nn.ModuleList(DenseBlock(d_in if i == 0 else hidden, hidden, dropout)
                                for i in range(num_blocks))
    self.out = nn.Linear(hidden, out)

  def forward(self, x):
    for block in self.blocks:
      x = block(x)
    return self.out(x)


class ResidualMLP(nn.Module):
  """A DenseBlock, ``num_residual`` residual pairs of DenseBlocks, a linear output."""

  def __init__(self, d_in: int, out: int, hidden: int, num_residual: int, dropout: float):
    super().__init__()
    self.blocks = nn.ModuleList(DenseBlock(d_in if i == 0 else hidden, hidden, dropout)
                                for i in range(1 + 2 * num_residual))
    self.out = nn.Linear(hidden, out)

  def forward(self, x):
    x = self.blocks[0](x)
    for r in range(1, len(self.blocks), 2):
      x = x + self.blocks[r + 1](self.blocks[r](x))
    return self.out(x)


class OfficialNet(nn.Module):
  """One :class:`ResidualMLP` head per parameter group; outputs concatenated."""

  def __init__(self, d_in: int, out_sizes, hidden: int, num_residual: int, dropout: float):
    super().__init__()
    self.heads = nn.ModuleList(ResidualMLP(d_in, n, hidden, num_residual, dropout)
                               for n in out_sizes)

  def forward(self, x):
    return torch.cat([h(x) for h in self.heads], -1)


def _load_block(block: DenseBlock, p: dict, s: dict | None) -> None:
  _load_linear(block.linear, p["Dense_0"])
  block.bn.weight.copy_(_t(p["BatchNorm_0"]["scale"]))
  block.bn.bias.copy_(_t(p["BatchNorm_0"]["bias"]))
  if s is not None:
    block.bn.running_mean.copy_(_t(s["BatchNorm_0"]["mean"]))
    block.bn.running_var.copy_(_t(s["BatchNorm_0"]["var"]))
  block.act.weight.copy_(_t(p["PReLU_0"]["slope"]).reshape(1))


def _load_linear(linear: nn.Linear, p: dict) -> None:
  linear.weight.copy_(_t(p["kernel"]).T)
  linear.bias.copy_(_t(p["bias"]))


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, np.float32))


@torch.no_grad()
def load_flax_net(net: nn.Module, params: dict, stats: dict | None) -> None:
  """Copies a Flax ``PaperUpdateNet``/``OfficialUpdateNet``'s variables into its twin."""
  if isinstance(net, OfficialNet):
    for i, head in enumerate(net.heads):
      load_flax_net(head, params[f"head{i}"], None if stats is None else stats[f"head{i}"])
    return
  for i, block in enumerate(net.blocks):
    _load_block(block, params[f"DenseBlock_{i}"],
                None if stats is None else stats[f"DenseBlock_{i}"])
  _load_linear(net.out, params["Dense_0"])


def flax_grads(net: nn.Module) -> dict:
  """The twin's parameter gradients in the layout of the Flax net's params (NumPy arrays)."""
  g = lambda t: t.grad.detach().numpy()
  if isinstance(net, OfficialNet):
    return {f"head{i}": flax_grads(h) for i, h in enumerate(net.heads)}
  out = {}
  for i, b in enumerate(net.blocks):
    out[f"DenseBlock_{i}"] = {"Dense_0": {"kernel": g(b.linear.weight).T, "bias": g(b.linear.bias)},
                              "BatchNorm_0": {"scale": g(b.bn.weight), "bias": g(b.bn.bias)},
                              "PReLU_0": {"slope": g(b.act.weight).reshape(())}}
  out["Dense_0"] = {"kernel": g(net.out.weight).T, "bias": g(net.out.bias)}
  return out


def flax_params(net: nn.Module) -> dict:
  """The twin's parameters in the layout of the Flax net's params (NumPy arrays)."""
  v = lambda t: t.detach().numpy()
  if isinstance(net, OfficialNet):
    return {f"head{i}": flax_params(h) for i, h in enumerate(net.heads)}
  out = {}
  for i, b in enumerate(net.blocks):
    out[f"DenseBlock_{i}"] = {"Dense_0": {"kernel": v(b.linear.weight).T, "bias": v(b.linear.bias)},
                              "BatchNorm_0": {"scale": v(b.bn.weight), "bias": v(b.bn.bias)},
                              "PReLU_0": {"slope": v(b.act.weight).reshape(())}}
  out["Dense_0"] = {"kernel": v(net.out.weight).T, "bias": v(net.out.bias)}
  return out


def flax_stats(net: nn.Module) -> dict:
  """The twin's BatchNorm running statistics in the layout of the Flax batch_stats."""
  if isinstance(net, OfficialNet):
    return {f"head{i}": flax_stats(h) for i, h in enumerate(net.heads)}
  return {f"DenseBlock_{i}": {"BatchNorm_0": {"mean": b.bn.running_mean.numpy().copy(),
                                              "var": b.bn.running_var.numpy().copy()}}
          for i, b in enumerate(net.blocks)}


# ----------------------------------------------------------------------------------------------
# The body model's keypoints, the camera and the objective.


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
  """Rodrigues' formula, exact (value and gradient) at the zero rotation, as
  lgd_jax.geometry.rotations."""
  x, y, z = aa[..., 0], aa[..., 1], aa[..., 2]
  xx, yy, zz = x * x, y * y, z * z
  theta_sq = xx + yy + zz
  small = theta_sq < SMALL_ANGLE_SQ
  safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
  theta = torch.sqrt(safe_sq)
  half = 0.5 * theta
  a = torch.where(small, 1.0 - theta_sq / 6.0 * (1.0 - theta_sq / 20.0 * (1.0 - theta_sq / 42.0)),
                  torch.sin(theta) / theta)
  b = torch.where(small, 0.5 - theta_sq / 24.0 * (1.0 - theta_sq / 30.0 * (1.0 - theta_sq / 56.0)),
                  0.5 * torch.square(torch.sin(half) / half))
  xy, xz, yz = x * y, x * z, y * z
  rows = [
      [1.0 - b * (yy + zz), b * xy - a * z, b * xz + a * y],
      [b * xy + a * z, 1.0 - b * (xx + zz), b * yz - a * x],
      [b * xz - a * y, b * yz + a * x, 1.0 - b * (xx + yy)],
  ]
  return torch.stack([torch.stack(r, -1) for r in rows], -2)


class TorchBody(nn.Module):
  """An lgd_jax :class:`~lgd_jax.body.BodyModel` and keypoint set as torch buffers.

  Args:
    model: the JAX body model.
    kpset: keypoint set name.
    full: skin every vertex and regress the joints from the mesh (smplx's ``lbs``, as the
      official code does), instead of the keypoint fast path.
  """

  def __init__(self, model, kpset: str = "coco18", full: bool = False):
    super().__init__()
    plan = keypoint_sets.resolve(kpset, model)
    if plan.vertex_weights is not None:
      raise NotImplementedError(f"keypoint set {kpset!r}: regressor sets are not in the twin")
    self.parents = tuple(model.parents)
    self.full = full
    arr = lambda x: torch.from_numpy(np.array(x, np.float32))
    ids = np.asarray(plan.vertex_ids, np.int64)
    self.register_buffer("order", torch.from_numpy(np.asarray(plan.order, np.int64)))
    self.register_buffer("eye", torch.eye(3))
    if full:
      self.register_buffer("v_template", arr(model.v_template))
      self.register_buffer("shapedirs", arr(model.shapedirs))
      # smplx's layout: (207, V * 3), a plain matmul with the pose feature.
      posedirs = np.array(model.posedirs, np.float32)
      self.register_buffer("posedirs", torch.from_numpy(
          posedirs.reshape(-1, posedirs.shape[-1]).T.copy()))
      self.register_buffer("J_regressor", arr(model.J_regressor))
      self.register_buffer("weights", arr(model.weights))
      self.register_buffer("ids", torch.from_numpy(ids))
    else:
      self.register_buffer("j_template", arr(model.j_template))
      self.register_buffer("j_shapedirs", arr(model.j_shapedirs))
      self.register_buffer("v_template", arr(np.asarray(model.v_template)[ids]))
      self.register_buffer("shapedirs", arr(np.asarray(model.shapedirs)[ids]))
      self.register_buffer("posedirs", arr(np.asarray(model.posedirs)[ids]))
      self.register_buffer("weights", arr(np.asarray(model.weights)[ids]))

  def _kinematics(self, local_rot, rest_joints):
    rots = [local_rot[:, 0]]
    locs = [rest_joints[:, 0]]
    for j in range(1, len(self.parents)):
      p = self.parents[j]
      rots.append(rots[p] @ local_rot[:, j])
      locs.append(locs[p] + (rots[p] @ (rest_joints[:, j] - rest_joints[:, p])[..., None])[..., 0])
    return torch.stack(rots, 1), torch.stack(locs, 1)

  @staticmethod
  def _skin(weights, global_rot, joints, rest_joints, v_rest):
    offset = joints - (global_rot @ rest_joints[..., None])[..., 0]
    affine = torch.cat([global_rot, offset[..., None]], -1)  # (B, J, 3, 4)
    per_vertex = (weights @ affine.flatten(2)).unflatten(-1, (3, 4))  # (B, V, 3, 4)
    return (per_vertex[..., :3] @ v_rest[..., None])[..., 0] + per_vertex[..., 3]

  def forward(self, pose: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """(B, 72), (B, nb) -> (B, K, 3) keypoints (no translation)."""
    b = pose.shape[0]
    local_rot = axis_angle_to_matrix(pose.reshape(b, -1, 3))
    pose_feature = (local_rot[:, 1:] - self.eye).reshape(b, -1)
    nb = betas.shape[-1]
    if self.full:
      v_shaped = self.v_template + torch.einsum("bl,vcl->bvc", betas, self.shapedirs[..., :nb])
      rest_joints = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)
      v_rest = v_shaped + (pose_feature @ self.posedirs).reshape(b, -1, 3)
      global_rot, joints = self._kinematics(local_rot, rest_joints)
      verts = self._skin(self.weights, global_rot, joints, rest_joints, v_rest)
      vertex_kps = verts[:, self.ids]
    else:
      rest_joints = self.j_template + torch.einsum("bl,jcl->bjc", betas,
                                                   self.j_shapedirs[..., :nb])
      global_rot, joints = self._kinematics(local_rot, rest_joints)
      v_rest = (self.v_template + torch.einsum("bl,vcl->bvc", betas, self.shapedirs[..., :nb])
                + torch.einsum("bp,vcp->bvc", pose_feature, self.posedirs))
      vertex_kps = self._skin(self.weights, global_rot, joints, rest_joints, v_rest)
    return torch.cat([joints, vertex_kps], 1)[:, self.order]


def normalize_unit_box(points: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
  """lgd_jax.geometry.camera.normalize_unit_box: the visible joints' box centred at 0.5, longer
  side 1."""
  vis = (conf >= jcamera.CONFIDENCE_THRESHOLD)[..., None]
  big = torch.finfo(points.dtype).max
  lo = torch.where(vis, points, big).amin(-2, keepdim=True)
  hi = torch.where(vis, points, -big).amax(-2, keepdim=True)
  any_visible = vis.any(-2, keepdim=True)
  lo = torch.where(any_visible, lo, 0.0)
  hi = torch.where(any_visible, hi, 0.0)
  scale = (hi - lo).amax(-1, keepdim=True)
  scale = torch.where(scale > 0, scale, 1.0)
  return torch.where(vis, (points - 0.5 * (lo + hi)) / scale + 0.5, 0.5)


class Objective(nn.Module):
  """The re-projection objective of :mod:`lgd_jax.fitting.objective` (no translation, unit box)."""

  def __init__(self, problem, full_body: bool = False):
    super().__init__()
    if problem.fit_translation:
      raise NotImplementedError("the twin covers fit_translation=False (the benchmark's configs)")
    self.body = TorchBody(problem.model, problem.kpset, full_body)
    self.num_betas = problem.num_betas
    self.l1 = problem.loss == "l1"
    cam = problem.camera
    self.register_buffer("rotation", _t(cam.rotation))
    self.register_buffer("translation", _t(cam.translation))
    self.register_buffer("focal", _t(cam.focal))
    self.register_buffer("center", _t(cam.center))

  def forward(self, theta, kp2d, conf):
    """Per-sample loss (B,), keypoints (B, K, 3) and their normalised 2D image (B, K, 2)."""
    kp3d = self.body(theta[:, :NUM_POSE], theta[:, NUM_POSE:NUM_POSE + self.num_betas])
    cam = kp3d @ self.rotation.T + self.translation
    pix = cam[..., :2] / cam[..., 2:3] * self.focal + self.center
    pred = normalize_unit_box(pix, conf)
    diff = pred - kp2d
    err = diff.abs() if self.l1 else diff.square()
    return (conf[..., None] * err).mean((1, 2)), kp3d, pred


# ----------------------------------------------------------------------------------------------
# The learned optimiser.


class Trajectory(NamedTuple):
  """Per-step states, stacked over the steps 0..M: theta (M+1, B, P), loss (M+1, B),
  kp3d (M+1, B, K, 3), kp2d (M+1, B, K, 2)."""

  theta: torch.Tensor
  loss: torch.Tensor
  kp3d: torch.Tensor
  kp2d: torch.Tensor


class TorchTwin(nn.Module):
  """The learned optimiser of an lgd_jax config: networks, objective, fit and train step.

  Args:
    problem: the lgd_jax :class:`~lgd_jax.fitting.objective.Problem` (model, camera, keypoint set).
    variant: "paper" or "official" (the update network).
    hidden, num_blocks, num_residual, dropout: network sizes, as ``config.model``.
    features: the update network's inputs (names of ``lgd_jax.fitting.lgd.FEATURES``), in order.
    output_scale, grad_scale: as ``lgd_jax.fitting.lgd.Learner``.
    learned_init: predict Θ_0 from the keypoints (official) instead of starting at zero.
    loss_weights: the training loss's weights {"kp2d", "kp3d", "pose", "betas"}.
    full_body: skin the whole mesh for the keypoints (the official code's approach).
  """

  def __init__(self, problem, variant: str, hidden: int, num_blocks: int, num_residual: int,
               dropout: float, features, output_scale: float, grad_scale: float,
               learned_init: bool, loss_weights: dict, full_body: bool = False):
    super().__init__()
    self.objective = Objective(problem, full_body)
    self.features = tuple(features)
    self.output_scale = float(output_scale)
    self.grad_scale = float(grad_scale)
    self.num_params = problem.num_params
    self.weights = {k: float(loss_weights[k]) for k in ("kp2d", "kp3d", "pose", "betas")}
    k = problem.num_keypoints
    sizes = {"kp2d": 2 * k, "conf": k, "theta": self.num_params, "pose": NUM_POSE,
             "grad": self.num_params, "grad_pose": NUM_POSE}
    d_in = sum(sizes[f] for f in self.features)
    groups = (NUM_POSE, problem.num_betas)
    if variant == "paper":
      self.update_net = PaperNet(d_in, self.num_params, hidden, num_blocks, dropout)
    elif variant == "official":
      self.update_net = OfficialNet(d_in, groups, hidden, num_residual, dropout)
    else:
      raise ValueError(f"variant: expected 'paper' or 'official', got {variant!r}")
    self.init_net = OfficialNet(2 * k, groups, hidden, num_residual, dropout) if learned_init \
        else None
    self.register_buffer("joint_weights", _t(jobjective.joint_weights(problem.kpset)))
    # What the fit calls; torch.compile replaces them (see compile_parts).
    self._objective_fn = self.objective
    self._update_fn = self.update_net
    self._init_fn = self.init_net

  @classmethod
  def from_config(cls, config, problem, full_body: bool = False) -> TorchTwin:
    """The twin of ``lgd_jax.build.make_learner(config, problem)`` and its training loss."""
    m = config.model
    if m.dtype != "float32":
      raise NotImplementedError("the twin runs float32 only")
    features = tuple(f for f in m.features.split(",") if f) if m.features else \
        build._VARIANT_FEATURES[m.variant]
    return cls(problem, m.variant, int(m.hidden), int(m.num_blocks), int(m.num_residual),
               float(m.dropout), features, float(m.output_scale), float(m.grad_scale),
               m.init == "learned", losses.loss_weights(config), full_body)

  def load_flax(self, variables: dict) -> None:
    """Copies the JAX learner's variables {"params", "batch_stats"} into the twin."""
    p, s = variables["params"], variables["batch_stats"]
    load_flax_net(self.update_net, p["update"], s["update"])
    if self.init_net is not None:
      load_flax_net(self.init_net, p["init"], s["init"])

  def compile_parts(self, **kwargs) -> None:
    """``torch.compile`` the networks and the objective (the Python step loop and the
    ``autograd.grad`` calls between them stay eager).

    AOTAutograd's donated buffers are switched off: the step differentiates the objective with
    ``retain_graph=True`` (its gradient feeds the network, then the loss backpropagates through
    the same graph), which donated buffers refuse ("This backward function was compiled with
    non-empty donated buffers which requires create_graph=False and retain_graph=False").
    """
    try:
      import torch._functorch.config as functorch_config
      functorch_config.donated_buffer = False
    except (ImportError, AttributeError):  # older torch: no donated buffers to switch off
      pass
    self._objective_fn = torch.compile(self.objective, **kwargs)
    self._update_fn = torch.compile(self.update_net, **kwargs)
    if self.init_net is not None:
      self._init_fn = torch.compile(self.init_net, **kwargs)

  def _features(self, kp2d, conf, theta, grad):
    parts = {"kp2d": lambda: kp2d.flatten(1), "conf": lambda: conf, "theta": lambda: theta,
             "pose": lambda: theta[:, :NUM_POSE], "grad": lambda: grad * self.grad_scale,
             "grad_pose": lambda: grad[:, :NUM_POSE] * self.grad_scale}
    return torch.cat([parts[f]() for f in self.features], -1)

  def fit(self, kp2d: torch.Tensor, conf: torch.Tensor, num_steps: int) -> Trajectory:
    """The N-step learned fit, differentiable w.r.t. the networks' parameters (their train/eval
    mode is the caller's choice). The gradient feature is detached: the stopped gradient."""
    b = kp2d.shape[0]
    if self.init_net is None:
      theta = kp2d.new_zeros(b, self.num_params).requires_grad_(True)
    else:
      theta = self._init_fn(kp2d.flatten(1))
    hist = []
    for _ in range(num_steps):
      loss, kp3d, pred = self._objective_fn(theta, kp2d, conf)
      grad, = torch.autograd.grad(loss.sum(), theta, retain_graph=True)
      hist.append((theta, loss, kp3d, pred))
      delta = self._update_fn(self._features(kp2d, conf, theta, grad))
      theta = theta + self.output_scale * delta
    loss, kp3d, pred = self._objective_fn(theta, kp2d, conf)
    hist.append((theta, loss, kp3d, pred))
    return Trajectory(*(torch.stack(x) for x in zip(*hist)))

  def training_loss(self, traj: Trajectory, theta, kp3d, kp2d):
    """lgd_jax.train.losses.training_loss: (loss, parts), each averaged over the steps 0..N."""
    jw = self.joint_weights[:, None]
    nb = self.num_params - NUM_POSE
    parts = {
        "kp2d": (jw * (traj.kp2d - kp2d).abs()).mean((1, 2, 3)),
        "kp3d": (jw * (traj.kp3d - kp3d).abs()).mean((1, 2, 3)),
        "pose": (traj.theta[..., :NUM_POSE] - theta[:, :NUM_POSE]).abs().mean((1, 2)),
        "betas": (traj.theta[..., NUM_POSE:NUM_POSE + nb]
                  - theta[:, NUM_POSE:NUM_POSE + nb]).abs().mean((1, 2)),
    }
    per_step = sum(self.weights[k] * v for k, v in parts.items())
    return per_step.mean(), {k: v.mean() for k, v in parts.items()}

  def loss_and_grads(self, batch, num_steps: int):
    """The training loss (networks in train mode) and its parameter gradients in ``.grad``."""
    self.train()
    for p in self.parameters():
      p.grad = None
    traj = self.fit(batch.kp2d, batch.conf, num_steps)
    loss, parts = self.training_loss(traj, batch.theta, batch.kp3d, batch.kp2d)
    loss.backward()
    return loss.detach(), parts, traj

  def train_step(self, optimizer: torch.optim.Optimizer, batch, num_steps: int):
    """One training step on ``batch`` (theta, kp3d, kp2d, conf tensors): the loss, its gradient
    and the optimiser's update. Returns the loss."""
    loss, _, _ = self.loss_and_grads(batch, num_steps)
    optimizer.step()
    return loss

  def infer(self, kp2d: torch.Tensor, conf: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Θ_M after ``num_steps`` learned steps with the networks in eval mode, (B, P)."""
    self.eval()
    with torch.no_grad():
      theta = (kp2d.new_zeros(kp2d.shape[0], self.num_params) if self.init_net is None
               else self._init_fn(kp2d.flatten(1)))
      for _ in range(num_steps):
        with torch.enable_grad():
          t = theta.detach().requires_grad_(True)
          loss, _, _ = self._objective_fn(t, kp2d, conf)
          grad, = torch.autograd.grad(loss.sum(), t)
        theta = theta + self.output_scale * self._update_fn(
            self._features(kp2d, conf, theta, grad))
    return theta

  def infer_trajectory(self, kp2d: torch.Tensor, conf: torch.Tensor, num_steps: int) -> Trajectory:
    """The inference-mode trajectory (eval mode, no parameter gradients), for comparisons."""
    self.eval()
    with torch.no_grad():
      theta = (kp2d.new_zeros(kp2d.shape[0], self.num_params) if self.init_net is None
               else self._init_fn(kp2d.flatten(1)))
      hist = []
      for _ in range(num_steps + 1):
        with torch.enable_grad():
          t = theta.detach().requires_grad_(True)
          loss, kp3d, pred = self._objective_fn(t, kp2d, conf)
          grad, = torch.autograd.grad(loss.sum(), t)
        hist.append((theta, loss.detach(), kp3d.detach(), pred.detach()))
        if len(hist) <= num_steps:
          theta = theta + self.output_scale * self._update_fn(
              self._features(kp2d, conf, theta, grad))
    return Trajectory(*(torch.stack(x) for x in zip(*hist)))


class TorchBatch(NamedTuple):
  theta: torch.Tensor
  kp3d: torch.Tensor
  kp2d: torch.Tensor
  conf: torch.Tensor


def batch_from_jax(batch) -> TorchBatch:
  """An ``lgd_jax.data.batches.Batch`` as float32 torch tensors."""
  return TorchBatch(*(_t(x) for x in (batch.theta, batch.kp3d, batch.kp2d, batch.conf)))
