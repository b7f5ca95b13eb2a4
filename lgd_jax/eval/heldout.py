"""Evaluating a trained learned optimiser against classical optimisers on held-out samples.

    from lgd_jax.eval import heldout
    results = heldout.evaluate("runs/demo", num_steps=20)

Everything is rebuilt from the checkpoint (its config names the body model and the data).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lgd_jax import build, parallel
from lgd_jax.data import augment, batches
from lgd_jax.eval import methods as classical_methods
from lgd_jax.eval.reports import NUM_FIGURE_SAMPLES, plot_fits
from lgd_jax.eval.restore import restore
from lgd_jax.fitting import lgd, scoring
from lgd_jax.fitting.objective import Problem

# Step sizes tried for the classical baselines; the best by PA-MPJPE at the training window wins.
GD_STEP_SIZES = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
ADAM_LEARNING_RATES = (0.003, 0.01, 0.03, 0.1, 0.3)
TUNING_SEED_OFFSET = 7919  # the tuning batch's stream, apart from the held-out samples


def parse_data(spec: str | None) -> tuple[str, str | None]:
  """``None``/"synthetic[:KIND]" or "amass:DIR" -> (name, path or kind)."""
  if not spec:
    return "synthetic", None
  name, _, path = spec.partition(":")
  if name == "synthetic":
    from lgd_jax.data import pose_sources
    kinds = tuple(pose_sources.SOURCES) + ("train",)
    if path and path not in kinds:
      raise build.ConfigError(f"--data: expected 'synthetic:' + one of {kinds}, got {spec!r}")
    return name, path or None
  if name != "amass" or not path:
    raise build.ConfigError(f"--data: expected 'synthetic', 'synthetic:KIND' or 'amass:DIR', "
                               f"got {spec!r}")
  return name, path


def held_out_source(config, data: str | None) -> tuple[str, batches.PoseSource]:
  """The held-out poses of ``--data``; without it, those of the checkpoint's own data (for
  synthetic training poses: the held-out test generator ``test_poses``, built differently)."""
  name, path = parse_data(data)
  amass_dir = path if name == "amass" else (config.amass_dir if data is None else "")
  if not amass_dir:
    if name == "synthetic" and path == "train":
      src = build.synthetic_source(config, "train")
    elif name == "synthetic" and path:
      src = batches.PoseSource(kind=path)
    else:
      src = build.synthetic_source(config, "test")
    return f"synthetic-{src.kind}", src
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.amass_dir = amass_dir
  data = build.load_amass(cfg)  # only the held-out split goes to the device
  return "amass-val", build.amass_source(data, "val" if data["val_poses"].shape[0] else "train")


@functools.partial(jax.jit, static_argnames=("method", "num_steps"))
def eval_baseline(problem: Problem, method: str, step_size, batch: batches.Batch, num_steps: int):
  """Per-step metrics of gradient descent or Adam from the zero start, and the parameters."""
  tx = optax.sgd(step_size) if method == "gd" else optax.adam(step_size)
  theta0 = jnp.zeros_like(batch.theta)
  traj = lgd.run_optimizer(problem, tx, theta0, batch.kp2d, batch.conf, num_steps)
  return scoring.trajectory_metrics(problem, traj, batch.theta), traj.theta


def tune(problem: Problem, method: str, candidates, batch: batches.Batch, window: int,
         num_steps: int):
  """The candidate step size with the lowest mean PA-MPJPE after ``window`` steps (an oracle
  choice that favours the baseline), and the scores. The runs are ``num_steps`` long so that they
  share the compiled program of the evaluation itself."""
  scores = {float(c): float(eval_baseline(problem, method, c, batch, num_steps)[0][
      "pa_mpjpe_mm"][window]) for c in candidates}
  finite = {c: s for c, s in scores.items() if np.isfinite(s)}
  best = min(finite, key=finite.get) if finite else float(candidates[0])
  return best, scores


def evaluate(ckpt: str, num_steps: int | None = None, data: str | None = None,
             num_samples: int = 1024, batch_size: int = 512, log=print,
             fits_png: str | None = None, classical: bool = True, detector=None,
             until_converged: bool = False, tol: float = 1e-4) -> dict:
  """Evaluates LGD, tuned GD and tuned Adam for ``num_steps`` (default max(20, 2N)) steps, and
  with ``classical`` also GD with a line search and the SMPLify-style fit (eval/methods.py).

  Returns the ``results.json`` dictionary: per method, each metric as a list over steps 0..M.
  ``fits_png``: also draw a few held-out samples' fitted bodies after N steps there.
  ``detector``: a :class:`lgd_jax.data.augment.DetectorSettings` for detector-like 2D inputs
  (None: exact inputs). ``until_converged``: add "lgd_converged", the learned update with the
  stopping rule (relative change of the objective <= ``tol``, at most M steps); its curves hold
  each sample's final state after its stop, and ``stop_steps`` records where they stopped.
  """
  r = restore(ckpt)
  window = int(r.config.num_steps)
  num_steps = max(20, 2 * window) if num_steps is None else int(num_steps)
  if num_steps < 1:
    raise build.ConfigError(f"--steps: expected a positive integer, got {num_steps}")
  name, source = held_out_source(r.config, data)
  seed = int(r.config.val_seed) + 1  # not the validation batches seen during training
  det = augment.DetectorSettings() if detector is None else detector
  batches = build.validation_batches(r.config, r.problem, source, num_samples, seed,
                                        batch_size, det)
  sizes = [b.theta.shape[0] for b in batches]
  # A separate batch of the evaluation batches' shape, so tuning reuses their compiled programs.
  tuning = build.validation_batches(r.config, r.problem, source, sizes[0],
                                       seed + TUNING_SEED_OFFSET, sizes[0], det)[0]
  mesh = parallel.make_mesh()
  batches = [parallel.shard_batch(b, mesh) for b in batches]
  tuning = parallel.shard_batch(tuning, mesh)
  log(f"evaluating {r.path} on {sum(sizes)} held-out {name} samples "
      f"({input_label(det)} 2D input), {num_steps} steps (training window N = {window})")

  methods, settings, timing, fits = {}, {}, {}, {}
  t0 = time.perf_counter()
  res = [scoring.eval_lgd(r.learner, r.variables, r.problem, b, num_steps) for b in batches]
  methods["lgd"] = scoring.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
  fits["lgd"] = res[0][1][min(window, num_steps), :NUM_FIGURE_SAMPLES]
  timing["lgd"] = time.perf_counter() - t0
  stops = None
  if until_converged:
    stops = _until_converged(r, batches, sizes, window, num_steps, tol, methods, timing, log)
  for method, grid in (("gd", GD_STEP_SIZES), ("adam", ADAM_LEARNING_RATES)):
    t0 = time.perf_counter()
    best, scores = tune(r.problem, method, grid, tuning, min(window, num_steps), num_steps)
    settings[method] = {"step_size": best, "tuning_pa_mpjpe_mm": scores}
    res = [eval_baseline(r.problem, method, best, b, num_steps) for b in batches]
    methods[method] = scoring.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
    fits[method] = res[0][1][min(window, num_steps), :NUM_FIGURE_SAMPLES]
    timing[method] = time.perf_counter() - t0
    log(f"  {method}: step size {best:g} (tuned on PA-MPJPE at step {window})")
  if classical:
    _classical(r, batches, tuning, sizes, window, num_steps, methods, settings, timing, fits, log)
  if fits_png:
    plot_fits(r.problem, batches[0], fits, min(window, num_steps), fits_png)
  return {
      "dataset": name,
      "num_samples": int(sum(sizes)),
      "checkpoint": r.path,
      "checkpoint_step": r.step,
      "num_steps": num_steps,
      "training_window": window,
      "keypoints": r.config.keypoints,
      "methods": {m: {k: [float(x) for x in np.asarray(v)] for k, v in vals.items()}
                  for m, vals in methods.items()},
      "baseline_settings": settings,
      "wall_time_s": timing,
      "inputs": input_label(det), "detector": det._asdict(),
      **({"stop_steps": stops} if stops else {}),
  }


def input_label(det) -> str:
  return "detector-like" if det.enabled else "exact"


@functools.partial(jax.jit, static_argnames=("learner", "num_steps", "min_steps"))
def eval_lgd_converged(learner, variables, problem, batch: batches.Batch, num_steps: int, tol,
                       min_steps: int):
  """Per-step metrics of the learned fit with the stopping rule, and each sample's stop."""
  traj, stop = lgd.fit_until_converged(learner, variables, problem, batch.kp2d, batch.conf,
                                       num_steps, tol, min_steps)
  return scoring.trajectory_metrics(problem, traj, batch.theta), stop.steps


def _until_converged(r, batches, sizes, window, num_steps, tol, methods, timing, log) -> dict:
  """"lgd_converged": the learned update with the stopping rule; returns where it stopped."""
  t0 = time.perf_counter()
  res = [eval_lgd_converged(r.learner, r.variables, r.problem, b, num_steps, tol,
                            min(window, num_steps)) for b in batches]
  methods["lgd_converged"] = scoring.mean_over_batches(jax.device_get([m for m, _ in res]),
                                                        sizes)
  steps = np.concatenate([np.asarray(s) for _, s in res])
  stops = {"tol": tol, "mean": float(steps.mean()), "median": float(np.median(steps)),
           "max": int(steps.max()), "converged_fraction": float(np.mean(steps < num_steps))}
  timing["lgd_converged"] = time.perf_counter() - t0
  log(f"  lgd_converged: stopped after {stops['mean']:.1f} steps on average (tol {tol:g})")
  return stops


def _classical(r, batches, tuning, sizes, window, num_steps, methods, settings, timing, fits, log):
  """GD with an Armijo line search (first trial step: GD's tuned step) and the SMPLify-style fit
  (pose prior fitted to the training poses; its global prior scale tuned like the step sizes)."""
  t0 = time.perf_counter()
  ls = {"init_step": settings["gd"]["step_size"]}
  res = [classical_methods.eval_method(r.problem, "gd_ls", ls, b, num_steps) for b in batches]
  methods["gd_ls"] = scoring.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
  fits["gd_ls"] = res[0][1][min(window, num_steps), :NUM_FIGURE_SAMPLES]
  settings["gd_ls"] = ls
  timing["gd_ls"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  prior = build.config_pose_prior(r.config)
  best, scores = classical_methods.tune_smplify(r.problem, tuning, num_steps,
                                                  min(window, num_steps), pose_prior=prior)
  sm = {"prior_scale": best, "pose_prior": prior}
  res = [classical_methods.eval_method(r.problem, "smplify", sm, b, num_steps) for b in batches]
  methods["smplify"] = scoring.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
  fits["smplify"] = res[0][1][min(window, num_steps), :NUM_FIGURE_SAMPLES]
  settings["smplify"] = {"prior_scale": best, "tuning_pa_mpjpe_mm": scores}
  timing["smplify"] = time.perf_counter() - t0
  log(f"  gd_ls: first trial step {ls['init_step']:g}; smplify: prior scale {best:g}")
