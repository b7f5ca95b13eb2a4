"""Training end to end on a tiny config: the loss falls, the step compiles once, checkpoints
restore exactly and resume, evaluation runs from a checkpoint alone, and the commands report
mistakes in one line."""

import json
import os
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from conftest import tiny_train_config

from lgd_jax import build, checkpoints, train_state
from lgd_jax.data import batches
from lgd_jax.eval import heldout, reports, restore
from lgd_jax.fitting import scoring
from lgd_jax.train import loop, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(model_path, **overrides):
  """conftest's tiny config (the same compiled train step) for two epochs of 12 steps."""
  settings = dict(num_epochs=2, checkpoint_every=10)
  return tiny_train_config(body_model=model_path, **{**settings, **overrides})


@pytest.fixture(scope="module")
def model_path():
  return ""  # the free built-in body model


@pytest.fixture(scope="module")
def counted_train_step():
  """A copy of steps.train_step, compiled the same way, whose Python function may be traced
  only once (chex raises on a second trace): the tiny run and the compile-once test use it."""
  return jax.jit(chex.assert_max_traces(steps.train_step.__wrapped__, n=1),
                 **steps.TRAIN_STEP_JIT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_path, counted_train_step):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(model_path)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(steps, "train_step", counted_train_step)
    state = loop.train_and_evaluate(config, workdir, show_progress=False)
  return config, workdir, state


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_run_lowers_the_loss_and_logs(trained):
  config, workdir, state = trained
  assert int(state.step) == 24
  lines = _metrics(workdir)
  assert [r["step"] for r in lines] == list(range(1, 25))
  loss = np.array([r["loss"] for r in lines])
  assert np.isfinite(loss).all()
  assert loss[-5:].mean() < 0.96 * loss[:5].mean()
  assert all("step" in r and "loss" in r for r in lines)
  # Compiled once (the counted copy is fresh) and never retraced (chex would have raised).
  assert lines[-1]["train_step_compilations"] == 1
  val = [r for r in lines if "val_pa_mpjpe_mm" in r]
  assert [r["step"] for r in val] == [12, 24]
  # Learned steps improve on the starting point on held-out samples.
  assert val[-1]["val_pa_mpjpe_mm"] < 0.9 * val[-1]["val_pa_mpjpe_mm_start"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                if s.isdigit())[-1] == 24


def test_restored_checkpoint_gives_identical_predictions(trained):
  config, workdir, state = trained
  r = restore.restore(workdir)
  assert r.step == 24
  assert r.config.to_dict() == config.to_dict()
  # The validation batches' shape and N reuse the programs the training run compiled.
  source = build.synthetic_source(config, "test")
  batch = build.validation_batches(config, r.problem, source, 32, 5, 32)[0]
  live = {"params": state.params, "batch_stats": state.batch_stats}
  a, theta_a = scoring.eval_lgd(r.learner, live, r.problem, batch, 2)
  b, theta_b = scoring.eval_lgd(r.learner, r.variables, r.problem, batch, 2)
  np.testing.assert_array_equal(np.asarray(theta_a), np.asarray(theta_b))
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  # One checkpoint's directory works as well as the workdir.
  r15 = restore.restore(os.path.join(workdir, "checkpoints", "20"))
  assert r15.step == 20


def test_train_step_compiles_once(model_path, trained, counted_train_step, monkeypatch):
  monkeypatch.setattr(steps, "train_step", counted_train_step)  # traced by the run above
  config = tiny_config(model_path)
  model = build.load_body_model(config)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  tx = build.make_optimizer(config, config.steps_per_epoch)
  state = train_state.init_state(learner, problem, tx, 0)
  step = steps.make_train_step(learner, config, config.steps_per_epoch)
  before = steps.train_step._cache_size()
  for i in range(3):
    state, _ = step(state, problem, build.synthetic_source(config), jax.random.PRNGKey(i))
  # The same config reuses the program the training run compiled; new keys never retrace
  # (chex.assert_max_traces raises on a second trace of the step).
  assert steps.train_step._cache_size() == before == 1
  assert int(state.step) == 3


VALIDATION_SLEEP_S = 3.0  # a slow validation, far longer than a tiny train step


@pytest.mark.slow  # whole training runs of their own (CI runs -m slow)
def test_logs_the_steps_learning_rate_and_training_throughput(tmp_path, monkeypatch):
  """Each line's learning rate is the one its step's update used (the rate decays after each
  epoch of 3 steps), samples/s leaves a slow validation out, and the host passes the same key
  every step (the step folds in its own step number)."""
  config = tiny_train_config(num_epochs=2, steps_per_epoch=3, lr_decay=0.5)
  validate = loop.validate

  def slow_validate(*args, **kwargs):
    time.sleep(VALIDATION_SLEEP_S)
    return validate(*args, **kwargs)

  keys = []
  make_step = steps.make_train_step

  def recording_step(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def run(state, problem, source, key):
      keys.append(np.asarray(key))
      return step(state, problem, source, key)
    return run

  monkeypatch.setattr(loop, "validate", slow_validate)
  monkeypatch.setattr(steps, "make_train_step", recording_step)
  loop.train_and_evaluate(config, str(tmp_path / "run"), show_progress=False)
  lines = {r["step"]: r for r in _metrics(tmp_path / "run")}
  assert sorted(lines) == list(range(1, 7)) and "val_pa_mpjpe_mm" in lines[3]
  # Steps 1-3 (updates 0-2) ran at the initial rate, steps 4-6 at half of it.
  for s, r in lines.items():
    np.testing.assert_allclose(r["learning_rate"], config.learning_rate * 0.5 ** ((s - 1) // 3),
                               rtol=1e-6, err_msg=f"step {s}")
  # The interval of step 4 began before the validation at step 3: without that validation's
  # sleep it took far less than half of it.
  assert lines[4]["samples_per_s"] > config.batch_size / (VALIDATION_SLEEP_S / 2)
  assert len(keys) == 6 and all(np.array_equal(k, jax.random.PRNGKey(config.seed)) for k in keys)


@pytest.mark.slow  # tests/test_faults.py kills and resumes through the command line
def test_resume_continues_to_the_same_parameters(tmp_path, model_path, trained):
  _, _, uninterrupted = trained
  workdir = str(tmp_path / "run")
  first = loop.train_and_evaluate(tiny_config(model_path, num_epochs=1), workdir,
                                      show_progress=False)
  assert int(first.step) == 12
  resumed = loop.train_and_evaluate(tiny_config(model_path), workdir, show_progress=False)
  assert int(resumed.step) == 24
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               resumed.params, uninterrupted.params)
  steps = [r["step"] for r in _metrics(workdir)]
  assert steps == list(range(1, 25))  # no step logged twice


def test_resume_refuses_another_configs_state(tmp_path, model_path, trained):
  _, workdir, _ = trained
  with pytest.raises(checkpoints.CheckpointError, match="model.hidden"):
    c = tiny_config(model_path)
    c.model.hidden = 128
    loop.train_and_evaluate(c, workdir, show_progress=False)


@pytest.mark.slow
def test_evaluate_from_checkpoint(trained, tmp_path):
  config, workdir, _ = trained
  # Steps = N and batches the size of training's validation batches reuse compiled programs.
  fits = str(tmp_path / "fits.png")
  # The line search and SMPLify-style rows are covered by tests/test_baselines.py.
  results = heldout.evaluate(workdir, num_steps=2, num_samples=32, batch_size=32,
                                log=lambda m: None, fits_png=fits, classical=False)
  assert os.path.getsize(fits) > 20_000
  # Without --data the held-out poses are the checkpoint's own test generator.
  assert results["dataset"] == f"synthetic-{config.test_poses}" and results["num_samples"] == 32
  assert set(results["methods"]) == {"lgd", "gd", "adam"}
  for vals in results["methods"].values():
    assert set(vals) == set(reports.METRICS)
    assert all(len(v) == 3 and np.isfinite(v).all() for v in vals.values())
  starts = {m: v["mpjpe_mm"][0] for m, v in results["methods"].items()}
  assert starts["gd"] == starts["adam"]  # both start from the zero pose
  out = str(tmp_path / "eval" / "results.json")
  written = reports.write_results(results, out)
  with open(out) as f:
    assert json.load(f)["methods"]["lgd"]["pa_mpjpe_mm"] == results["methods"]["lgd"][
        "pa_mpjpe_mm"]
  assert os.path.getsize(written[1]) > 10_000
  assert "lgd" in reports.table(results)


def _run(*args, cwd=REPO):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow  # tests/test_bad_inputs.py runs the bad-input corpus through both commands
def test_commands_report_mistakes_in_one_line(tmp_path):
  res = _run("train.py", "--config", "configs/paper.py", "--workdir", str(tmp_path / "w"))
  assert res.returncode == 2
  err = res.stderr.strip().splitlines()
  assert len(err) == 1 and "amass_dir" in err[0] and "Traceback" not in res.stderr
  res = _run("evaluate.py", "--ckpt", str(tmp_path / "missing"))
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'missing'}: no such checkpoint directory (expected a training "
      f"workdir or one of its checkpoints/<step> directories)"]
  assert not (tmp_path / "missing").exists()  # nothing created for a bad input


def test_amass_directory_feeds_training_and_evaluation(tmp_path):
  """A directory of AMASS-format sequences becomes device arrays; batches are drawn from them."""
  rng = np.random.default_rng(0)
  for i in range(12):
    poses = rng.normal(0.0, 0.2, (30, 156))
    poses[:, :3] = [np.pi / 2, 0.0, 0.0]  # standing in AMASS's z-up world
    os.makedirs(tmp_path / "amass" / f"s{i}", exist_ok=True)
    np.savez(tmp_path / "amass" / f"s{i}" / "walk_poses.npz", poses=poses,
             betas=rng.normal(size=16), trans=np.zeros((30, 3)), gender=np.array("male"),
             mocap_framerate=np.array(60.0), dmpls=np.zeros((30, 8)))
  c = tiny_config("", amass_dir=str(tmp_path / "amass"), amass_cache=str(tmp_path / "c.npz"),
                  val_fraction=0.25)
  train, val, steps_per_epoch = build.load_pose_data(c)
  assert train.size + val.size == 12 * 15  # 60 fps -> 30 fps
  assert val.size > 0 and steps_per_epoch == train.size // c.batch_size
  assert train.poses.shape[1:] == (72,) and train.betas.shape[1:] == (10,)
  assert train.betas.shape[0] == int(train.seq.max()) + 1 < train.size  # one row per sequence
  np.testing.assert_array_equal(np.asarray(train.poses[:, 66:]), 0.0)  # SMPL-H hands dropped
  for src in (batches.with_epoch_order(train, 0, 0), val):
    pose, betas = jax.jit(src.sample, static_argnums=(1, 2))(jax.random.PRNGKey(0), 8, 10, 0)
    rows = np.asarray(src.poses)
    assert all(np.any(np.all(rows == p, axis=1)) for p in np.asarray(pose))
  c.amass_fps, c.amass_cache = 0.0, str(tmp_path / "all.npz")  # configs/official.py: every frame
  train, val, _ = build.load_pose_data(c)
  assert train.size + val.size == 12 * 30
  # evaluate.py's --data spec.
  assert heldout.parse_data(f"amass:{tmp_path}") == ("amass", str(tmp_path))
  with pytest.raises(build.ConfigError, match="--data"):
    heldout.parse_data("h36m:/x")
