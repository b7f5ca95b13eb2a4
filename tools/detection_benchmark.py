"""Fitting detections of known bodies: OpenPose BODY_25 frames rendered from the free body model,
fitted like a user's detections and scored against the truth.

    python tools/detection_benchmark.py --ckpt runs/demo --out-dir runs/detections
    python tools/detection_benchmark.py --out-dir runs/detections          # the packaged model

Frames (:func:`make_frames`): one person a frame, poses from the held-out test source
(``lgd_jax.data.pose_sources.sample_test``, other poses than the training source's) turned up to
±45° from the camera, 4.5-7.5 m away, shapes β ~ N(0, I), in a 1920 × 1080 image with
f = 1100 px (a person about 310 px tall). Three inputs, as a detector would deliver them:

* ``exact``: the projected BODY_25 keypoints, confidence 1;
* ``noisy``: 3 px Gaussian noise, confidences U(0.3, 1), 10 % of the joints missing;
* ``swapped``: as noisy, and one limb's left and right keypoints swapped per person.

Each is fitted through :func:`lgd_jax.eval.detections.fit_file` (what ``evaluate.py --keypoints``
runs) in several settings (learned steps only, until converged, with the classical refinement,
with and without the left/right relabelling of limbs) and scored: PA-MPJPE on the 24 SMPL
joints and the median re-projection error in pixels. The SMPLify-style fit (the same refinement
from the zero pose, after SPIN's orientation stage, with its priors and no learned anchor, the
limbs as labelled) gets the same wall-clock budget as the learned pipeline (the default: learned
steps, refinement and relabelling).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from lgd_jax.eval import detections, restore
from lgd_jax.fitting import relabel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

IMAGE_SIZE = (1920, 1080)
FOCAL_PX = 1100.0
DEPTH_RANGE = (4.5, 7.5)
YAW_DEG = 45.0
VARIANTS = {
    "exact": dict(noise_px=0.0, conf_range=(1.0, 1.0), missing=0.0, swap=False),
    "noisy": dict(noise_px=3.0, conf_range=(0.3, 1.0), missing=0.1, swap=False),
    "swapped": dict(noise_px=3.0, conf_range=(0.3, 1.0), missing=0.1, swap=True),
}
# The limbs one of which is exchanged per person: the relabelling's groups, in its order.
SWAP_LIMBS = relabel.LIMB_GROUPS
# The same with each leg's foot keypoints exchanged with it (a detector that takes the whole leg
# for the other one): ``make_frames(..., swap_limbs=SWAP_LIMBS_WITH_FEET)``.
SWAP_LIMBS_WITH_FEET = (SWAP_LIMBS[0], SWAP_LIMBS[1] + relabel.FOOT_PARTS)


def make_frames(out_dir: str | os.PathLike, num_people: int = 48, seed: int = 0,
                noise_px: float = 0.0, conf_range=(1.0, 1.0), missing: float = 0.0,
                swap: bool = False, model=None, swap_limbs=SWAP_LIMBS) -> dict:
  """Writes ``num_people`` OpenPose BODY_25 frames and ``truth.npz`` to ``out_dir``.

  Returns the truth: pose (n, 72) in the OpenCV camera frame (smplx's convention: vertices
  = LBS(pose, betas) + transl), betas (n, 10), transl (n, 3), joints (n, 24, 3) metres,
  swapped_limb (n,): the index into :data:`SWAP_LIMBS` of the limb exchanged (-1: none).
  ``swap_limbs``: the parts of each limb exchanged (the legs' feet too with
  :data:`SWAP_LIMBS_WITH_FEET`).
  """
  import jax
  import jax.numpy as jnp

  from lgd_jax import body
  from lgd_jax.data import pose_sources
  from lgd_jax.geometry import rotations

  model = body.load_model() if model is None else model
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed)
  pose = np.array(pose_sources.sample_test(key, num_people))
  yaw = np.deg2rad(rng.uniform(-YAW_DEG, YAW_DEG, num_people))
  flip = np.diag([1.0, -1.0, -1.0])  # body up (+y) -> image up (-y), front (+z) -> the camera
  root = np.stack([np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
                   @ flip for a in yaw])
  pose[:, :3] = np.asarray(rotations.matrix_to_axis_angle(jnp.asarray(root, jnp.float32)))
  betas = rng.standard_normal((num_people, model.num_betas)).astype(np.float32)
  depth = rng.uniform(*DEPTH_RANGE, num_people)
  target = np.stack([rng.uniform(-0.15, 0.15, num_people) * depth,
                     rng.uniform(-0.05, 0.05, num_people) * depth, depth], -1)
  zero = jnp.zeros((num_people, 3))
  root_joint = np.asarray(body.keypoints(model, jnp.asarray(pose), jnp.asarray(betas), zero,
                                         "smpl24"))[:, 0]
  transl = (target - root_joint).astype(np.float32)
  args = (jnp.asarray(pose), jnp.asarray(betas), jnp.asarray(transl))
  kp3d = np.asarray(body.keypoints(model, *args, "body25"), np.float64)
  joints = np.asarray(body.keypoints(model, *args, "smpl24"), np.float32)
  center = np.array(IMAGE_SIZE, np.float64) / 2
  pix = FOCAL_PX * kp3d[..., :2] / kp3d[..., 2:3] + center
  names = body.get_keypoint_set("body25").names
  conf = rng.uniform(conf_range[0], conf_range[1], pix.shape[:2])
  pix = pix + noise_px * rng.standard_normal(pix.shape)
  swapped = np.full(num_people, -1, np.int32)  # per person: the SWAP_LIMBS index exchanged
  if swap:
    for i in range(num_people):
      swapped[i] = rng.integers(len(swap_limbs))
      limb = swap_limbs[swapped[i]]
      for part in limb:
        a, b = names.index(f"left_{part}"), names.index(f"right_{part}")
        pix[i, [a, b]] = pix[i, [b, a]]
        conf[i, [a, b]] = conf[i, [b, a]]
  gone = rng.uniform(size=conf.shape) < missing
  conf[gone] = 0.0
  pix[gone] = 0.0
  for i in range(num_people):
    flat = np.concatenate([pix[i], conf[i][:, None]], -1).reshape(-1)
    doc = {"version": 1.3, "people": [{"person_id": [-1],
                                       "pose_keypoints_2d": [round(float(v), 3) for v in flat]}]}
    (out / f"frame{i:04d}_keypoints.json").write_text(json.dumps(doc))
  truth = dict(pose=pose.astype(np.float32), betas=betas, transl=transl, joints=joints,
               image_size=np.array(IMAGE_SIZE, np.float32), focal_length=np.float32(FOCAL_PX),
               swapped_limb=swapped)
  np.savez(out / "truth.npz", **truth)
  return truth


def make_images(out_dir: str | os.PathLike, num_frames: int) -> None:
  """Blank PNGs of the frames' size, so that fitting uses the true image size and focal length."""
  from PIL import Image
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  img = Image.new("RGB", IMAGE_SIZE, (128, 128, 128))
  for i in range(num_frames):
    img.save(out / f"frame{i:04d}.png")


def score(fits_dir: str | os.PathLike, truth: dict, model=None) -> dict:
  """PA-MPJPE (24 SMPL joints, mm) and re-projection errors of a fit_file output."""
  import jax.numpy as jnp

  from lgd_jax import body, metrics
  model = body.load_model() if model is None else model
  summary = json.loads((Path(fits_dir) / "summary.json").read_text())
  idx, pose, betas, transl, px, labels = [], [], [], [], [], []
  for fit in summary["fits"]:
    labels.append(fit.get("limbs_relabelled", "as given"))
    z = np.load(Path(fits_dir) / fit["files"][0])
    idx.append(int(fit["frame"].replace("frame", "")))
    pose.append(np.concatenate([z["global_orient"], z["body_pose"]]))
    betas.append(z["betas"])
    transl.append(z["transl"])
    px.append(float(z["reproj_px"]))
  joints = np.asarray(body.keypoints(model, jnp.asarray(np.stack(pose)),
                                     jnp.asarray(np.stack(betas)), jnp.asarray(np.stack(transl)),
                                     "smpl24"))
  gt = truth["joints"][np.asarray(idx)]
  pa = np.asarray(metrics.pa_mpjpe(jnp.asarray(joints), jnp.asarray(gt)))
  mp = np.asarray(metrics.mpjpe(jnp.asarray(joints), jnp.asarray(gt)))
  px = np.asarray(px)
  # The labelling kept per person: relabelled at all, and (where one limb was exchanged) the
  # exchanged limb found.
  swapped = truth.get("swapped_limb", np.full(len(truth["joints"]), -1))[np.asarray(idx)]
  found = [s >= 0 and lab == relabel.GROUP_LABELS[s] for s, lab in zip(swapped, labels)]
  return {"relabelled": int(sum(lab != "as given" for lab in labels)),
          "swaps_found": int(sum(found)), "num_swapped": int(np.sum(swapped >= 0)),
          "num_fitted": len(idx), "num_people": int(len(truth["joints"])),
          "pa_mpjpe_mm": float(pa.mean()), "mpjpe_mm": float(mp.mean()),
          "median_reproj_px": float(np.median(px)), "mean_reproj_px": float(px.mean()),
          "fit_s": float(summary["wall_time_s"]["fit"]),
          "learned_steps_mean": float(np.mean([f.get("learned_steps", 0)
                                               for f in summary["fits"]]))}


SETTINGS = {
    "learned (N steps)": dict(refine_steps=0),
    "learned, until converged": dict(refine_steps=0, until_converged=True),
    "learned + refinement, limbs as labelled": dict(relabel=False),
    "learned + refinement (default)": dict(),
}
# With --sigma S: one more row, the refinement with the Geman-McClure penalty of scale S.
GMOF_LABEL = "learned + refinement, Geman-McClure"


def fits_path(out_dir, variant: str, label: str) -> Path:
  """Where :func:`run` writes the fits of ``variant`` in the setting ``label``."""
  name = label.split(" (")[0].replace(" ", "_").replace(",", "").replace("+", "plus")
  return Path(out_dir) / variant / name


def run(ckpt: str | None, out_dir: str, num_people: int = 48, seed: int = 0, settings=None,
        smplify: bool = True, log=print, variants=None) -> dict:
  """Fits every input of ``variants`` (default :data:`VARIANTS`: name -> :func:`make_frames`
  arguments) in every setting of ``settings`` (default :data:`SETTINGS`: label ->
  ``fit_file`` arguments) and scores the fits; the rows in ``results["rows"]``."""
  from lgd_jax.commands.cli import quiet_logs
  quiet_logs()
  restored = restore.restore(ckpt)
  out = Path(out_dir)
  images = out / "images"
  make_images(images, num_people)
  results = {"checkpoint": restored.path, "num_people": num_people, "seed": seed, "rows": []}
  settings = SETTINGS if settings is None else settings
  for variant, spec in (VARIANTS if variants is None else variants).items():
    frames = out / variant / "frames"
    truth = make_frames(frames, num_people, seed, **spec, model=restored.problem.model)
    for label, kwargs in settings.items():
      fits = fits_path(out, variant, label)
      # Twice: the first run compiles, the second is timed.
      for _ in range(2):
        detections.fit_file(restored, frames, fits, images=images, overwrite=True, log=None,
                            draw=False, **kwargs)
      row = {"input": variant, "method": label, **score(fits, truth, restored.problem.model)}
      results["rows"].append(row)
      log(f"{variant:8s} {label:34s} PA-MPJPE {row['pa_mpjpe_mm']:6.1f} mm  median "
          f"{row['median_reproj_px']:5.1f} px  ({row['fit_s']:.2f} s)")
    if smplify:
      budget = [r["fit_s"] for r in results["rows"] if r["input"] == variant and
                r["method"] == "learned + refinement (default)"]
      row = smplify_row(restored, frames, out / variant / "smplify", truth, images,
                        budget[0] if budget else None)
      results["rows"].append({"input": variant, **row})
      log(f"{variant:8s} {row['method']:34s} PA-MPJPE {row['pa_mpjpe_mm']:6.1f} mm  median "
          f"{row['median_reproj_px']:5.1f} px  ({row['fit_s']:.2f} s)")
  return results


def smplify_row(restored, frames, fits, truth, images, budget_s):
  """The SMPLify-style fit from the zero pose: SPIN's orientation stage (best of 8 turns) and
  the camera-frame refinement with priors and no learned anchor, given ``budget_s`` seconds."""
  from lgd_jax.fitting import refine
  weights = refine.DEFAULT_WEIGHTS._replace(stay=0.0)
  base = dict(num_steps=1, refine_steps=20, refine_weights=weights, overwrite=True, log=None,
              draw=False, images=images, start="zero", relabel=False)
  detections.fit_file(restored, frames, fits, **base)
  detections.fit_file(restored, frames, fits, **base)
  per_step = json.loads((Path(fits) / "summary.json").read_text())["wall_time_s"]["fit"] / 20
  steps = max(20, int(budget_s / per_step)) if budget_s else 200
  base["refine_steps"] = steps
  detections.fit_file(restored, frames, fits, **base)
  detections.fit_file(restored, frames, fits, **base)
  return {"method": f"SMPLify-style, same time ({steps} it.)", **score(fits, truth,
                                                                       restored.problem.model)}


def table(results: dict) -> str:
  lines = ["| input | method | PA-MPJPE (mm) | median re-projection (px) | fit time (s) |",
           "|---|---|---:|---:|---:|"]
  for r in results["rows"]:
    lines.append(f"| {r['input']} | {r['method']} | {r['pa_mpjpe_mm']:.1f} | "
                 f"{r['median_reproj_px']:.1f} | {r['fit_s']:.2f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ckpt", default=None, help="checkpoint (default: the packaged model)")
  p.add_argument("--out-dir", default="runs/detections")
  p.add_argument("--num-people", type=int, default=48)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-smplify", action="store_true")
  p.add_argument("--json", default=None, help="write the results here")
  p.add_argument("--sigma", type=float, default=0.0,
                 help="add a row: the refinement with SMPLify's Geman-McClure penalty of this "
                      "scale (in person sizes)")
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  settings = dict(SETTINGS)
  if args.sigma > 0:
    from lgd_jax.fitting import refine
    settings[f"{GMOF_LABEL} (σ = {args.sigma:g})"] = dict(
        refine_weights=refine.DEFAULT_WEIGHTS._replace(sigma=args.sigma))
  results = run(args.ckpt, args.out_dir, args.num_people, args.seed, settings=settings,
                smplify=not args.no_smplify)
  results["wall_s"] = time.perf_counter() - t0
  print(table(results))
  if args.json:
    Path(args.json).write_text(json.dumps(results, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
