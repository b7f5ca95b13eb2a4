"""What the held-out evaluation shows: the table, results.json, the per-step curves and the fitted
bodies.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from lgd_jax.data import batches
from lgd_jax.fitting import objective
from lgd_jax.fitting.objective import Problem

# The per-step metrics of every method, in the table's order.
METRICS = ("mpjpe_mm", "pa_mpjpe_mm", "pck150", "auc", "reproj")
NUM_FIGURE_SAMPLES = 3  # held-out samples drawn by plot_fits
# How every table, figure and legend of the evaluation names the methods.
METHOD_LABELS = {"lgd": "learned (ours)", "lgd_converged": "learned, until converged",
                 "gd": "gradient descent", "adam": "Adam",
                 "gd_ls": "GD + line search", "smplify": "SMPLify-style"}
# The convergence analysis (lgd_jax.eval.convergence) spells the classical methods out.
CONVERGENCE_METHOD_LABELS = {**METHOD_LABELS, "gd_ls": "gradient descent + line search",
                             "smplify": "SMPLify-style (priors)"}
# The benchmark tables (lgd_jax.eval.protocols) label the learned fit and the optimisers; their
# extra methods (the SMPLify-style anchor: "smplify") keep the names they were given.
BENCHMARK_METHOD_LABELS = {m: METHOD_LABELS[m] for m in ("lgd", "gd", "adam")}


def text_table(head: list[str], rows: list[str]) -> list[str]:
  """A fixed-width text table's lines: the header lines, a dashed rule as wide as the last of
  them, then the rows (each already laid out)."""
  return [*head, "-" * len(head[-1]), *rows]


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
  """A Markdown table's lines: the header cells, the rule (``|---|`` per column) and the rows."""
  return [_markdown_row(head), "|" + "---|" * len(head), *(_markdown_row(r) for r in rows)]


def _markdown_row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def table(results: dict, steps=None) -> str:
  """The results as a text table: each method at a few steps."""
  m_steps = results["num_steps"]
  window = results["training_window"]
  steps = steps or sorted({0, 1, window, m_steps} & set(range(m_steps + 1)))
  head = f"{'method':8s} {'step':>5s} " + " ".join(f"{k:>12s}" for k in METRICS)
  rows = [f"{method:8s} {s:5d} " + " ".join(f"{vals[k][s]:12.3f}" if k == "reproj"
                                             else f"{vals[k][s]:12.1f}" for k in METRICS)
          for method, vals in results["methods"].items() for s in steps]
  return "\n".join(text_table([head], rows))


def plot(results: dict, path: str) -> None:
  """Per-step curves of every method (3D error, PA-MPJPE, 2D objective), training window shaded."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  panels = (("mpjpe_mm", "MPJPE (mm)"), ("pa_mpjpe_mm", "PA-MPJPE (mm)"),
            ("reproj", "2D re-projection error"))
  for ax, (key, label) in zip(axes, panels):
    for method, vals in results["methods"].items():
      ax.plot(np.arange(len(vals[key])), vals[key], label=METHOD_LABELS.get(method, method))
    ax.axvspan(0, results["training_window"], color="C0", alpha=0.08, lw=0)
    ax.set(xlabel="iteration", ylabel=label)
    if key == "reproj":
      ax.set_yscale("log")
  axes[0].legend()
  fig.suptitle(f"{results['num_samples']} held-out {results['dataset']} samples "
               f"(shaded: training window N = {results['training_window']})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_fits(problem: Problem, batch: batches.Batch, fits: dict, step: int, path: str) -> None:
  """Draws the first held-out samples: the 2D input, the true body and each method's fit after
  ``step`` iterations, seen from the camera and from the side.

  Args:
    problem: the fitting problem (its body model is drawn).
    batch: the held-out batch; its first samples are drawn.
    fits: {method: (n, P) parameters}.
    step: the iteration the fits are from (for the title).
    path: the PNG to write.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from lgd_jax import body
  from lgd_jax.eval import render

  n = min(len(v) for v in fits.values())
  columns = [("ground truth", batch.theta[:n])] + [(METHOD_LABELS.get(m, m), t) for m, t in
                                                   fits.items()]
  faces = np.asarray(problem.model.faces)
  fig, axes = plt.subplots(n, 1 + len(columns), figsize=(2.3 * (1 + len(columns)), 2.9 * n),
                           squeeze=False)
  for i in range(n):
    ax = axes[i, 0]
    kp, conf = np.asarray(batch.kp2d[i]), np.asarray(batch.conf[i]) > 0
    ax.scatter(kp[conf, 0], -kp[conf, 1], s=10, color="k")
    ax.set(title="2D input" if i == 0 else "", aspect="equal", xticks=[], yticks=[])
    for j, (label, theta) in enumerate(columns):
      p = objective.split(problem, jnp.asarray(theta[i]))
      verts = np.asarray(body.forward(problem.model, p.pose, p.betas).vertices)
      ax = axes[i, j + 1]
      color = render.SKIN if j == 0 else (0.55, 0.68, 0.9)
      render.draw_mesh(ax, verts, faces, "front", color=color)
      render.draw_mesh(ax, verts, faces, "left", color=color, offset=(1.1, 0.0))
      if i == 0:
        ax.set_title(label, fontsize=9)
  fig.suptitle(f"held-out samples after {step} iterations (each: camera view, side view)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_results(results: dict, out: str) -> list[str]:
  """Writes results.json (atomically) and a PNG of the curves beside it."""
  directory = os.path.dirname(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, out)
  png = os.path.splitext(out)[0] + "_curves.png"
  plot(results, png)
  return [out, png]
