"""What the convergence analysis (:mod:`lgd_jax.eval.convergence`) writes: the paper's four
figures (three panels each, the training window shaded, the learned curve lighter beyond it),
``convergence.csv`` (long format), ``summary.json`` and ``summary.md`` (:func:`table`).
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from lgd_jax.eval.reports import CONVERGENCE_METHOD_LABELS, markdown_table

STARTS = ("zero", "one_step")
START_LABELS = {"zero": "zero pose", "one_step": "one learned step"}
CURVES = ("mpjpe_mm", "pa_mpjpe_mm", "reproj", "grad_norm")
METHOD_COLORS = {"lgd": "C0", "gd": "C3", "gd_ls": "C2", "adam": "C1", "smplify": "C4"}
LGD_BEYOND_COLOR = "#9ecae1"  # the learned curve beyond the training window (light blue)
# (file name, start, methods) of the paper's four figures.
FIGURES = (("fig1_gd_zero.png", "zero", ("lgd", "gd", "gd_ls")),
           ("fig2_gd_one_step.png", "one_step", ("lgd", "gd", "gd_ls")),
           ("fig3_adam_zero.png", "zero", ("lgd", "adam")),
           ("fig4_adam_one_step.png", "one_step", ("lgd", "adam")))


def write(summary: dict, out_dir: str) -> list[str]:
  """Writes the figures, ``convergence.csv``, ``summary.json`` and ``summary.md``."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for fname, start, methods in FIGURES:
    path = os.path.join(out_dir, fname)
    plot(summary, start, methods, path)
    paths.append(path)
  path = os.path.join(out_dir, "convergence.csv")
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["start", "method", "iteration"] + list(CURVES))
    for start, per_method in summary["curves"].items():
      for method, c in per_method.items():
        for i in range(len(c["mpjpe_mm"])):
          w.writerow([start, method, i] + [f"{c[k][i]:.6g}" for k in CURVES])
  paths.append(path)
  path = os.path.join(out_dir, "summary.json")
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(path + ".tmp", path)
  paths.append(path)
  path = os.path.join(out_dir, "summary.md")
  with open(path, "w") as f:
    f.write(table(summary) + "\n")
  paths.append(path)
  return paths


def table(summary: dict) -> str:
  """The summary as a Markdown table: errors at the report iterations and wall time."""
  iters = summary["report_iters"]
  lines = [f"Convergence on {summary['num_samples']} held-out {summary['dataset']} samples "
           f"({summary.get('inputs', 'exact')} 2D input), "
           f"{summary['num_iters']} iterations (training window N = "
           f"{summary['training_window']}); checkpoint `{summary['checkpoint']}`.", ""]
  head = ["start", "method", "setting"] + [
      col for i in iters for col in (f"MPJPE@{i}", f"PA-MPJPE@{i}", f"2D@{i}")] + [
      f"grad norm@{iters[-1]}", "run time (s)", "ms / iter"]
  rows = []
  for start, per_method in summary["curves"].items():
    for method, c in per_method.items():
      st = summary["settings"][start].get(method, {}).get("value")
      t = summary["wall_time"][start][method]
      cells = [START_LABELS[start], CONVERGENCE_METHOD_LABELS.get(method, method),
               "-" if st is None else f"{st:g}"]
      for i in iters:
        cells += [f"{c['mpjpe_mm'][i]:.1f}", f"{c['pa_mpjpe_mm'][i]:.1f}", f"{c['reproj'][i]:.4f}"]
      cells += [f"{c['grad_norm'][iters[-1]]:.2e}", f"{t['run_s']:.2f}", f"{t['ms_per_iter']:.1f}"]
      rows.append(cells)
  lines += markdown_table(head, rows)
  lines += ["", "Errors in mm (MPJPE, PA-MPJPE on the 24 SMPL joints) and the objective (2D) after "
            "the given number of iterations. Settings: GD step size, line search's initial step, "
            "Adam learning rate, SMPLify prior scale, each tuned on a separate batch "
            "(PA-MPJPE at the last iteration). Run time: " + summary["timing_note"] + "."]
  ls = {s: summary["settings"][s].get("gd_ls", {}).get("evals_per_iter") for s in STARTS}
  for s, e in ls.items():
    if e:
      lines.append(f"Line search ({START_LABELS[s]} start): {e['per_sample']:.2f} objective "
                   f"evaluations per iteration and sample, {e['batched_forward_passes']:.2f} "
                   f"batched passes per iteration, {100 * e['accepted_fraction']:.0f} % of "
                   "iterations accepted a step.")
  return "\n".join(lines)


def plot(summary: dict, start: str, methods, path: str) -> None:
  """One of the paper's figures: (a) 3D error, (b) 2D error, (c) gradient norm per iteration."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  window = summary["training_window"] - (1 if start == "one_step" else 0)
  curves = summary["curves"][start]
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  panels = (("mpjpe_mm", "(a) 3D error: MPJPE (mm)", False),
            ("reproj", "(b) 2D re-projection error", True),
            ("grad_norm", "(c) gradient norm ||∂L/∂Θ||", True))
  for ax, (key, title, logy) in zip(axes, panels):
    for method in methods:
      if method not in curves:
        continue
      y = np.asarray(curves[method][key])
      x = np.arange(len(y))
      color = METHOD_COLORS.get(method)
      label = CONVERGENCE_METHOD_LABELS.get(method, method)
      if method == "lgd" and window < len(y) - 1:
        ax.plot(x[:window + 1], y[:window + 1], color=color, label=label, lw=2)
        ax.plot(x[window:], y[window:], color=LGD_BEYOND_COLOR, lw=2,
                label="learned, beyond the training window")
      else:
        ax.plot(x, y, color=color, label=label, lw=1.5)
      if key == "mpjpe_mm":
        ax.plot(x, np.asarray(curves[method]["pa_mpjpe_mm"]), color=color, lw=0.8, ls="--",
                alpha=0.7)
    ax.axvspan(0, window, color="0.5", alpha=0.12, lw=0)
    ax.set(title=title, xlabel="iteration")
    if logy:
      ax.set_yscale("log")
  axes[0].text(0.98, 0.97, "solid: MPJPE, dashed: PA-MPJPE", transform=axes[0].transAxes,
               ha="right", va="top", fontsize=8)
  axes[0].legend(fontsize=8, loc="center right")
  fig.suptitle(f"start: {START_LABELS[start]} ({summary['num_samples']} held-out "
               f"{summary['dataset']} samples; shaded: training window, {window} iterations)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
