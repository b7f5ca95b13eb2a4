"""What fitting detections writes (:func:`lgd_jax.eval.detections.fit_file`): per-person .npz and
.obj, the PNG of the fit over the image or a canvas, and ``summary.json``, all written atomically;
and the images and canvases the fits are drawn on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lgd_jax.data.detection_files import DetectionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CANVAS_MARGIN = 0.1  # of the keypoints' larger extent, around the canvas without an image
PNG_MAX_SIDE_PX = 800


# ---------------------------------------------------------------------------------------------
# Images and canvases.


def _image_index(images: str | os.PathLike | None) -> dict[str, Path]:
  if images is None:
    return {}
  root = Path(images)
  if not root.is_dir():
    raise DetectionError(f"{root}: not a directory; expected a directory of PNG or JPEG images")
  return {p.stem: p for p in sorted(root.iterdir())
          if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _find_image(index: dict[str, Path], frame: str, image_id: int | None) -> Path | None:
  if frame in index:
    return index[frame]
  if image_id is not None:  # COCO results: 000000397133.jpg for image_id 397133
    for stem, p in index.items():
      if stem.isdigit() and int(stem) == image_id:
        return p
  return None


def image_size(path: Path) -> tuple[int, int]:
  """(W, H) of an image file, read from its header."""
  try:
    from PIL import Image
    with Image.open(path) as im:
      return int(im.size[0]), int(im.size[1])
  except ImportError:
    return tuple(read_image(path).shape[1::-1])
  except Exception as e:  # Pillow raises several types for unreadable files
    raise DetectionError(f"{path}: cannot read the image ({type(e).__name__}); expected a PNG "
                         "or JPEG file") from None


def read_image(path: Path) -> np.ndarray:
  """(H, W, 3 or 4) pixels of a PNG or JPEG image."""
  try:
    try:
      from PIL import Image
      with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
    except ImportError:
      import matplotlib.image
      return matplotlib.image.imread(path)
  except Exception as e:
    raise DetectionError(f"{path}: cannot read the image ({type(e).__name__}); expected a PNG "
                         "or JPEG file") from None


def canvas(keypoints: np.ndarray, conf: np.ndarray, margin: float = CANVAS_MARGIN):
  """A blank canvas around the confident keypoints (..., K, 2): (x0, y0, W, H) in pixels.

  It spans min(0, lowest - m) to highest + m on each axis, m = ``margin`` times the larger
  extent of the keypoints (at least one pixel).
  """
  pts = keypoints[conf > 0].reshape(-1, 2)
  if not len(pts):
    return 0.0, 0.0, 1.0, 1.0
  lo, hi = pts.min(0), pts.max(0)
  m = margin * max(float(np.max(hi - lo)), 1.0)
  lo = np.minimum(0.0, np.floor(lo - m))
  hi = np.ceil(hi + m)
  return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


# ---------------------------------------------------------------------------------------------
# Writing.


def _atomic(path: Path, write: Callable) -> None:
  tmp = path.with_name(path.name + ".tmp")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def _save_npz(path: Path, arrays: dict) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  _atomic(path, write)


def obj_text(vertices: np.ndarray, faces: np.ndarray) -> str:
  """A Wavefront OBJ of a triangle mesh (faces 0-based in, 1-based out)."""
  # One %-format over the flat arrays: about 10x faster than np.savetxt's loop over rows.
  v = np.asarray(vertices, np.float64).reshape(-1, 3)
  f = np.asarray(faces, np.int64).reshape(-1, 3) + 1
  return ("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel().tolist()) + (
      "f %d %d %d\n" * len(f)) % tuple(f.ravel().tolist())


def _save_text(path: Path, text: str) -> None:
  _atomic(path, lambda tmp: tmp.write_text(text))


def draw_fit(path: Path, vertices: np.ndarray, faces: np.ndarray, focal: float, center,
             box, keypoints: np.ndarray, conf: np.ndarray, fitted: np.ndarray,
             image: np.ndarray | None = None, title: str = "") -> None:
  """The projected mesh, the detected (green) and fitted (red) keypoints, over the image
  (placed at [0, W] × [0, H]) or a blank canvas ``box`` = (x0, y0, W, H); a canvas grows to
  show the whole projected mesh (by at most its own size on each side)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from lgd_jax.eval import render
  x0, y0, w, h = box
  if image is None:
    v = np.asarray(vertices, np.float64)
    v = v[v[:, 2] > 1e-6]
    if len(v):
      proj = focal * v[:, :2] / v[:, 2:3] + np.asarray(center, np.float64)
      lo = np.maximum(np.minimum([x0, y0], proj.min(0)), [x0 - w, y0 - h])
      hi = np.minimum(np.maximum([x0 + w, y0 + h], proj.max(0)), [x0 + 2 * w, y0 + 2 * h])
      x0, y0, w, h = lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]
  scale = PNG_MAX_SIDE_PX / max(w, h)
  fig = plt.figure(figsize=(max(w * scale, 64) / 100, max(h * scale, 64) / 100), dpi=100)
  ax = fig.add_axes((0, 0, 1, 1))
  if image is not None:
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0), interpolation="bilinear")
  render.draw_mesh_camera(ax, vertices, faces, focal, center, alpha=0.65, zorder=2)
  vis = conf > 0
  for a, b in zip(keypoints[vis], fitted[vis]):
    ax.plot([a[0], b[0]], [a[1], b[1]], color="yellow", lw=0.8, zorder=3)
  ax.scatter(*keypoints[vis].T, s=14, color="limegreen", edgecolors="k", linewidths=0.4,
             zorder=4, label="detected")
  ax.scatter(*fitted[vis].T, s=16, color="red", marker="x", linewidths=1.0, zorder=5,
             label="fitted")
  ax.set_xlim(x0, x0 + w)
  ax.set_ylim(y0 + h, y0)
  ax.set_axis_off()
  if title:
    ax.text(0.01, 0.99, title, transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.7, lw=0))
  ax.legend(loc="lower right", fontsize=7)

  def write(tmp):
    fig.savefig(tmp, format="png", dpi=100, facecolor="white")
  try:
    _atomic(path, write)
  finally:
    plt.close(fig)


def _safe_name(name: str) -> str:
  return re.sub(r"[^\w.-]", "_", name) or "frame"


# ---------------------------------------------------------------------------------------------
# A run's outputs.


def prepare(out: Path, stems: Sequence[str], draw: bool, overwrite: bool) -> None:
  """Creates ``out`` for the persons' ``stems``, refusing to replace their files unless
  ``overwrite``."""
  suffixes = (".npz", ".obj") + ((".png",) if draw else ())
  if not overwrite:
    for stem in stems:
      for s in suffixes:
        if (out / (stem + s)).exists():
          raise DetectionError(f"{out / (stem + s)}: exists already; expected a fresh output "
                               "directory or overwrite=True (--overwrite)")
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DetectionError(f"{out}: cannot create the output directory ({e.strerror}); expected "
                         "a writable directory path") from None


def write_fits(out: Path, inputs, results, faces: np.ndarray, draw: bool, skipped: list,
               log, labels: Sequence[str] = ("as given",)) -> list[dict]:
  """Writes every finite fit of ``results`` (``(persons, BatchFit)`` pairs, the persons indexing
  :class:`lgd_jax.eval.detection_inputs.Inputs` ``inputs``) and returns their summary entries; a
  fit that is not finite is added to ``skipped`` instead. ``labels`` names the limb labellings
  (``BatchFit.labelling`` indexes them)."""
  det = inputs.det
  fits, image_cache = [], {}
  for idx, res in results:
    pl = res.placement
    finite = np.all(np.isfinite(np.concatenate(
        [pl.global_orient, pl.body_pose, pl.betas, pl.transl, pl.reproj_px[:, None]], -1)), -1)
    for b, i in enumerate(idx):
      f = int(det.person_frame[i])
      if not finite[b]:  # e.g. keypoints that all coincide: no translation can be solved
        skipped.append(dict(frame=det.frames[f], person=int(det.person_index[i]),
                            file=det.frame_files[f], reason="the fit is not finite "
                            "(degenerate keypoints)"))
        continue
      if not pl.in_front[b]:
        log(f"  warning: {inputs.stem(i)}: some fitted keypoints lie behind the camera")
      files = _write_person(out, inputs, i, res, b, faces, draw, image_cache)
      info = inputs.frames[f]
      fits.append(dict(
          frame=det.frames[f], person=int(det.person_index[i]), file=det.frame_files[f],
          reproj_px=float(pl.reproj_px[b]), reproj=float(res.reproj[b]),
          reproj_px_learned=float(res.reproj_px_learned[b]),
          learned_steps=int(res.learned_steps[b]), refine_steps=int(res.refine_steps),
          limbs_relabelled=labels[int(res.labelling[b])],
          num_confident_joints=int(inputs.num_conf[i]), in_front_of_camera=bool(pl.in_front[b]),
          focal_length=info["focal"], camera_center=list(info["center"]),
          image=None if info["image"] is None else str(info["image"]),
          image_size=list(info["box"][2:]), size_from=info["kind"], files=files))
  return fits


def _write_person(out: Path, inputs, i: int, res, b: int, faces: np.ndarray, draw: bool,
                  image_cache: dict) -> list[str]:
  """Person ``i``'s .npz, .obj and (with ``draw``) .png from row ``b`` of the batch fit ``res``;
  the names of the files written. ``image_cache`` keeps the last frame's image."""
  det, kp, conf = inputs.det, inputs.keypoints, inputs.conf
  pl = res.placement
  f = int(det.person_frame[i])
  info = inputs.frames[f]
  s = inputs.stem(i)
  _save_npz(out / f"{s}.npz", dict(
      global_orient=pl.global_orient[b], body_pose=pl.body_pose[b], betas=pl.betas[b],
      transl=pl.transl[b], focal_length=np.float32(info["focal"]),
      camera_center=np.asarray(info["center"], np.float32),
      image_size=np.asarray(info["box"][2:], np.float32),
      keypoints_2d=kp[i], confidence=conf[i], weights=res.weights[b],
      keypoint_names=np.asarray(inputs.names), keypoints_2d_fit=pl.keypoints_2d[b],
      reproj_px=np.float32(pl.reproj_px[b]), learned_steps=np.int32(res.learned_steps[b]),
      refine_steps=np.int32(res.refine_steps)))
  _save_text(out / f"{s}.obj", obj_text(res.vertices[b], faces))
  files = [f"{s}.npz", f"{s}.obj"]
  if draw:
    image = None
    if info["image"] is not None:
      if f not in image_cache:
        image_cache.clear()
        image_cache[f] = read_image(info["image"])
      image = image_cache[f]
    draw_fit(out / f"{s}.png", res.vertices[b], faces, info["focal"], info["center"],
             info["box"], kp[i], conf[i], pl.keypoints_2d[b], image,
             f"{det.frames[f]} person {det.person_index[i]}: "
             f"{float(pl.reproj_px[b]):.1f} px")
    files.append(f"{s}.png")
  return files


def summary(restored, inputs, fits: list[dict], skipped: list[dict], *, num_steps: int,
            window: int, until_converged: bool, tol: float, refine_steps: int, confidence: str,
            focal_length: float | None, wall_time_s: dict) -> dict:
  """The run's ``summary.json``: its settings, every fit and skip, the totals and wall times."""
  det = inputs.det
  errs = np.array([fit["reproj_px"] for fit in fits])
  return dict(
      checkpoint=restored.path, checkpoint_step=int(restored.step), keypoints_file=det.path,
      format=det.format, keypoint_set=restored.problem.kpset, num_steps=num_steps,
      training_window=window, until_converged=bool(until_converged),
      tol=float(tol) if until_converged else None, refine_steps=refine_steps,
      refine_keypoint_set=inputs.refine_kpset if refine_steps else None,
      confidence=confidence,
      focal_length=(f"{float(focal_length):g} px (given)" if focal_length is not None
                    else "sqrt(W^2 + H^2) of the image or canvas"),
      fits=fits, skipped=skipped,
      totals=dict(
          frames=len(det.frames), persons=det.num_persons, fitted=len(fits),
          skipped_frames=sum(s["person"] is None for s in skipped),
          skipped_persons=sum(s["person"] is not None for s in skipped),
          frames_without_image=sum(info["kind"] != "image" for info in inputs.frames),
          behind_camera=sum(not fit["in_front_of_camera"] for fit in fits),
          mean_reproj_px=float(errs.mean()) if len(errs) else None,
          median_reproj_px=float(np.median(errs)) if len(errs) else None),
      wall_time_s=wall_time_s,
  )


def save_summary(path: Path, summary: dict) -> None:
  _save_text(path, json.dumps(summary, indent=1))


def table(summary: dict) -> str:
  """The summary's fits and skips as text lines."""
  lines = [f"{'frame':24s} {'person':>6s} {'joints':>6s} {'learned':>7s} {'refine':>6s} "
           f"{'reproj_px':>10s}"]
  for fit in summary["fits"]:
    lines.append(f"{fit['frame'][:24]:24s} {fit['person']:6d} {fit['num_confident_joints']:6d} "
                 f"{fit.get('learned_steps', summary['num_steps']):7d} "
                 f"{fit.get('refine_steps', 0):6d} {fit['reproj_px']:10.2f}")
  for s in summary["skipped"]:
    who = "-" if s["person"] is None else str(s["person"])
    lines.append(f"{s['frame'][:24]:24s} {who:>6s} skipped: {s['reason']}")
  return "\n".join(lines)
