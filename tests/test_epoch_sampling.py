"""AMASS poses drawn as the official code draws them: each epoch one shuffle of every training frame
(the remainder of a batch skipped), derived from (seed, epoch) so that a resumed run draws the
batches of an uninterrupted one; betas stored per sequence and indexed per frame."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_train_config
from fake_datasets import write_amass_tree

from lgd_jax import build
from lgd_jax.config import base_config, with_defaults
from lgd_jax.data import batches
from lgd_jax.eval import heldout
from lgd_jax.train import loop, signals, steps, writer

NUM_POSES = 103
NUM_SEQ = 7
BATCH = 10  # 10 batches per epoch, 3 poses left over
SEED = 4


def _source(sampling="epoch"):
  """Poses that carry their row index (column 3) and per-sequence betas that carry the
  sequence's index (column 0)."""
  poses = np.zeros((NUM_POSES, 72), np.float32)
  poses[:, 3] = np.arange(NUM_POSES)
  seq = np.sort(np.random.default_rng(0).integers(0, NUM_SEQ, NUM_POSES)).astype(np.int32)
  betas = np.zeros((NUM_SEQ, 10), np.float32)
  betas[:, 0] = np.arange(NUM_SEQ)
  return batches.PoseSource(jnp.asarray(poses), jnp.asarray(betas), jnp.asarray(seq),
                             sampling=sampling), seq


@jax.jit
def _draw(source, step):
  """The rows of one train step (the key is unused by "epoch" sampling)."""
  pose, betas = source.sample(jax.random.PRNGKey(0), BATCH, 10, step)
  return pose[:, 3].astype(jnp.int32), betas[:, 0].astype(jnp.int32)


def _epochs(source, seed, steps):
  """What the training loop draws at ``steps``: the order set at each epoch's start (or at the
  first step, as after a resume)."""
  per_epoch = source.size // BATCH
  out, current = {}, None
  for step in steps:
    if step // per_epoch != current:
      current = step // per_epoch
      source = batches.with_epoch_order(source, seed, current)
    out[step] = np.asarray(_draw(source, jnp.int32(step))[0])
  return out


def test_each_frame_once_per_epoch_and_epochs_differ():
  src, seq = _source()
  per_epoch = NUM_POSES // BATCH
  before = _draw._cache_size()
  orders = []
  for epoch in range(3):
    s = batches.with_epoch_order(src, SEED, epoch)
    order = np.asarray(s.order)
    np.testing.assert_array_equal(np.sort(order), np.arange(NUM_POSES))  # a permutation
    drawn = [_draw(s, jnp.int32(epoch * per_epoch + k)) for k in range(per_epoch)]
    rows = np.concatenate([np.asarray(r) for r, _ in drawn])
    # Every frame at most once, all but the remainder exactly once: the order's first 100 rows.
    assert len(np.unique(rows)) == len(rows) == per_epoch * BATCH
    np.testing.assert_array_equal(rows, order[:per_epoch * BATCH])
    # Each frame's betas are its sequence's.
    np.testing.assert_array_equal(np.concatenate([np.asarray(b) for _, b in drawn]), seq[rows])
    orders.append(order)
  assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
  assert not np.array_equal(orders[0], np.arange(NUM_POSES))
  # The order is a function of (seed, epoch) only; another seed shuffles otherwise.
  np.testing.assert_array_equal(np.asarray(batches.with_epoch_order(src, SEED, 1).order),
                                orders[1])
  assert not np.array_equal(np.asarray(batches.with_epoch_order(src, SEED + 1, 1).order),
                            orders[1])
  # New orders and steps are traced values: one program for all epochs.
  assert _draw._cache_size() - before <= 1


def test_a_resumed_loop_draws_the_same_batches():
  src, _ = _source()
  per_epoch = NUM_POSES // BATCH
  steps = range(3 * per_epoch)
  uninterrupted = _epochs(src, SEED, steps)
  batches._permutation_fn.cache_clear()  # as in a fresh process
  resume_at = per_epoch + 4  # mid-epoch
  resumed = _epochs(src, SEED, range(resume_at, 3 * per_epoch))
  for step, rows in resumed.items():
    np.testing.assert_array_equal(rows, uninterrupted[step], err_msg=f"step {step}")


def test_sources_without_an_order_and_replacement_sampling():
  src, seq = _source()
  with pytest.raises(ValueError, match="with_epoch_order"):
    src.sample(jax.random.PRNGKey(0), BATCH, 10, 0)
  # Replacement sampling (and synthetic sources) ignore the step: fresh draws per key.
  rep, _ = _source("replacement")
  a = np.asarray(_draw(rep, jnp.int32(0))[0])
  b = np.asarray(_draw(rep.replace(), jnp.int32(1))[0])
  np.testing.assert_array_equal(a, b)  # same key, the step plays no part
  assert batches.with_epoch_order(rep, SEED, 0) is rep
  synthetic = batches.PoseSource(kind="broad")
  assert batches.with_epoch_order(synthetic, SEED, 0) is synthetic


# ---------------------------------------------------------------------------------------------
# From an AMASS directory.


@pytest.fixture(scope="module")
def amass_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("amass")
  write_amass_tree(root, [30, 40, 50, 26])  # 60 fps -> 30 fps: 15 + 20 + 25 + 13 frames
  return root


def _config(amass_dir, tmp, **overrides):
  return tiny_train_config(amass_dir=str(amass_dir), amass_cache=str(tmp / "cache.npz"),
                           val_fraction=0.0, batch_size=16, **overrides)


def test_amass_sources_hold_betas_per_sequence(amass_dir, tmp_path):
  c = _config(amass_dir, tmp_path)
  assert c.amass_sampling == "epoch"  # the official behaviour is the default
  train, val, steps_per_epoch = build.load_pose_data(c)
  assert train.size == 73 and train.sampling == "epoch" and val.sampling == "replacement"
  assert train.betas.shape == (4, 10) and train.seq.shape == (73,)
  assert steps_per_epoch == 73 // 16  # real epochs: the per-epoch decay counts these
  # evaluate.py's held-out AMASS poses: only that split on the device (here the training split,
  # the validation one being empty), drawn with replacement.
  name, held_out = heldout.held_out_source(c, f"amass:{amass_dir}")
  assert name == "amass-val" and held_out.sampling == "replacement"
  np.testing.assert_array_equal(np.asarray(held_out.seq), np.asarray(train.seq))
  c.batch_size = 80
  with pytest.raises(build.ConfigError, match="batch_size: 80 .* 73 AMASS training frames"):
    build.load_pose_data(c)
  c.amass_sampling = "shuffle"
  with pytest.raises(build.ConfigError, match="amass_sampling"):
    loop.check_config(c)


def test_configs_of_before_epoch_sampling_read_back_as_replacement():
  """A checkpoint's config from before the switch says what that run did."""
  assert with_defaults({})["amass_sampling"] == "replacement"
  assert with_defaults(base_config().to_dict())["amass_sampling"] == "epoch"


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow  # three short training runs (one compiled step)
def test_training_resumes_mid_epoch_bit_exactly(amass_dir, tmp_path, monkeypatch):
  """Two epochs on AMASS, uninterrupted and stopped mid-epoch then resumed, give the same
  parameters and losses; the order changes at the epoch boundary without recompiling; the learning
  rate decays once per real epoch."""
  c = _config(amass_dir, tmp_path, num_epochs=2, checkpoint_every=100, lr_decay=0.5)
  per_epoch = 73 // 16
  before = steps.train_step._cache_size()
  full = loop.train_and_evaluate(c, str(tmp_path / "full"), show_progress=False)
  assert steps.train_step._cache_size() - before <= 1
  lines = _metrics(tmp_path / "full")
  assert [r["step"] for r in lines] == list(range(1, 2 * per_epoch + 1))
  assert [r["epoch"] for r in lines if "epoch" in r] == [1, 2]
  lr = [r["learning_rate"] for r in lines]
  # Each line's rate is its step's: the whole first epoch at the initial rate, then half.
  np.testing.assert_allclose(lr[:per_epoch], c.learning_rate, rtol=1e-6)
  np.testing.assert_allclose(lr[per_epoch:2 * per_epoch], 0.5 * c.learning_rate, rtol=1e-6)

  stop_at = per_epoch + 2
  write = writer.MetricWriter.write

  def write_then_stop(self, step, values):
    write(self, step, values)
    if step == stop_at:
      signal.raise_signal(signal.SIGTERM)  # saved after this step, then stopped

  workdir = str(tmp_path / "resumed")
  monkeypatch.setattr(writer.MetricWriter, "write", write_then_stop)
  with pytest.raises(signals.TrainingStopped, match=f"step {stop_at}"):
    loop.train_and_evaluate(c, workdir, show_progress=False)
  monkeypatch.undo()
  batches._permutation_fn.cache_clear()
  resumed = loop.train_and_evaluate(c, workdir, show_progress=False)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, full.params)
  resumed_lines = _metrics(workdir)
  np.testing.assert_array_equal([r["loss"] for r in resumed_lines], [r["loss"] for r in lines])
  # The resumed run crosses no epoch boundary but starts with another epoch's order: still at
  # most one program (its restored state may compile one in this process, as in a fresh one).
  assert resumed_lines[-1]["train_step_compilations"] <= 1
