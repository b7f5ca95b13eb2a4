"""Orbax checkpoints that carry the config, so a checkpoint alone rebuilds the model.

Layout: ``WORKDIR/checkpoints/<step>/{state,config,meta}``. A training workdir means its latest
checkpoint; one step's directory means that checkpoint. ``meta`` holds a SHA-256 digest of the
state's arrays, so that a truncated or corrupted checkpoint is detected when it is restored
(:func:`restore_verified`), and training falls back to the previous good one
(:func:`restore_latest_good`). Orbax writes each checkpoint into a temporary directory and renames
it when complete, so a process killed mid-save leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lgd_jax import parallel
from lgd_jax.errors import UserError, describe, one_line

CHECKPOINT_SUBDIR = "checkpoints"
# Unreadable checkpoints are moved here (never deleted), beside CHECKPOINT_SUBDIR.
CORRUPT_SUBDIR = "checkpoints_corrupt"


class CheckpointError(UserError):
  """A checkpoint that cannot be found or read; the message names the directory."""


def manager(workdir: str | os.PathLike, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """The manager of a training workdir's checkpoints (created if needed)."""
  return manager_at(Path(workdir) / CHECKPOINT_SUBDIR, max_to_keep, create=True)


def manager_at(directory: str | os.PathLike, max_to_keep: int = 3,
               create: bool = False) -> ocp.CheckpointManager:
  """The manager of a directory of ``<step>/`` checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         cleanup_tmp_directories=create)
  return ocp.CheckpointManager(Path(directory).resolve(), options=options,
                               item_names=("state", "config", "meta"))


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def digest(tree) -> str:
  """SHA-256 over the arrays of ``tree`` (order, dtypes, shapes and bytes)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    a = parallel.to_host(leaf)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def save(mngr: ocp.CheckpointManager, step: int, state, config) -> None:
  """Saves the state, the config and the state's digest at ``step`` (waits until written)."""
  meta = {"step": int(step), "sha256": digest(state), "time": time.time()}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(config_to_json(config)),
                                          meta=ocp.args.JsonSave(meta)),
            force=True)
  mngr.wait_until_finished()


def restore_state(mngr: ocp.CheckpointManager, step: int, target):
  """Restores the state at ``step`` into the structure, shapes, dtypes and shardings of
  ``target`` (unverified; see :func:`restore_verified`).

  A dataclass state whose optional fields are None, at any depth (a TrainState without a fit
  buffer, a fit buffer without the nominal term's state), also restores from a checkpoint
  written before those fields existed.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored["state"]
  except ValueError as e:
    if not dataclasses.is_dataclass(target) or "MISSING" not in str(e):
      raise
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_without_none(abstract))))
  return _refill(target, restored["state"])


def _without_none(tree):
  """Dataclass nodes as dicts of their fields that are not None, recursively."""
  if dataclasses.is_dataclass(tree):
    return {f.name: _without_none(getattr(tree, f.name)) for f in dataclasses.fields(tree)
            if getattr(tree, f.name) is not None}
  return tree


def _refill(target, restored):
  """:func:`_without_none`'s dicts back into ``target``'s dataclasses (None fields kept)."""
  if dataclasses.is_dataclass(target):
    return target.replace(**{k: _refill(getattr(target, k), v) for k, v in restored.items()})
  return restored


def restore_verified(mngr: ocp.CheckpointManager, step: int, target):
  """:func:`restore_state`, then checks the arrays against the digest saved with them.

  Raises:
    CheckpointError: the checkpoint is missing, truncated, unreadable or does not match its digest.
  """
  where = Path(mngr.directory) / str(step)
  try:
    state = restore_state(mngr, step, target)
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    raise CheckpointError(f"{where}: cannot restore the state ({describe(e)[:200]})") from None
  meta = _read_meta(mngr, step)
  if meta is not None and meta.get("sha256") != digest(state):
    raise CheckpointError(f"{where}: the state does not match the digest saved with it "
                          "(corrupted files)")
  return state


def _read_meta(mngr, step) -> dict | None:
  if not (Path(mngr.directory) / str(step) / "meta").is_dir():
    return None  # written before digests existed
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:
    where = Path(mngr.directory) / str(step)
    raise CheckpointError(f"{where}: unreadable meta ({describe(e)[:200]})") from None


def restore_latest_good(mngr: ocp.CheckpointManager, target, config, log=print):
  """The newest checkpoint that restores and matches its digest, as (step, state), or None.

  Unreadable checkpoints are moved to ``CORRUPT_SUBDIR`` beside the checkpoints (not deleted) and
  reported through ``log``. A readable checkpoint of another config raises
  :class:`CheckpointError` (see :func:`check_compatible`).

  Several processes agree on each checkpoint (one that fails on any of them is set aside by all),
  process 0 moves it while the others wait, and all then see the same checkpoints.
  """
  directory = Path(mngr.directory)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      saved, problem = read_config(directory, step), ""
    except CheckpointError as e:
      saved, problem = None, str(e)
    problem = _agreed_problem(f"config of checkpoint {step}", problem)
    if problem:
      _set_aside(mngr, step, problem, log)
      continue
    check_compatible(saved, config, directory / str(step))
    try:
      state, problem = restore_verified(mngr, step, target), ""
    except CheckpointError as e:
      state, problem = None, str(e)
    problem = _agreed_problem(f"checkpoint {step}", problem)
    if not problem:
      return step, state
    _set_aside(mngr, step, problem, log)
  return None


def _agreed_problem(what: str, problem: str) -> str:
  """The first process's problem with ``what`` ("" when every process read it well)."""
  if not parallel.multi_process():
    return problem
  return next((p for p in parallel.gather_text(f"verdict on the {what}", problem) if p), "")


def _set_aside(mngr, step: int, reason: str, log) -> None:
  src = Path(mngr.directory) / str(step)
  dst_dir = Path(mngr.directory).parent / CORRUPT_SUBDIR
  # Process 0 names the destination (its clock) and moves the checkpoint; the others wait for
  # the move before they look at the checkpoints again.
  dst = Path(parallel.announce(f"destination of checkpoint {step}",
                               str(dst_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")))
  if parallel.is_primary():
    dst_dir.mkdir(exist_ok=True)
    shutil.move(str(src), str(dst))
  parallel.barrier(f"moved checkpoint {step} aside")
  mngr.reload()
  log(f"warning: {reason}; moved it to {dst} and falling back to the previous checkpoint")


def locate(path: str | os.PathLike) -> tuple[Path, int]:
  """(checkpoints directory, step) of a workdir (its latest checkpoint) or of one checkpoint."""
  path = Path(path)
  if not path.is_dir():
    raise CheckpointError(f"{path}: no such checkpoint directory (expected a training workdir or "
                          f"one of its {CHECKPOINT_SUBDIR}/<step> directories)")
  if (path / "config").is_dir() and (path / "state").is_dir() and path.name.isdigit():
    return path.parent, int(path.name)
  directory = path / CHECKPOINT_SUBDIR if (path / CHECKPOINT_SUBDIR).is_dir() else path
  steps = sorted(int(p.name) for p in directory.iterdir()
                 if p.name.isdigit() and (p / "state").is_dir() and (p / "config").is_dir())
  if not steps:
    raise CheckpointError(f"{path}: holds no checkpoint (expected {CHECKPOINT_SUBDIR}/<step>/"
                          f"{{state,config}} written by train.py)")
  return directory, steps[-1]


def read_config(directory: Path, step: int) -> ml_collections.ConfigDict:
  """The config saved with the checkpoint ``directory/step``."""
  where = Path(directory) / str(step)
  try:
    mngr = manager_at(directory)
    raw = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    from lgd_jax.config import with_defaults
    return with_defaults(raw)
  except Exception as e:  # orbax raises many types for a missing or damaged item
    raise CheckpointError(f"{where}: unreadable config ({one_line(str(e))[:200]})") \
        from None


# Config fields that fix the shapes of the saved state: a checkpoint of another value cannot be
# resumed or evaluated with this one.
STRUCTURAL_FIELDS = ("num_betas", "keypoints", "fit_translation", "model.variant", "model.hidden",
                     "model.num_blocks", "model.num_residual", "model.init", "model.features",
                     "model.norm", "model.gd_rate", "model.nominal", "unroll.late_fraction",
                     "unroll.buffer_rounds")


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def check_compatible(saved, config, where) -> None:
  """Raises :class:`CheckpointError` if ``saved`` (a checkpoint's config) holds a state of
  another shape than ``config`` would build."""
  for field in STRUCTURAL_FIELDS:
    a, b = _get(saved, field), _get(config, field)
    if a != b:
      raise CheckpointError(f"{where}: holds another config's state ({field} = {a!r} there, "
                            f"{b!r} here); use another --workdir or the same config")
