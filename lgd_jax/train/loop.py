"""Training the learned optimiser: data on the device, augmentation and the unrolled fit in one
jitted step, Orbax checkpoints that resume, metrics to JSON lines and TensorBoard.

    from lgd_jax import train
    train.train_and_evaluate(config, workdir)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time

import jax
import ml_collections
from jax.sharding import Mesh

from lgd_jax import build, parallel
from lgd_jax.build import REQUIRED_FIELDS, amass_sampling
from lgd_jax.data.batches import with_epoch_order
from lgd_jax.errors import ConfigError, TrainingStopped
from lgd_jax.fitting.objective import Problem
from lgd_jax.fitting.scoring import eval_lgd, mean_over_batches
from lgd_jax.train import steps
from lgd_jax.train.signals import _AgreedStop, _check_faults, _StopSignals
from lgd_jax.train.writer import MetricWriter, _log
from lgd_jax.train_state import TrainState, new_state, unroll_settings


def check_config(config) -> None:
  missing = [f for f in REQUIRED_FIELDS if f not in config]
  if missing:
    raise ConfigError(f"config lacks the fields {missing}")
  for name in ("batch_size", "num_epochs", "num_steps", "checkpoint_every"):
    if int(config[name]) < 1:
      raise ConfigError(f"{name}: expected a positive integer, got {config[name]!r}")
  if config.get("requires_data", False):
    need = {"body_model": "--config.body_model=PATH (an SMPL .pkl or .npz; see "
                          "third_party/README.md)",
            "amass_dir": "--config.amass_dir=DIR (a directory of AMASS .npz sequences)"}
    missing = [k for k in need if not config[k]]
    if missing:
      raise ConfigError(f"{', '.join(missing)}: this config trains on SMPL and AMASS; pass "
                        f"{' '.join(need[k] for k in missing)}, or use configs/demo.py")
  if config.get("on_nonfinite", "stop") not in ("stop", "skip"):
    raise ConfigError(f"on_nonfinite: expected 'stop' or 'skip', got {config.on_nonfinite!r}")
  if config.amass_dir:
    amass_sampling(config)
  if not config.amass_dir and int(config.steps_per_epoch) < 1:
    raise ConfigError("steps_per_epoch: expected a positive integer, got "
                      f"{config.steps_per_epoch!r}")
  unroll_settings(config)  # checks the unroll group


def validate(learner, state: TrainState, problem: Problem, batches: list, num_steps: int) -> dict:
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  results = [parallel.to_host(eval_lgd(learner, variables, problem, b, num_steps)[0])
             for b in batches]
  mean = mean_over_batches(results, [b.theta.shape[0] for b in batches])
  return {"val_pa_mpjpe_mm": mean["pa_mpjpe_mm"][-1], "val_mpjpe_mm": mean["mpjpe_mm"][-1],
          "val_pa_mpjpe_mm_start": mean["pa_mpjpe_mm"][0], "val_reproj": mean["reproj"][-1]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       show_progress: bool = True) -> TrainState:
  """Trains (or resumes) in ``workdir``; returns the final state.

  The batch is split over ``config.num_devices`` devices (0 = all). Rerunning the same command
  continues from the newest good checkpoint — a corrupt one is moved aside and reported — with
  the same data order and random streams as an uninterrupted run. SIGINT/SIGTERM save a
  checkpoint and raise :class:`TrainingStopped`; so does a non-finite loss with
  ``on_nonfinite`` = "stop" (without saving the bad state). In a run of several processes a
  signal to any of them stops all of them after the same step (the one after the step it arrived
  in), with one checkpoint, and each raises :class:`TrainingStopped` with that signal's exit code.
  """
  from tqdm import tqdm

  from lgd_jax import checkpoints

  check_config(config)
  mesh = parallel.make_mesh(int(config.get("num_devices", 0)))
  parallel.check_batch(int(config.batch_size), mesh)
  model = build.load_body_model(config)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  train_src, val_src, steps_per_epoch = build.load_pose_data(config)
  total_steps = steps_per_epoch * int(config.num_epochs)
  tx = build.make_optimizer(config, steps_per_epoch)
  primary = parallel.is_primary()

  os.makedirs(workdir, exist_ok=True)
  mngr = checkpoints.manager(workdir, int(config.keep_checkpoints))
  problem, train_src, val_src = parallel.replicate((problem, train_src, val_src), mesh)
  state = parallel.replicate(new_state(config, learner, problem, tx), mesh)
  state, last_saved = _resume(mngr, state, config, total_steps)
  start = int(parallel.to_host(state.step))

  writer = MetricWriter(workdir, start, enabled=primary)
  step_fn = steps.make_train_step(learner, config, steps_per_epoch, mesh)
  compiled_before = steps.train_step._cache_size()
  val_batches = [parallel.shard_batch(b, mesh) for b in build.validation_batches(
      config, problem, val_src, int(config.val_samples), int(config.val_seed),
      int(config.batch_size))]
  # Each step folds its step number into this key inside the compiled step (no host work).
  base_key = parallel.replicate(jax.random.PRNGKey(int(config.seed)), mesh)
  _announce(config, model, total_steps, mesh)
  bar = tqdm(total=total_steps, initial=start, disable=not (show_progress and primary),
             unit="step", dynamic_ncols=True, file=sys.stderr)
  loop = _Loop(config, mesh, learner, problem, val_batches, step_fn, base_key, steps_per_epoch,
               total_steps, mngr, writer, bar, compiled_before, start,
               int(parallel.to_host(state.num_skipped)))
  # The epoch's order (at a resume: the same as uninterrupted), then once per epoch.
  if start < total_steps:
    train_src = with_epoch_order(train_src, int(config.seed), start // steps_per_epoch, mesh)
  agreed = _AgreedStop(mesh)
  if parallel.multi_process() and start < total_steps:
    # Every process compiles the step before any of them runs it: the first collective over a
    # set of devices waits only 30 s for all processes (Gloo's rendezvous on the CPU), and
    # compile times differ (JAX's persistent cache serves only process 0's programs).
    step_fn.func.lower(state, problem, train_src, base_key, **step_fn.keywords).compile()
    parallel.barrier("compiled the train step")
  try:
    state = loop.run(state, train_src, agreed, last_saved)
  finally:
    bar.close()
    writer.close()
    mngr.close()
  _log(f"done: {total_steps} steps; checkpoints in {mngr.directory}")
  return state


def _resume(mngr, state: TrainState, config, total_steps: int) -> tuple[TrainState, str | None]:
  """The newest good checkpoint's state and path, or ``state`` and None for a fresh run."""
  from lgd_jax import checkpoints

  found = checkpoints.restore_latest_good(mngr, state, config, log=_log)
  if found is None:
    return state, None
  last_saved = str(mngr.directory / str(found[0]))
  _log(f"resumed from {last_saved} (step {found[0]} of {total_steps})")
  return found[1], last_saved


def _announce(config, model, total_steps: int, mesh) -> None:
  _log(f"training {model.name} ({config.keypoints}, N = {config.num_steps}) on "
       f"{'AMASS ' + config.amass_dir if config.amass_dir else 'synthetic poses'}: "
       f"{total_steps} steps of batch {config.batch_size} on {mesh.devices.size} "
       f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)")


def release_freed_memory() -> bool:
  """Returns the heap's freed pages to the operating system (glibc's ``malloc_trim``), where
  that exists: compiling the train step takes several hundred MB that XLA frees but glibc keeps
  resident, so without this a training process holds them for its whole run (the paper step at
  batch 1024 on the CPU: about 650 MB; ``benchmarks/bench_train.py``). True if it ran."""
  import ctypes
  import ctypes.util
  name = ctypes.util.find_library("c")
  try:
    trim = ctypes.CDLL(name).malloc_trim if name else None
  except (OSError, AttributeError):
    trim = None
  if trim is None:
    return False
  trim(0)
  return True


@dataclasses.dataclass
class _Loop:
  """The training steps from ``start``: logging, the epoch's validation, checkpoints and stops.

  Samples/s is the training's: the validations and checkpoint writes of an interval are left out
  of its time (:meth:`_paused`).
  """

  config: ml_collections.ConfigDict
  mesh: Mesh
  learner: object
  problem: Problem
  val_batches: list
  step_fn: object
  base_key: object
  steps_per_epoch: int
  total_steps: int
  mngr: object
  writer: MetricWriter
  bar: object
  compiled_before: int
  start: int
  skipped_before: int

  def __post_init__(self):
    self.t_last, self.n_last, self.paused = time.perf_counter(), self.start, 0.0

  def run(self, state: TrainState, train_src, agreed: _AgreedStop,
          last_saved: str | None) -> TrainState:
    from lgd_jax import checkpoints

    config, steps_per_epoch = self.config, self.steps_per_epoch
    with _StopSignals() as stop:
      for step in range(self.start, self.total_steps):
        if step % steps_per_epoch == 0 and step != self.start:
          train_src = with_epoch_order(train_src, int(config.seed), step // steps_per_epoch,
                                       self.mesh)
        state, out = self.step_fn(state, self.problem, train_src, self.base_key)
        if step == self.start:
          release_freed_memory()  # what compiling the step took and gave back
        done = step + 1
        self.bar.update(1)
        epoch_end = done % steps_per_epoch == 0
        last = done == self.total_steps
        log_now = epoch_end or last or done % int(config.log_every) == 0
        save_now = epoch_end or last or done % int(config.checkpoint_every) == 0
        if log_now or save_now:
          _check_faults(state, config, done, last_saved)
        if log_now:
          self._log_step(state, out, done, epoch_end, last)
        # After this step's host work: a signal that came during it stops here (one process).
        stopping = agreed.after_step(stop.signum)
        if stopping and not (log_now or save_now):
          _check_faults(state, config, done, last_saved)
        if save_now or stopping:
          state = jax.block_until_ready(state)  # the training's time ends here
          with self._paused():
            checkpoints.save(self.mngr, done, state, config)
          last_saved = str(self.mngr.directory / str(done))
        if stopping:
          raise _stopped(stopping, done, self.total_steps, last_saved)
    return state

  @contextlib.contextmanager
  def _paused(self):
    t_pause = time.perf_counter()
    yield
    self.paused += time.perf_counter() - t_pause

  def _log_step(self, state: TrainState, out, done: int, epoch_end: bool, last: bool) -> None:
    """One metrics line: the step's outputs, throughput, skipped steps, the validation at an
    epoch's end and, at the last step, the train step's compilations."""
    record = {k: float(v) for k, v in parallel.to_host(out).items()}
    now = time.perf_counter()
    record["samples_per_s"] = (done - self.n_last) * int(self.config.batch_size) / max(
        now - self.t_last - self.paused, 1e-9)
    record["skipped_steps"] = skipped = int(parallel.to_host(state.num_skipped))
    if skipped > self.skipped_before:
      self.bar.write(f"warning: {skipped} step(s) skipped so far for a non-finite loss or "
                     f"gradients (first: step {int(parallel.to_host(state.bad_step))})",
                     file=sys.stderr)
      self.skipped_before = skipped
    self.t_last, self.n_last, self.paused = now, done, 0.0
    self.bar.set_postfix(loss=f"{record['loss']:.4f}",
                         samples_s=f"{record['samples_per_s']:.0f}")
    if epoch_end:
      with self._paused():  # the step is done: its metrics were read
        val = parallel.to_host(validate(self.learner, state, self.problem, self.val_batches,
                                        int(self.config.num_steps)))
      record.update({k: float(v) for k, v in val.items()}, epoch=done // self.steps_per_epoch)
      self.bar.write(f"epoch {done // self.steps_per_epoch}/{self.config.num_epochs}: validation "
                     f"PA-MPJPE {record['val_pa_mpjpe_mm']:.1f} mm (start "
                     f"{record['val_pa_mpjpe_mm_start']:.1f} mm), MPJPE "
                     f"{record['val_mpjpe_mm']:.1f} mm", file=sys.stderr)
    if last:
      # 1 in a fresh process: the step never retraces (0 if this process compiled it).
      record["train_step_compilations"] = steps.train_step._cache_size() - self.compiled_before
    self.writer.write(done, record)


def _stopped(stopping: tuple[int, int | None], done: int, total_steps: int,
             last_saved: str | None) -> TrainingStopped:
  """The error a signal stops the run with (exit code 128 + the signal's number)."""
  signum, process = stopping
  name = signal.Signals(signum).name
  if process is not None:
    name += f" (sent to process {process}; every process stopped here)"
  return TrainingStopped(f"{name}: stopped at step {done} of {total_steps}; saved "
                         f"{last_saved}; rerun the same command to resume",
                         exit_code=128 + signum)
