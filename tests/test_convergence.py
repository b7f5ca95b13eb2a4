"""The convergence analysis (supplementary §2, Figs 1-4) on the tiny checkpoint."""

import csv
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import build
from lgd_jax.eval import convergence, heldout, restore
from lgd_jax.fitting import objective

NUM_ITERS = 12
NUM_SAMPLES = 16
START_ATOL = 1e-4  # the same float32 fit computed by two compiled programs
GRAD_RTOL = 1e-4  # mean gradient norms: vmapped value_and_grad vs one jax.grad per sample
ZERO_POSE_RTOL = 1e-2  # the same at the symmetric zero pose (tied subgradients)
METHODS = ("lgd", "gd", "gd_ls", "adam")


@pytest.fixture(scope="module")
def restored(tiny_checkpoint):
  return restore.restore(tiny_checkpoint)


@pytest.fixture(scope="module")
def analysis(restored, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("convergence"))
  lines = []
  summary = convergence.run(restored, out, num_iters=NUM_ITERS, num_samples=NUM_SAMPLES,
                            batch_size=NUM_SAMPLES, log=lines.append, include_smplify=False)
  return out, summary, lines


def _held_out(restored):
  """The held-out batch, rebuilt the way heldout.evaluate draws it."""
  _, source = heldout.held_out_source(restored.config, None)
  return build.validation_batches(restored.config, restored.problem, source, NUM_SAMPLES,
                                     int(restored.config.val_seed) + 1, NUM_SAMPLES)[0]


@jax.jit
def _mean_grad_norm(problem, theta, batch):
  """||∂L/∂Θ|| of every sample by jax.grad of the objective alone, averaged."""
  grad = jax.vmap(jax.grad(lambda t, x, c: objective.objective(problem, t, x, c)[0]))(
      theta, batch.kp2d, batch.conf)
  return jnp.linalg.norm(grad, axis=-1).mean()


# The analysis fixture runs every method twice over 100 iterations (about 2 minutes on 2 cores):
# its tests are in the slow run.
@pytest.mark.slow
def test_writes_figures_csv_and_summary(analysis):
  out, summary, lines = analysis
  for fname, _, _ in convergence.FIGURES:
    path = os.path.join(out, fname)
    assert os.path.getsize(path) > 10_000, fname
  with open(os.path.join(out, "convergence.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(convergence.STARTS) * len(METHODS) * (NUM_ITERS + 1)
  assert {r["method"] for r in rows} == set(METHODS)
  for key in convergence.CURVES:
    assert all(np.isfinite(float(r[key])) for r in rows)
  with open(os.path.join(out, "summary.json")) as f:
    saved = json.load(f)
  assert saved["num_iters"] == NUM_ITERS and saved["num_samples"] == NUM_SAMPLES
  for start in convergence.STARTS:
    for method in METHODS:
      assert saved["wall_time"][start][method]["run_s"] > 0
      assert len(saved["curves"][start][method]["grad_norm"]) == NUM_ITERS + 1
    for method in ("gd", "adam"):
      tuned = saved["settings"][start][method]
      scores = {float(k): v for k, v in tuned["tuning_pa_mpjpe_mm"].items()}
      assert scores[tuned["value"]] == min(scores.values())
    assert saved["settings"][start]["gd_ls"]["evals_per_iter"]["per_sample"] >= 2
  md = Path(out, "summary.md").read_text()
  assert "| start | method |" in md and "MPJPE@10" in md and f"MPJPE@{NUM_ITERS}" in md
  assert md.count("\n| ") == 1 + len(convergence.STARTS) * len(METHODS)  # header + rows
  assert any("adam" in line for line in lines)


@pytest.mark.slow
def test_one_step_start_is_the_learned_fits_first_step(restored, analysis):
  _, summary, _ = analysis
  assert restored.learner.init_net is None  # the tiny config starts its fit at zero
  zero, one = summary["curves"]["zero"], summary["curves"]["one_step"]
  # The learned fit from Θ_1 continues the learned fit from zero, one iteration behind.
  for key in convergence.CURVES:
    np.testing.assert_allclose(one["lgd"][key], zero["lgd"][key][1:] + [one["lgd"][key][-1]],
                               atol=START_ATOL, rtol=START_ATOL)
  # Every method starts where the learned fit was after one step.
  for method in METHODS:
    for key in convergence.CURVES:
      np.testing.assert_allclose(one[method][key][0], zero["lgd"][key][1], rtol=START_ATOL)
      np.testing.assert_allclose(zero[method][key][0], zero["lgd"][key][0], rtol=START_ATOL)


@pytest.mark.slow
def test_grad_norm_is_the_true_gradient(restored, analysis):
  _, summary, _ = analysis
  batch = _held_out(restored)
  prob = restored.problem
  curves = summary["curves"]
  grad_fn = jax.jit(jax.vmap(jax.grad(lambda t, x, c: objective.objective(prob, t, x, c)[0])))
  theta1 = convergence.one_step_start(restored.learner, restored.variables, prob, batch.kp2d,
                                      batch.conf)
  np.testing.assert_allclose(curves["one_step"]["adam"]["grad_norm"][0],
                             _mean_grad_norm(prob, theta1, batch), rtol=GRAD_RTOL)
  # After one gradient-descent step of the tuned size, recomputed from scratch.
  step = summary["settings"]["one_step"]["gd"]["value"]
  theta2 = theta1 - step * grad_fn(theta1, batch.kp2d, batch.conf)
  np.testing.assert_allclose(curves["one_step"]["gd"]["grad_norm"][1],
                             _mean_grad_norm(prob, theta2, batch), rtol=GRAD_RTOL)
  # The zero pose is left-right symmetric: the unit box's min/max have ties there, and which
  # tied keypoint gets the subgradient depends on rounding.
  np.testing.assert_allclose(curves["zero"]["gd"]["grad_norm"][0],
                             _mean_grad_norm(prob, jnp.zeros_like(batch.theta), batch),
                             rtol=ZERO_POSE_RTOL)


@pytest.mark.slow
def test_smplify_joins_the_summary(restored, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  summary = convergence.run(restored, str(tmp_path), num_iters=NUM_ITERS,
                            num_samples=NUM_SAMPLES, batch_size=NUM_SAMPLES, log=lambda _: None)
  c = summary["curves"]["zero"]["smplify"]
  assert all(np.isfinite(c[k]).all() for k in convergence.CURVES)
  assert "SMPLify" in (tmp_path / "summary.md").read_text()
