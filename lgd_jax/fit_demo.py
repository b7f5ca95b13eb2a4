"""A small, self-contained fit: classical optimisation of SMPL-layout parameters to 2D keypoints.

    python -m lgd_jax.fit_demo [--out-dir outputs/fit_demo] [--batch 256] [--iters 200]

It runs on the free built-in body model, so it needs no licence-gated files: random poses are
rendered to COCO-18 keypoints by the official code's camera, normalised to the unit box, and fitted
from the zero pose with Adam on the re-projection objective LGD uses (no priors). The whole fit is one
jitted, batched ``lax.scan``; it prints progress and writes a convergence plot. It is the stand-in
main job until the learned optimiser's ``train.py`` exists, and shows the problem LGD addresses: the
2D error falls while the 3D error stays high without a learned prior.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgd_jax import body, camera

# Per-joint angle scale (radians) of the demo's random poses: larger at hips, knees, shoulders and
# elbows, small along the spine, zero at the hands. A crude stand-in for motion capture data.
_JOINT_SCALE = np.array([0.0, 0.5, 0.5, 0.15, 0.6, 0.6, 0.1, 0.2, 0.2, 0.1, 0.05, 0.05, 0.15,
                         0.1, 0.1, 0.2, 0.4, 0.4, 0.6, 0.6, 0.2, 0.2, 0.0, 0.0])


def sample_targets(model, key, batch, kpset="coco18", drop_prob=0.2):
  """Random poses and shapes, their 3D keypoints, and normalised 2D keypoints with dropouts."""
  k_pose, k_root, k_beta, k_drop = jax.random.split(key, 4)
  pose = jax.random.normal(k_pose, (batch, 24, 3)) * _JOINT_SCALE[:, None]
  yaw = jax.random.uniform(k_root, (batch,), minval=-np.pi, maxval=np.pi)
  pose = pose.at[:, 0].set(jnp.stack([jnp.zeros_like(yaw), yaw, jnp.zeros_like(yaw)], -1))
  pose = pose.reshape(batch, 72)
  betas = jax.random.normal(k_beta, (batch, model.num_betas))
  kp3d = body.keypoints(model, pose, betas, None, kpset)
  conf = (jax.random.uniform(k_drop, kp3d.shape[:2]) >= drop_prob).astype(kp3d.dtype)
  kp2d = camera.normalize_unit_box(camera.project(kp3d, camera.official_camera()), conf)
  return pose, betas, kp3d, kp2d, conf


def reprojection_loss(params, model, kp2d, conf, kpset="coco18"):
  """LGD's objective for one sample: confidence-weighted L1 of unit-box-normalised 2D keypoints.

  Returns the loss and, as auxiliary output, the 3D keypoints it was computed from.
  """
  pose, betas = params
  kp3d = body.keypoints(model, pose, betas, None, kpset)
  pred = camera.normalize_unit_box(camera.project(kp3d, camera.official_camera()), conf)
  loss = jnp.sum(conf[:, None] * jnp.abs(pred - kp2d)) / jnp.maximum(2.0 * jnp.sum(conf), 1.0)
  return loss, kp3d


def mpjpe_mm(pred, gt):
  """Mean joint error after centring on the mean joint, in millimetres (per sample)."""
  pred = pred - pred.mean(-2, keepdims=True)
  gt = gt - gt.mean(-2, keepdims=True)
  return 1000.0 * jnp.linalg.norm(pred - gt, axis=-1).mean(-1)


@functools.partial(jax.jit, static_argnames=("chunk", "lr"))
def fit_chunk(model, params, opt_state, kp2d, conf, kp3d_gt, num_active, chunk, lr):
  """Up to ``chunk`` Adam steps on every sample at once.

  Only the first ``num_active`` (traced) steps update the parameters, so a shorter last chunk
  reuses the compiled program. Returns per-step mean 2D and 3D errors at the parameters each step
  started from.
  """
  opt = optax.adam(lr)
  value_and_grad = jax.vmap(jax.value_and_grad(reprojection_loss, has_aux=True),
                            in_axes=(0, None, 0, 0))

  def step(carry, i):
    params, opt_state = carry
    (loss, kp3d), grads = value_and_grad(params, model, kp2d, conf)
    updates, new_state = opt.update(grads, opt_state, params)
    active = i < num_active
    keep = lambda new, old: jnp.where(active, new, old)
    params = jax.tree.map(keep, optax.apply_updates(params, updates), params)
    opt_state = jax.tree.map(keep, new_state, opt_state)
    return (params, opt_state), (loss.mean(), mpjpe_mm(kp3d, kp3d_gt).mean())

  (params, opt_state), curves = jax.lax.scan(step, (params, opt_state), jnp.arange(chunk))
  return params, opt_state, curves


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out-dir", default="outputs/fit_demo")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--iters", type=int, default=200)
  parser.add_argument("--lr", type=float, default=0.02)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.batch < 1 or args.iters < 1:
    print("error: --batch and --iters must be positive", file=sys.stderr)
    return 2

  model = body.load_model()  # the free built-in body model
  pose_gt, betas_gt, kp3d_gt, kp2d, conf = sample_targets(model, jax.random.PRNGKey(args.seed),
                                                          args.batch)
  params = (jnp.zeros_like(pose_gt), jnp.zeros_like(betas_gt))
  opt_state = optax.adam(args.lr).init(params)
  chunk = max(1, min(20, args.iters))
  losses, errs = [], []
  start = time.perf_counter()
  print(f"fitting {args.batch} samples x {args.iters} Adam steps on {model.name} "
        f"({jax.devices()[0].platform})")
  done = 0
  while done < args.iters:
    n = min(chunk, args.iters - done)
    params, opt_state, (loss, err) = fit_chunk(model, params, opt_state, kp2d, conf, kp3d_gt,
                                               n, chunk=chunk, lr=args.lr)
    losses.extend(np.asarray(loss)[:n].tolist())
    errs.extend(np.asarray(err)[:n].tolist())
    done += n
    print(f"  step {done:4d}/{args.iters}  2D L1 {losses[-1]:.4f}  3D error {errs[-1]:6.1f} mm  "
          f"({time.perf_counter() - start:.1f} s)", flush=True)

  os.makedirs(args.out_dir, exist_ok=True)
  with open(os.path.join(args.out_dir, "curves.json"), "w") as f:
    json.dump({"reproj_l1": losses, "mpjpe_mm": errs}, f)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  axes[0].plot(np.arange(len(losses)), losses)
  axes[0].set(xlabel="iteration", ylabel="2D re-projection L1 (unit box)", yscale="log",
              title="objective")
  axes[1].plot(np.arange(len(errs)), errs, color="C1")
  axes[1].set(xlabel="iteration", ylabel="3D keypoint error (mm)", title="true error")
  fig.suptitle(f"Adam on the 2D objective, {args.batch} samples, zero-pose start")
  fig.tight_layout()
  path = os.path.join(args.out_dir, "convergence.png")
  fig.savefig(path, dpi=100)
  print(f"wrote {path} and curves.json: 2D L1 {losses[0]:.4f} -> {losses[-1]:.4f}, "
        f"3D error {errs[0]:.1f} -> {errs[-1]:.1f} mm")
  return 0


if __name__ == "__main__":
  sys.exit(main())
