"""The paper's convergence analysis (supplementary §2, Figs 1-4).

On held-out samples, from (a) the zero pose and (b) the result of one learned step, run the learned
update, gradient descent (tuned step size), gradient descent with a backtracking line search and
Adam (tuned learning rate) on the same objective for ``num_iters`` iterations, and record per
iteration the 3D error (MPJPE, PA-MPJPE), the 2D re-projection error (the objective) and the true
gradient norm ||∂L/∂Θ_n|| (not ||ΔΘ||). A SMPLify-style fit
(:func:`lgd_jax.fitting.smplify.smplify`, with its priors) is added to the summary table as the
classical anchor.

    from lgd_jax.eval import convergence, restore
    summary = convergence.run(restore.restore("runs/demo"), "runs/demo/convergence")

Writes ``fig1_gd_zero.png``, ``fig2_gd_one_step.png``, ``fig3_adam_zero.png``,
``fig4_adam_one_step.png`` (three panels each, the training window shaded, the learned curve
lighter beyond it), ``convergence.csv`` (long format), ``summary.json`` and ``summary.md``
(:mod:`lgd_jax.eval.convergence_outputs`).

Choices:

* Step sizes are tuned per start, like :func:`lgd_jax.eval.heldout.tune` (an oracle choice that
  favours the baselines: the ground truth of a separate tuning batch picks from
  ``heldout.GD_STEP_SIZES`` / ``ADAM_LEARNING_RATES`` / ``smplify.PRIOR_SCALES``), but on the
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

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgd_jax import build
from lgd_jax.data import augment, batches
from lgd_jax.eval import heldout, restore
from lgd_jax.eval.convergence_outputs import (
  CURVES,
  FIGURES,
  START_LABELS,
  STARTS,
  plot,
  table,
  write,
)
from lgd_jax.fitting import lgd, linesearch, scoring, smplify
from lgd_jax.fitting.objective import Problem

# The outputs live in lgd_jax.eval.convergence_outputs; these names stay importable from here.
__all__ = ["STARTS", "START_LABELS", "CURVES", "FIGURES", "METHODS", "TUNING_GRIDS",
           "REPORT_ITERS", "one_step_start", "run", "write", "table", "plot"]

METHODS = ("lgd", "gd", "gd_ls", "adam", "smplify")  # labels: reports.CONVERGENCE_METHOD_LABELS
# The tuned methods' candidates (the line search starts from GD's tuned step instead).
TUNING_GRIDS = {"gd": heldout.GD_STEP_SIZES, "adam": heldout.ADAM_LEARNING_RATES,
                "smplify": smplify.PRIOR_SCALES}
REPORT_ITERS = (10, 100)


@functools.partial(jax.jit, static_argnames=("method", "learner", "num_iters"))
def _trajectory(method: str, problem: Problem, learner: lgd.Learner | None, variables,
                setting, theta0, kp2d, conf, num_iters: int):
  """One method's fit from ``theta0``; ``setting`` is its tuned number (traced).

  Returns:
    (:class:`lgd.Trajectory`, the line search's :class:`linesearch.LineSearchInfo` or None).
  """
  if method == "lgd":
    return lgd.fit(learner, variables, problem, kp2d, conf, num_iters, train=False,
                   theta0=theta0)[0], None
  if method in ("gd", "adam"):
    tx = optax.sgd(setting) if method == "gd" else optax.adam(setting)
    return lgd.run_optimizer(problem, tx, theta0, kp2d, conf, num_iters), None
  if method == "gd_ls":
    return linesearch.gd_line_search(problem, theta0, kp2d, conf, num_iters, init_step=setting)
  if method == "smplify":
    return smplify.smplify(problem, kp2d, conf, smplify.smplify_stages(num_iters),
                             pose_prior=variables, prior_scale=setting, theta0=theta0), None
  raise ValueError(f"method: unknown {method!r}")


@jax.jit
def _curves(problem: Problem, traj: lgd.Trajectory, gt_theta) -> dict:
  """Per-iteration means over the batch of :data:`CURVES` (and PCK, AUC)."""
  out = scoring.trajectory_metrics(problem, traj, gt_theta)
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

  def __call__(self, method, setting, theta0, batch: batches.Batch):
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


def run(restored: restore.Restored, out_dir: str, num_iters: int = 100,
        num_samples: int = 256, batch_size: int = 256, log=print, data: str | None = None,
        include_smplify: bool = True, overwrite: bool = False,
        methods: tuple[str, ...] | None = None, write_files: bool = True,
        detector=None) -> dict:
  """Runs the convergence analysis and writes its figures, CSV and summary to ``out_dir``.

  Args:
    restored: :func:`lgd_jax.eval.restore.restore` of a checkpoint.
    out_dir: output directory (created).
    num_iters: iterations of every method (the paper: at least 100).
    num_samples: held-out samples (the same stream as :func:`heldout.evaluate`).
    batch_size: samples per compiled run.
    log: progress lines.
    data: ``--data`` of evaluate.py (None = the checkpoint's own pose data).
    include_smplify: add the SMPLify-style fit to the summary table.
    overwrite: replace an earlier analysis in ``out_dir`` (otherwise refused before any work).
    methods: the methods to run (default: all of :data:`METHODS`, SMPLify-style only with
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
  _check_run(num_iters, out_dir, write_files, overwrite)
  window = int(r.config.num_steps)
  name, source = heldout.held_out_source(r.config, data)
  det = augment.DetectorSettings() if detector is None else detector
  held_out, tuning = _held_out_batches(r, source, num_samples, batch_size, det)
  sizes = [b.theta.shape[0] for b in held_out]
  log(f"convergence analysis of {r.path}: {sum(sizes)} held-out {name} samples "
      f"({heldout.input_label(det)} 2D input), {num_iters} iterations, training window "
      f"N = {window}")
  methods = _methods(methods, include_smplify)
  prior = build.config_pose_prior(r.config, log=log) if "smplify" in methods else None
  runner = _Runner(r, num_iters, prior)
  results, settings, timing = _run_methods(runner, methods, held_out, tuning, log)
  summary = {
      "checkpoint": r.path, "checkpoint_step": r.step, "dataset": name,
      "inputs": heldout.input_label(det), "detector": det._asdict(),
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


def _check_run(num_iters: int, out_dir: str, write_files: bool, overwrite: bool) -> None:
  """Refuses fewer than 2 iterations, and an earlier analysis in ``out_dir`` without
  ``overwrite``, before any work."""
  if num_iters < 2:
    raise build.ConfigError(f"--steps: expected an integer >= 2, got {num_iters}")
  earlier = [f for f in ("summary.json", "convergence.csv") if os.path.exists(
      os.path.join(out_dir, f))] if write_files else []
  if earlier and not overwrite:
    raise build.ConfigError(f"{os.path.join(out_dir, earlier[0])}: the output directory holds "
                               "an earlier analysis; expected an empty directory or --overwrite")


def _held_out_batches(r: restore.Restored, source, num_samples: int, batch_size: int, det):
  """The held-out batches (the stream of :func:`heldout.evaluate`, not the training's validation
  set) and a separate tuning batch of the first one's size."""
  seed = int(r.config.val_seed) + 1
  held_out = build.validation_batches(r.config, r.problem, source, num_samples, seed,
                                      batch_size, det)
  size = held_out[0].theta.shape[0]
  tuning = build.validation_batches(r.config, r.problem, source, size,
                                    seed + heldout.TUNING_SEED_OFFSET, size, det)[0]
  return held_out, tuning


def _methods(methods: tuple[str, ...] | None, include_smplify: bool) -> list[str]:
  """The methods to run: ``methods`` (checked against :data:`METHODS`) or all of them, the
  SMPLify-style fit only with ``include_smplify``."""
  methods = list(methods) if methods is not None else \
      ["lgd", "gd", "gd_ls", "adam"] + (["smplify"] if include_smplify else [])
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"methods: unknown {unknown}, expected names from {METHODS}")
  return methods


def _run_methods(runner: _Runner, methods: list[str], held_out: list, tuning: batches.Batch,
                 log) -> tuple[dict, dict, dict]:
  """Every method from every start: ({start: {method: curves}}, the tuned settings, the wall
  times), each keyed by start, then method."""
  r = runner.r

  def starts_of(batch):
    zero = jnp.zeros_like(batch.theta)
    return {"zero": zero, "one_step": one_step_start(r.learner, r.variables, r.problem,
                                                     batch.kp2d, batch.conf)}

  tuning_starts = starts_of(tuning)
  batch_starts = [starts_of(b) for b in held_out]
  sizes = [b.theta.shape[0] for b in held_out]
  results = {s: {} for s in STARTS}
  settings = {s: {} for s in STARTS}
  timing = {s: {} for s in STARTS}
  for start in STARTS:
    for method in methods:
      t0 = time.perf_counter()
      setting = _setting(runner, method, settings[start], tuning_starts[start], tuning)
      per_batch, seconds, infos = [], 0.0, []
      for b, st in zip(held_out, batch_starts):
        traj, info, dt = runner(method, setting, st[start], b)
        seconds += dt
        per_batch.append(jax.device_get(_curves(r.problem, traj, b.theta)))
        infos.append(info)
      if method == "gd_ls":
        settings[start][method]["evals_per_iter"] = _line_search_evals(infos)
      curves = scoring.mean_over_batches(per_batch, sizes)
      results[start][method] = {k: [float(x) for x in np.asarray(v)] for k, v in curves.items()}
      timing[start][method] = {"run_s": seconds, "ms_per_iter": 1e3 * seconds / runner.num_iters,
                               "total_s_with_compile_and_tuning": time.perf_counter() - t0}
      _log_method(log, start, method, setting, results[start][method], runner.num_iters, seconds)
  return results, settings, timing


def _setting(runner: _Runner, method: str, start_settings: dict, theta0, tuning: batches.Batch):
  """The method's setting for one start (None for the learned update), tuned on ``tuning`` from
  ``theta0`` where it has a grid; recorded in ``start_settings`` (the start's settings so far)."""
  if method in TUNING_GRIDS:
    setting, scores = _tune(runner, method, TUNING_GRIDS[method], theta0, tuning)
    start_settings[method] = {"value": setting, "tuning_pa_mpjpe_mm": scores}
    return setting
  if method == "gd_ls":
    setting = start_settings.get("gd", {}).get("value", linesearch.GD_LS_INIT_STEP)
    start_settings[method] = {"value": setting, "note": "initial step = tuned GD step"}
    return setting
  return None


def _log_method(log, start: str, method: str, setting, c: dict, num_iters: int,
                seconds: float) -> None:
  log(f"  {START_LABELS[start]:16s} {method:8s} "
      + (f"setting {setting:<6g} " if setting is not None else " " * 15)
      + f"MPJPE {c['mpjpe_mm'][-1]:6.1f} mm, PA-MPJPE {c['pa_mpjpe_mm'][-1]:6.1f} mm, "
      f"2D {c['reproj'][-1]:.4f}, |grad| {c['grad_norm'][-1]:.2e} after {num_iters} "
      f"({seconds:.2f} s)")


def _line_search_evals(infos: list) -> dict:
  """Mean objective evaluations per iteration of the line search (per sample and batched)."""
  return {"per_sample": float(np.mean([np.mean(i.num_evals) for i in infos])),
          "batched_forward_passes": float(np.mean([np.mean(i.batch_trials) + 1 for i in infos])),
          "accepted_fraction": float(np.mean([np.mean(i.accepted) for i in infos]))}
