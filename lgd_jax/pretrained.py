"""The packaged pretrained learned optimiser: fitting detections needs no training first.

``lgd_jax/pretrained/lgd_free.npz`` holds the network variables (float32) of a checkpoint trained
on the free body model and the broad synthetic pose source with detector-like inputs, its config
(JSON) and a record of how it was made (``meta``: command, steps, machine, validation error).
It contains nothing derived from licence-gated data. ``--ckpt`` omitted (or ``--ckpt
pretrained``) means this file for every command; ``lgd_jax/pretrained/README.md`` says how to
rebuild it:

    python train.py --config configs/pretrained.py --workdir runs/pretrained
    python tools/export_pretrained.py --ckpt runs/pretrained --out lgd_jax/pretrained/lgd_free.npz

Format: one ``.npz`` with ``config_json`` and ``meta_json`` (0-d strings) and one array per
variable leaf, named ``variables/<params|batch_stats>/<module path joined by '/'>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lgd_jax.errors import UserError, one_line

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PRETRAINED_PATH = PRETRAINED_DIR / "lgd_free.npz"
NAMES = ("pretrained", "")  # --ckpt values that mean the packaged model
_PREFIX = "variables/"


class PretrainedError(UserError):
  """A pretrained file that cannot be read; the message names the file and the problem."""


def is_pretrained(ckpt) -> bool:
  """Whether a --ckpt value means a pretrained file (None, "pretrained" or a .npz path)."""
  return ckpt is None or str(ckpt) in NAMES or str(ckpt).endswith(".npz")


def resolve(ckpt) -> Path:
  path = PRETRAINED_PATH if ckpt is None or str(ckpt) in NAMES else Path(ckpt)
  if not path.is_file():
    raise PretrainedError(f"{path}: no such pretrained file (the packaged model is "
                          f"{PRETRAINED_PATH}; rebuild it as lgd_jax/pretrained/README.md says)")
  return path


def _flatten(tree, prefix="") -> dict:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, name + "/"))
    else:
      out[name] = np.asarray(v)
  return out


def _unflatten(flat: dict) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def export(config, variables: dict, out: str | os.PathLike, meta: dict) -> Path:
  """Writes ``variables`` ({"params", "batch_stats"}), ``config`` and ``meta`` to ``out``."""
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  arrays = {_PREFIX + k: v.astype(np.float32) if v.dtype.kind == "f" else v
            for k, v in _flatten(variables).items()}
  tmp = out.with_suffix(".tmp.npz")
  np.savez_compressed(tmp, config_json=np.asarray(json.dumps(json.loads(config.to_json()))),
                      meta_json=np.asarray(json.dumps(meta)), **arrays)
  os.replace(tmp, out)
  return out


def load(ckpt=None):
  """(config, variables, meta, path) of a pretrained file (default: the packaged one)."""
  import ml_collections  # noqa: F401  (the config type)

  from lgd_jax.config import with_defaults
  path = resolve(ckpt)
  try:
    with np.load(path, allow_pickle=False) as z:
      config = with_defaults(json.loads(str(z["config_json"])))
      meta = json.loads(str(z["meta_json"]))
      flat = {k[len(_PREFIX):]: z[k] for k in z.files if k.startswith(_PREFIX)}
  except (OSError, KeyError, ValueError) as e:
    raise PretrainedError(f"{path}: not a pretrained lgd_jax file ({type(e).__name__}: "
                          f"{one_line(str(e))[:120]})") from None
  variables = _unflatten(flat)
  variables.setdefault("batch_stats", {})
  return config, variables, meta, path
