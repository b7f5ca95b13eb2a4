"""The paper's convergence analysis (supplementary §2, Figs 1-4).

On held-out samples, from (a) the zero pose and (b) the result of one learned step, run the learned
update, gradient descent (tuned step size), gradient descent with a backtracking line search and
Adam (tuned learning rate) on the same objective for ``num_iters`` iterations, and record per
iteration the 3D error (MPJPE, PA-MPJPE), the 2D re-projection error (the objective) and the true
gradient norm ||∂L/∂Θ_n|| (not ||ΔΘ||). A SMPLify-style fit (:func:`lgd_jax.baselines.smplify`,
with its priors) is added to the summary table as the classical anchor.

    from lgd_jax import convergence, evaluation
    summary = convergence.run(evaluation.restore("runs/demo"), "runs/demo/convergence")

Writes ``fig1_gd_zero.png``, ``fig2_gd_one_step.png``, ``fig3_adam_zero.png``,
``fig4_adam_one_step.png`` (three panels each, the training window shaded, the learned curve
lighter beyond it), ``convergence.csv`` (long format), ``summary.json`` and ``summary.md``.

Choices:

* Step sizes are tuned per start, like :func:`lgd_jax.evaluation.tune` (an oracle choice that
  favours the baselines: the ground truth of a separate tuning batch picks from
  ``evaluation.GD_STEP_SIZES`` / ``ADAM_LEARNING_RATES`` / ``baselines.PRIOR_SCALES``), but on the
  PA-MPJPE reached at the last iteration, since the question here is where each method ends up.
  The line search starts from the tuned GD step size (and grows ×2 from the last accepted step).
* The one-step start is Θ_1 of the learned fit from its own initial guess (zero, or its learned
  first guess); the learned curve of that start continues the same fit, so its training window
  ends one iteration earlier (N - 1), and that is what is shaded.
* Wall time: each method's program is compiled ahead of time (``jit(...).lower(...).compile()``)
  and only the executions are timed (summed over the held-out batches, blocking on the result);
  compilation and the per-iteration metrics are excluded, recording the per-step loss and gradient
  norm is included (every method pays it).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgd_jax import baselines, evaluation, lgd, training
from lgd_jax.data import augment
from lgd_jax.objective import Problem

STARTS = ("zero", "one_step")
START_LABELS = {"zero": "zero pose", "one_step": "one learned step"}
CURVES = ("mpjpe_mm", "pa_mpjpe_mm", "reproj", "grad_norm")
METHOD_LABELS = {"lgd": "learned (ours)", "gd": "gradient descent",
                 "gd_ls": "gradient descent + line search", "adam": "Adam",
                 "smplify": "SMPLify-style (priors)"}
METHOD_COLORS = {"lgd": "C0", "gd": "C3", "gd_ls": "C2", "adam": "C1", "smplify": "C4"}
LGD_BEYOND_COLOR = "#9ecae1"  # the learned curve beyond the training window (light blue)
# (file name, start, methods) of the paper's four figures.
FIGURES = (("fig1_gd_zero.png", "zero", ("lgd", "gd", "gd_ls")),
           ("fig2_gd_one_step.png", "one_step", ("lgd", "gd", "gd_ls")),
           ("fig3_adam_zero.png", "zero", ("lgd", "adam")),
           ("fig4_adam_one_step.png", "one_step", ("lgd", "adam")))
REPORT_ITERS = (10, 100)


@functools.partial(jax.jit, static_argnames=("method", "learner", "num_iters"))
def _trajectory(method: str, problem: Problem, learner: lgd.Learner | None, variables,
                setting, theta0, kp2d, conf, num_iters: int):
  """One method's fit from ``theta0``; ``setting`` is its tuned number (traced).

  Returns:
    (:class:`lgd.Trajectory`, the line search's :class:`baselines.LineSearchInfo` or None).
  """
  if method == "lgd":
    return lgd.fit(learner, variables, problem, kp2d, conf, num_iters, train=False,
                   theta0=theta0)[0], None
  if method in ("gd", "adam"):
    tx = optax.sgd(setting) if method == "gd" else optax.adam(setting)
    return lgd.run_optimizer(problem, tx, theta0, kp2d, conf, num_iters), None
  if method == "gd_ls":
    return baselines.gd_line_search(problem, theta0, kp2d, conf, num_iters, init_step=setting)
  if method == "smplify":
    return baselines.smplify(problem, kp2d, conf, baselines.smplify_stages(num_iters),
                             pose_prior=variables, prior_scale=setting, theta0=theta0), None
  raise ValueError(f"method: unknown {method!r}")


@jax.jit
def _curves(problem: Problem, traj: lgd.Trajectory, gt_theta) -> dict:
  """Per-iteration means over the batch of :data:`CURVES` (and PCK, AUC)."""
  out = training.trajectory_metrics(problem, traj, gt_theta)
  out["grad_norm"] = traj.grad_norm.mean(-1)
  return out


@functools.partial(jax.jit, static_argnames=("learner",))
def one_step_start(learner: lgd.Learner, variables, problem: Problem, kp2d, conf):
  """Θ_1 of the learned fit (inference mode) from its own initial guess."""
  traj, _ = lgd.fit(learner, variables, problem, kp2d, conf, 1, train=False)
  return traj.theta[1]


class _Runner:
  """Compiles each method's program once per batch shape and times only its executions."""

  def __init__(self, restored, num_iters: int, prior):
    self.r = restored
    self.num_iters = num_iters
    self.prior = prior
    self.compiled = {}

  def _args(self, method, setting, theta0, batch):
    learner = self.r.learner if method == "lgd" else None
    variables = (self.r.variables if method == "lgd" else self.prior if method == "smplify"
                 else None)
    setting = jnp.float32(0.0 if setting is None else setting)
    return (method, self.r.problem, learner, variables, setting, theta0, batch.kp2d, batch.conf,
            self.num_iters)

  def __call__(self, method, setting, theta0, batch: training.Batch):
    """(trajectory, line-search info or None, seconds of the compiled execution)."""
    args = self._args(method, setting, theta0, batch)
    key = (method, theta0.shape)
    if key not in self.compiled:
      self.compiled[key] = _trajectory.lower(*args).compile()
    t0 = time.perf_counter()
    traj, info = jax.block_until_ready(self.compiled[key](*_drop_static(args)))
    return traj, info, time.perf_counter() - t0


def _drop_static(args):
  """The arguments a compiled :func:`_trajectory` takes: all but method, learner, num_iters."""
  method, problem, learner, variables, setting, theta0, kp2d, conf, _ = args
  del method, learner
  return problem, variables, setting, theta0, kp2d, conf


def _tune(runner: _Runner, method, grid, theta0, batch):
  scores = {}
  for c in grid:
    traj, _, _ = runner(method, float(c), theta0, batch)
    scores[float(c)] = float(_curves(runner.r.problem, traj, batch.theta)["pa_mpjpe_mm"][-1])
  finite = {c: s for c, s in scores.items() if np.isfinite(s)}
  return (min(finite, key=finite.get) if finite else float(grid[0])), scores


def run(restored: evaluation.Restored, out_dir: str, num_iters: int = 100,
        num_samples: int = 256, batch_size: int = 256, log=print, data: str | None = None,
        include_smplify: bool = True, overwrite: bool = False,
        methods: tuple[str, ...] | None = None, write_files: bool = True,
        detector=None) -> dict:
  """Runs the convergence analysis and writes its figures, CSV and summary to ``out_dir``.

  Args:
    restored: :func:`lgd_jax.evaluation.restore` of a checkpoint.
    out_dir: output directory (created).
    num_iters: iterations of every method (the paper: at least 100).
    num_samples: held-out samples (the same stream as :func:`evaluation.evaluate`).
    batch_size: samples per compiled run.
    log: progress lines.
    data: ``--data`` of evaluate.py (None = the checkpoint's own pose data).
    include_smplify: add the SMPLify-style fit to the summary table.
    overwrite: replace an earlier analysis in ``out_dir`` (otherwise refused before any work).
    methods: the methods to run (default: all of :data:`METHOD_LABELS`, SMPLify-style only with
      ``include_smplify``); e.g. ("lgd",) for the learned curves alone.
    write_files: write the figures, CSV and summary (otherwise only return the summary).
    detector: a :class:`lgd_jax.data.augment.DetectorSettings` for detector-like 2D inputs of the
      held-out samples (None: exact inputs).

  Returns:
    The summary dictionary (also written as ``summary.json``), with per start and method the
    curves (lists over iterations 0..num_iters), the tuned settings, the errors at 10 / 100 /
    ``num_iters`` iterations and the wall times.
  """
  r = restored
  num_iters = int(num_iters)
  if num_iters < 2:
    raise training.ConfigError(f"--steps: expected an integer >= 2, got {num_iters}")
  earlier = [f for f in ("summary.json", "convergence.csv") if os.path.exists(
      os.path.join(out_dir, f))] if write_files else []
  if earlier and not overwrite:
    raise training.ConfigError(f"{os.path.join(out_dir, earlier[0])}: the output directory holds "
                               "an earlier analysis; expected an empty directory or --overwrite")
  window = int(r.config.num_steps)
  name, source = evaluation.held_out_source(r.config, data)
  seed = int(r.config.val_seed) + 1  # as evaluation.evaluate: not the training's validation set
  det = augment.DetectorSettings() if detector is None else detector
  batches = training.validation_batches(r.config, r.problem, source, num_samples, seed,
                                        batch_size, det)
  sizes = [b.theta.shape[0] for b in batches]
  tuning = training.validation_batches(r.config, r.problem, source, sizes[0],
                                       seed + evaluation.TUNING_SEED_OFFSET, sizes[0], det)[0]
  log(f"convergence analysis of {r.path}: {sum(sizes)} held-out {name} samples "
      f"({evaluation.input_label(det)} 2D input), {num_iters} iterations, training window "
      f"N = {window}")

  methods = list(methods) if methods is not None else \
      ["lgd", "gd", "gd_ls", "adam"] + (["smplify"] if include_smplify else [])
  unknown = [m for m in methods if m not in METHOD_LABELS]
  if unknown:
    raise ValueError(f"methods: unknown {unknown}, expected names from {tuple(METHOD_LABELS)}")
  prior = baselines.config_pose_prior(r.config, log=log) if "smplify" in methods else None
  runner = _Runner(r, num_iters, prior)

  def starts_of(batch):
    zero = jnp.zeros_like(batch.theta)
    return {"zero": zero, "one_step": one_step_start(r.learner, r.variables, r.problem,
                                                     batch.kp2d, batch.conf)}

  tuning_starts = starts_of(tuning)
  batch_starts = [starts_of(b) for b in batches]
  grids = {"gd": evaluation.GD_STEP_SIZES, "adam": evaluation.ADAM_LEARNING_RATES,
           "smplify": baselines.PRIOR_SCALES}

  results = {s: {} for s in STARTS}
  settings = {s: {} for s in STARTS}
  timing = {s: {} for s in STARTS}
  for start in STARTS:
    for method in methods:
      t0 = time.perf_counter()
      setting = None
      if method in grids:
        setting, scores = _tune(runner, method, grids[method], tuning_starts[start], tuning)
        settings[start][method] = {"value": setting, "tuning_pa_mpjpe_mm": scores}
      elif method == "gd_ls":
        setting = settings[start].get("gd", {}).get("value", baselines.GD_LS_INIT_STEP)
        settings[start][method] = {"value": setting, "note": "initial step = tuned GD step"}
      per_batch, seconds, infos = [], 0.0, []
      for b, st in zip(batches, batch_starts):
        traj, info, dt = runner(method, setting, st[start], b)
        seconds += dt
        per_batch.append(jax.device_get(_curves(r.problem, traj, b.theta)))
        infos.append(info)
      if method == "gd_ls":
        settings[start][method]["evals_per_iter"] = _line_search_evals(infos)
      curves = training.mean_over_batches(per_batch, sizes)
      results[start][method] = {k: [float(x) for x in np.asarray(v)] for k, v in curves.items()}
      timing[start][method] = {"run_s": seconds, "ms_per_iter": 1e3 * seconds / num_iters,
                               "total_s_with_compile_and_tuning": time.perf_counter() - t0}
      c = results[start][method]
      log(f"  {START_LABELS[start]:16s} {method:8s} "
          + (f"setting {setting:<6g} " if setting is not None else " " * 15)
          + f"MPJPE {c['mpjpe_mm'][-1]:6.1f} mm, PA-MPJPE {c['pa_mpjpe_mm'][-1]:6.1f} mm, "
          f"2D {c['reproj'][-1]:.4f}, |grad| {c['grad_norm'][-1]:.2e} after {num_iters} "
          f"({seconds:.2f} s)")

  summary = {
      "checkpoint": r.path, "checkpoint_step": r.step, "dataset": name,
      "inputs": evaluation.input_label(det), "detector": det._asdict(),
      "num_samples": int(sum(sizes)), "num_iters": num_iters, "training_window": window,
      "report_iters": sorted({i for i in REPORT_ITERS if i <= num_iters} | {num_iters}),
      "settings": settings, "wall_time": timing, "curves": results,
      "timing_note": ("seconds of the compiled programs' executions over all held-out samples "
                      "(compilation, tuning and metrics excluded), on "
                      f"{jax.devices()[0].platform}"),
  }
  if write_files:
    write(summary, out_dir)
  return summary


def _line_search_evals(infos: list) -> dict:
  """Mean objective evaluations per iteration of the line search (per sample and batched)."""
  return {"per_sample": float(np.mean([np.mean(i.num_evals) for i in infos])),
          "batched_forward_passes": float(np.mean([np.mean(i.batch_trials) + 1 for i in infos])),
          "accepted_fraction": float(np.mean([np.mean(i.accepted) for i in infos]))}


# ----------------------------------------------------------------------------------------------
# Output.


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
           f"{summary['training_window']}); checkpoint `{summary['checkpoint']}`.", "",
           "| start | method | setting | " + " | ".join(
               f"MPJPE@{i} | PA-MPJPE@{i} | 2D@{i}" for i in iters)
           + f" | grad norm@{iters[-1]} | run time (s) | ms / iter |",
           "|" + "---|" * (5 + 3 * len(iters) + 1)]
  for start, per_method in summary["curves"].items():
    for method, c in per_method.items():
      st = summary["settings"][start].get(method, {}).get("value")
      t = summary["wall_time"][start][method]
      cells = [START_LABELS[start], METHOD_LABELS.get(method, method),
               "-" if st is None else f"{st:g}"]
      for i in iters:
        cells += [f"{c['mpjpe_mm'][i]:.1f}", f"{c['pa_mpjpe_mm'][i]:.1f}", f"{c['reproj'][i]:.4f}"]
      cells += [f"{c['grad_norm'][iters[-1]]:.2e}", f"{t['run_s']:.2f}", f"{t['ms_per_iter']:.1f}"]
      lines.append("| " + " | ".join(cells) + " |")
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
      color = METHOD_COLORS.get(method, None)
      label = METHOD_LABELS.get(method, method)
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
