"""Orbax checkpoints that carry the config, so a checkpoint alone rebuilds the model.

Layout: ``WORKDIR/checkpoints/<step>/{state,config}``. A training workdir means its latest
checkpoint; one step's directory means that checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(ValueError):
  """A checkpoint that cannot be found or read; the message names the directory."""


def manager(workdir: str | os.PathLike, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """The manager of a training workdir's checkpoints (created if needed)."""
  return manager_at(Path(workdir) / CHECKPOINT_SUBDIR, max_to_keep, create=True)


def manager_at(directory: str | os.PathLike, max_to_keep: int = 3,
               create: bool = False) -> ocp.CheckpointManager:
  """The manager of a directory of ``<step>/`` checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(Path(directory).resolve(), options=options,
                               item_names=("state", "config"))


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def save(mngr: ocp.CheckpointManager, step: int, state, config) -> None:
  """Saves the state and the config at ``step`` (waits until written)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(config_to_json(config))),
            force=True)
  mngr.wait_until_finished()


def restore_state(mngr: ocp.CheckpointManager, step: int, target):
  """Restores the state at ``step`` into the structure, shapes and dtypes of ``target``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  return restored["state"]


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
    return ml_collections.ConfigDict(raw)
  except Exception as e:  # orbax raises many types for a missing or damaged item
    raise CheckpointError(f"{where}: unreadable config ({' '.join(str(e).split())[:200]})") \
        from None


# Config fields that fix the shapes of the saved state: a checkpoint of another value cannot be
# resumed or evaluated with this one.
STRUCTURAL_FIELDS = ("num_betas", "keypoints", "fit_translation", "model.variant", "model.hidden",
                     "model.num_blocks", "model.num_residual", "model.init", "model.features")


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
