"""Evaluating a trained learned optimiser against classical optimisers on held-out samples.

    from lgd_jax import evaluation
    results = evaluation.evaluate("runs/demo", num_steps=20)

Everything is rebuilt from the checkpoint (its config names the body model and the data).
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lgd_jax import checkpoints, lgd, objective, parallel, training
from lgd_jax.data import augment
from lgd_jax.objective import Problem

METRICS = ("mpjpe_mm", "pa_mpjpe_mm", "pck150", "auc", "reproj")
# Step sizes tried for the classical baselines; the best by PA-MPJPE at the training window wins.
GD_STEP_SIZES = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
ADAM_LEARNING_RATES = (0.003, 0.01, 0.03, 0.1, 0.3)
TUNING_SEED_OFFSET = 7919  # the tuning batch's stream, apart from the held-out samples
NUM_FIGURE_SAMPLES = 3  # held-out samples drawn by plot_fits
METHOD_LABELS = {"lgd": "learned (ours)", "lgd_converged": "learned, until converged",
                 "gd": "gradient descent", "adam": "Adam",
                 "gd_ls": "GD + line search", "smplify": "SMPLify-style"}


@dataclass
class Restored:
  config: ml_collections.ConfigDict
  problem: Problem
  learner: lgd.Learner
  variables: dict
  step: int
  path: str


def restore(ckpt: str | os.PathLike | None = None) -> Restored:
  """Rebuilds the body model, the problem and the learner from a checkpoint alone.

  ``ckpt``: a training workdir, one checkpoint's directory, or a pretrained ``.npz``; None (or
  "pretrained") is the packaged pretrained model (:mod:`lgd_jax.pretrained`).
  """
  from lgd_jax import pretrained
  if pretrained.is_pretrained(ckpt):
    return _restore_pretrained(ckpt)
  directory, step = checkpoints.locate(ckpt)
  config = checkpoints.read_config(directory, step)
  model = training.load_body_model(config)
  problem = training.make_problem(config, model)
  learner = training.make_learner(config, problem)
  tx = training.make_optimizer(config, 1)
  template = training.new_state(config, learner, problem, tx)
  state = checkpoints.restore_verified(checkpoints.manager_at(directory), step, template)
  # Replicated over every device: evaluation, benchmarks and detection fitting split their
  # batches over the same mesh (parallel.shard_batch).
  mesh = parallel.make_mesh()
  variables = parallel.replicate({"params": state.params, "batch_stats": state.batch_stats}, mesh)
  problem = parallel.replicate(problem, mesh)
  return Restored(config, problem, learner, variables, step, str(directory / str(step)))


def _restore_pretrained(ckpt) -> Restored:
  from lgd_jax import pretrained
  config, flat_vars, meta, path = pretrained.load(ckpt)
  model = training.load_body_model(config)
  problem = training.make_problem(config, model)
  learner = training.make_learner(config, problem)
  template = learner.init(jax.random.PRNGKey(0), problem)
  loaded = {}

  def take(key_path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in key_path)
    node = flat_vars
    for part in name.split("/"):
      if not isinstance(node, dict) or part not in node:
        raise pretrained.PretrainedError(f"{path}: no variable {name!r} for its config's network")
      node = node[part]
    if np.shape(node) != np.shape(leaf):
      raise pretrained.PretrainedError(f"{path}: variable {name!r} has shape {np.shape(node)}, "
                                       f"expected {np.shape(leaf)}")
    loaded[name] = True
    return jnp.asarray(node, leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(take, template)
  mesh = parallel.make_mesh()
  variables = parallel.replicate(variables, mesh)
  problem = parallel.replicate(problem, mesh)
  return Restored(config, problem, learner, variables, int(meta.get("step", 0)), str(path))


def parse_data(spec: str | None) -> tuple[str, str | None]:
  """``None``/"synthetic[:KIND]" or "amass:DIR" -> (name, path or kind)."""
  if not spec:
    return "synthetic", None
  name, _, path = spec.partition(":")
  if name == "synthetic":
    from lgd_jax.data import pose_sources
    kinds = tuple(pose_sources.SOURCES) + ("train",)
    if path and path not in kinds:
      raise training.ConfigError(f"--data: expected 'synthetic:' + one of {kinds}, got {spec!r}")
    return name, path or None
  if name != "amass" or not path:
    raise training.ConfigError(f"--data: expected 'synthetic', 'synthetic:KIND' or 'amass:DIR', "
                               f"got {spec!r}")
  return name, path


def held_out_source(config, data: str | None) -> tuple[str, training.PoseSource]:
  """The held-out poses of ``--data``; without it, those of the checkpoint's own data (for
  synthetic training poses: the held-out test generator ``test_poses``, built differently)."""
  name, path = parse_data(data)
  amass_dir = path if name == "amass" else (config.amass_dir if data is None else "")
  if not amass_dir:
    if name == "synthetic" and path == "train":
      src = training.synthetic_source(config, "train")
    elif name == "synthetic" and path:
      src = training.PoseSource(kind=path)
    else:
      src = training.synthetic_source(config, "test")
    return f"synthetic-{src.kind}", src
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.amass_dir = amass_dir
  data = training.load_amass(cfg)  # only the held-out split goes to the device
  return "amass-val", training.amass_source(data, "val" if data["val_poses"].shape[0] else "train")


@functools.partial(jax.jit, static_argnames=("method", "num_steps"))
def eval_baseline(problem: Problem, method: str, step_size, batch: training.Batch, num_steps: int):
  """Per-step metrics of gradient descent or Adam from the zero start, and the parameters."""
  tx = optax.sgd(step_size) if method == "gd" else optax.adam(step_size)
  theta0 = jnp.zeros_like(batch.theta)
  traj = lgd.run_optimizer(problem, tx, theta0, batch.kp2d, batch.conf, num_steps)
  return training.trajectory_metrics(problem, traj, batch.theta), traj.theta


def tune(problem: Problem, method: str, candidates, batch: training.Batch, window: int,
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
  with ``classical`` also GD with a line search and the SMPLify-style fit (baselines.py).

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
    raise training.ConfigError(f"--steps: expected a positive integer, got {num_steps}")
  name, source = held_out_source(r.config, data)
  seed = int(r.config.val_seed) + 1  # not the validation batches seen during training
  det = augment.DetectorSettings() if detector is None else detector
  batches = training.validation_batches(r.config, r.problem, source, num_samples, seed,
                                        batch_size, det)
  sizes = [b.theta.shape[0] for b in batches]
  # A separate batch of the evaluation batches' shape, so tuning reuses their compiled programs.
  tuning = training.validation_batches(r.config, r.problem, source, sizes[0],
                                       seed + TUNING_SEED_OFFSET, sizes[0], det)[0]
  mesh = parallel.make_mesh()
  batches = [parallel.shard_batch(b, mesh) for b in batches]
  tuning = parallel.shard_batch(tuning, mesh)
  log(f"evaluating {r.path} on {sum(sizes)} held-out {name} samples "
      f"({input_label(det)} 2D input), {num_steps} steps (training window N = {window})")

  methods, settings, timing, fits = {}, {}, {}, {}
  t0 = time.perf_counter()
  res = [training.eval_lgd(r.learner, r.variables, r.problem, b, num_steps) for b in batches]
  methods["lgd"] = training.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
  fits["lgd"] = res[0][1][min(window, num_steps), :NUM_FIGURE_SAMPLES]
  timing["lgd"] = time.perf_counter() - t0
  stops = None
  if until_converged:
    t0 = time.perf_counter()
    res = [eval_lgd_converged(r.learner, r.variables, r.problem, b, num_steps, tol,
                              min(window, num_steps)) for b in batches]
    methods["lgd_converged"] = training.mean_over_batches(jax.device_get([m for m, _ in res]),
                                                          sizes)
    steps = np.concatenate([np.asarray(s) for _, s in res])
    stops = {"tol": tol, "mean": float(steps.mean()), "median": float(np.median(steps)),
             "max": int(steps.max()), "converged_fraction": float(np.mean(steps < num_steps))}
    timing["lgd_converged"] = time.perf_counter() - t0
    log(f"  lgd_converged: stopped after {stops['mean']:.1f} steps on average (tol {tol:g})")
  for method, grid in (("gd", GD_STEP_SIZES), ("adam", ADAM_LEARNING_RATES)):
    t0 = time.perf_counter()
    best, scores = tune(r.problem, method, grid, tuning, min(window, num_steps), num_steps)
    settings[method] = {"step_size": best, "tuning_pa_mpjpe_mm": scores}
    res = [eval_baseline(r.problem, method, best, b, num_steps) for b in batches]
    methods[method] = training.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
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
def eval_lgd_converged(learner, variables, problem, batch: training.Batch, num_steps: int, tol,
                       min_steps: int):
  """Per-step metrics of the learned fit with the stopping rule, and each sample's stop."""
  traj, stop = lgd.fit_until_converged(learner, variables, problem, batch.kp2d, batch.conf,
                                       num_steps, tol, min_steps)
  return training.trajectory_metrics(problem, traj, batch.theta), stop.steps


def _classical(r, batches, tuning, sizes, window, num_steps, methods, settings, timing, fits, log):
  """GD with an Armijo line search (first trial step: GD's tuned step) and the SMPLify-style fit
  (pose prior fitted to the training poses; its global prior scale tuned like the step sizes)."""
  from lgd_jax import baselines
  t0 = time.perf_counter()
  ls = {"init_step": settings["gd"]["step_size"]}
  res = [baselines.eval_method(r.problem, "gd_ls", ls, b, num_steps) for b in batches]
  methods["gd_ls"] = training.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
  fits["gd_ls"] = res[0][1][min(window, num_steps), :NUM_FIGURE_SAMPLES]
  settings["gd_ls"] = ls
  timing["gd_ls"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  prior = baselines.config_pose_prior(r.config)
  best, scores = baselines.tune_smplify(r.problem, tuning, num_steps, min(window, num_steps),
                                        pose_prior=prior)
  sm = {"prior_scale": best, "pose_prior": prior}
  res = [baselines.eval_method(r.problem, "smplify", sm, b, num_steps) for b in batches]
  methods["smplify"] = training.mean_over_batches(jax.device_get([m for m, _ in res]), sizes)
  fits["smplify"] = res[0][1][min(window, num_steps), :NUM_FIGURE_SAMPLES]
  settings["smplify"] = {"prior_scale": best, "tuning_pa_mpjpe_mm": scores}
  timing["smplify"] = time.perf_counter() - t0
  log(f"  gd_ls: first trial step {ls['init_step']:g}; smplify: prior scale {best:g}")


def table(results: dict, steps=None) -> str:
  """The results as a text table: each method at a few steps."""
  m_steps = results["num_steps"]
  window = results["training_window"]
  steps = steps or sorted({0, 1, window, m_steps} & set(range(m_steps + 1)))
  head = f"{'method':8s} {'step':>5s} " + " ".join(f"{k:>12s}" for k in METRICS)
  lines = [head, "-" * len(head)]
  for method, vals in results["methods"].items():
    for s in steps:
      lines.append(f"{method:8s} {s:5d} " + " ".join(f"{vals[k][s]:12.3f}" if k == "reproj"
                                                   else f"{vals[k][s]:12.1f}" for k in METRICS))
  return "\n".join(lines)


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


def plot_fits(problem: Problem, batch: training.Batch, fits: dict, step: int, path: str) -> None:
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

  from lgd_jax import body, render

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
