"""AMASS motion capture as SMPL training poses: reading, converting, splitting and caching.

The work is done in two modules, whose public names this one re-exports:

* :mod:`lgd_jax.data.amass_sequences`: reading one AMASS sequence ``.npz`` and converting it to
  y-up SMPL poses as the official LGD preprocessing does (:func:`load_sequence`), finding the
  sequences of a tree (:func:`find_sequences`) and splitting them by a stable hash of their path
  (:func:`split_of`);
* :mod:`lgd_jax.data.amass_preprocessed`: the one compact ``.npz`` that holds every converted
  sequence, its layout (format versions 1 and 2) and :func:`load_preprocessed`.

This module converts a whole tree into that file (:func:`preprocess`) and keeps it as a cache
beside the data (:func:`load_or_preprocess`, reused while it matches the settings and files).

Every problem with an input raises :class:`AmassError` with a one-line message naming the file,
the field and what was expected.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from tqdm.auto import tqdm

from lgd_jax.data.amass_preprocessed import (
                                             FORMAT_VERSION,
                                             READABLE_VERSIONS,
                                             SPLITS,
                                             load_preprocessed,
                                             pack,
                                             unpack,
                                             write,
)
from lgd_jax.data.amass_sequences import (
                                          AMASS_TO_Y_UP,
                                          CACHE_PREFIX,
                                          NUM_BETAS,
                                          POSE_DIMS,
                                          AmassError,
                                          amass_to_smpl_pose,
                                          check_dir,
                                          classify,
                                          find_sequences,
                                          load_sequence,
                                          npz_files,
                                          split_of,
)

__all__ = [
    "AMASS_TO_Y_UP", "FORMAT_VERSION", "NUM_BETAS", "POSE_DIMS", "READABLE_VERSIONS", "AmassError",
    "amass_to_smpl_pose", "default_cache_path", "find_sequences", "load_or_preprocess",
    "load_preprocessed", "load_sequence", "preprocess", "split_of",
]


def _convert(root: str, sequences: list[str], fps: float | None, val_fraction: float,
             show_progress: bool) -> dict:
  """Every sequence converted (:func:`load_sequence`), in lists per split as
  :func:`lgd_jax.data.amass_preprocessed.pack` takes them."""
  parts = {s: {"poses": [], "sequence_betas": [], "seq": [], "sequences": [], "genders": []}
           for s in SPLITS}
  bar = tqdm(sequences, desc="AMASS", unit="seq", disable=not show_progress)
  frames = 0
  for rel in bar:
    seq = load_sequence(os.path.join(root, rel), fps)
    part = parts[split_of(rel, val_fraction)]
    num = seq["poses"].shape[0]
    part["seq"].append(np.full(num, len(part["sequences"]), np.int32))
    part["poses"].append(seq["poses"])
    part["sequence_betas"].append(seq["betas"])
    part["sequences"].append(rel)
    part["genders"].append(seq["gender"])
    frames += num
    bar.set_postfix(frames=frames, refresh=False)
  return parts


def preprocess(amass_dir, out_path, fps: float | None = 30.0, val_fraction: float = 0.05,
               show_progress: bool = True) -> dict:
  """Converts every AMASS sequence under a directory and writes one compact ``.npz``.

  The file is written to a temporary name and renamed, so an interrupted run leaves no partial
  file behind. The layout is :mod:`lgd_jax.data.amass_preprocessed`'s.

  Args:
    amass_dir: the AMASS root.
    out_path: the ``.npz`` to write; its directory is created if needed.
    fps: target frame rate (see :func:`load_sequence`); None keeps every frame.
    val_fraction: fraction of sequences (by hash, see :func:`split_of`) held out for validation.
    show_progress: show a tqdm progress bar over the sequences.

  Returns:
    The written data, as :func:`load_preprocessed` returns it.

  Raises:
    AmassError: as :func:`find_sequences` and :func:`load_sequence`.
  """
  root = check_dir(amass_dir)
  if not 0.0 <= val_fraction <= 1.0:
    raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
  out_path = os.fspath(out_path)
  if not out_path.lower().endswith(".npz"):
    raise ValueError(f"{out_path}: expected an output path ending in .npz")
  out_abs = os.path.abspath(out_path)
  sequences, skipped = classify(root)
  skipped = [rel for rel in skipped if os.path.abspath(os.path.join(root, rel)) != out_abs]
  parts = _convert(root, sequences, fps, val_fraction, show_progress)
  out = pack(parts, root, fps, val_fraction, skipped)
  write(out_path, out)
  return unpack(out, out_path)


def _cache_name(fps: float | None, val_fraction: float) -> str:
  rate = "allfps" if fps is None else f"{float(fps):g}fps"
  return f"{CACHE_PREFIX}{rate}_val{float(val_fraction):g}.npz"


def default_cache_path(amass_dir, fps: float | None = 30.0, val_fraction: float = 0.05) -> str:
  """Where :func:`load_or_preprocess` caches by default.

  Inside ``amass_dir`` if it is writable, else in ``$XDG_CACHE_HOME/lgd_jax`` (``~/.cache/lgd_jax``)
  under a name that includes a hash of the directory's absolute path.
  """
  root = os.path.abspath(os.fspath(amass_dir))
  name = _cache_name(fps, val_fraction)
  if os.access(root, os.W_OK):
    return os.path.join(root, name)
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  tag = hashlib.sha256(root.encode("utf-8")).hexdigest()[:12]
  return os.path.join(cache_home, "lgd_jax", f"{tag}_{name}")


def _fresh_cache(root: str, cache_path: str, fps: float | None,
                 val_fraction: float) -> dict | None:
  """The cache's data if it has our format and settings, lists exactly the .npz files present
  and is newer than all of them; else None."""
  try:
    data = load_preprocessed(cache_path)
  except AmassError:
    return None
  same_fps = (data["fps"] is None and fps is None) or (
      data["fps"] is not None and fps is not None and data["fps"] == float(fps))
  if not same_fps or data["val_fraction"] != float(val_fraction):
    return None
  if os.path.abspath(data["source_dir"]) != os.path.abspath(root):
    return None
  cache_abs = os.path.abspath(cache_path)
  present = [rel for rel in npz_files(root)
             if os.path.abspath(os.path.join(root, rel)) != cache_abs]
  known = set(data["train_sequences"]) | set(data["val_sequences"]) | set(data["skipped_files"])
  if set(present) != known:
    return None
  cache_mtime = os.stat(cache_path).st_mtime
  if any(os.stat(os.path.join(root, rel)).st_mtime >= cache_mtime for rel in present):
    return None
  return data


def load_or_preprocess(amass_dir, cache_path=None, fps: float | None = 30.0,
                       val_fraction: float = 0.05, show_progress: bool = True) -> dict:
  """Loads the preprocessed AMASS cache, building it first if it is missing or stale.

  The cache is reused when it was written with the same fps, val_fraction and format version,
  for the same directory, lists exactly the ``.npz`` files now present, and is newer than all of
  them; otherwise :func:`preprocess` rewrites it.

  Args:
    amass_dir: the AMASS root.
    cache_path: where to keep the preprocessed file; default :func:`default_cache_path`.
    fps: target frame rate; None keeps every frame.
    val_fraction: fraction of sequences held out for validation.
    show_progress: show a progress bar while preprocessing.

  Returns:
    As :func:`load_preprocessed`.
  """
  root = check_dir(amass_dir)
  if cache_path is None:
    cache_path = default_cache_path(root, fps, val_fraction)
  cache_path = os.fspath(cache_path)
  data = _fresh_cache(root, cache_path, fps, val_fraction) if os.path.exists(cache_path) else None
  if data is not None:
    return data
  return preprocess(root, cache_path, fps=fps, val_fraction=val_fraction,
                    show_progress=show_progress)
