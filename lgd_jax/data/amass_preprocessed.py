"""The preprocessed AMASS file: one compact ``.npz`` of every converted sequence, written and read.

:func:`lgd_jax.data.amass.preprocess` converts the sequences (:mod:`lgd_jax.data.amass_sequences`)
and writes them with :func:`write` in this layout:

    format_version  ()         int, :data:`FORMAT_VERSION`
    source_dir      ()         str, absolute path of the AMASS root
    fps             ()         float, target frame rate (NaN: every frame kept)
    val_fraction    ()         float
    {split}_poses   (N, 72)    float32 converted SMPL poses, y-up, hands zeroed
    {split}_seq     (N,)       int32 index of each frame's sequence in {split}_sequences
    {split}_sequence_betas (S, 10)  float32 shape of each sequence (frame i's: [seq[i]])
    {split}_sequences (S,)     str relative paths of the sequences, sorted
    {split}_genders (S,)       str gender of each sequence ("unknown" if unreadable)
    skipped_files   (K,)       str relative paths of .npz files without poses (shape.npz, ...)

for split in ("train", "val"). An AMASS sequence has one shape, so the betas are stored once per
sequence and indexed per frame: 40 bytes per sequence instead of per frame (about 600 MB saved on
the ~15 M frames of AMASS at its capture rates). Files of format version 1, which repeated the
betas per frame as ``{split}_betas`` (N, 10), are still read: :func:`load_preprocessed` folds them
into the per-sequence layout (checking that each sequence's frames share one shape), so an
existing cache is reused rather than rebuilt.
"""

from __future__ import annotations

import math
import os

import numpy as np

from lgd_jax.data.amass_sequences import NUM_BETAS, READ_ERRORS, SMPL_POSE_DIM, AmassError, open_npz
from lgd_jax.errors import describe, shape_text

FORMAT_VERSION = 2
# Version 1 stored {split}_betas per frame; it is still read (see the module docstring).
READABLE_VERSIONS = (1, 2)
SPLITS = ("train", "val")
_ARRAY_KEYS = ("poses", "seq", "sequence_betas", "sequences", "genders")
_V1_ARRAY_KEYS = ("poses", "betas", "seq", "sequences", "genders")
_META_KEYS = ("format_version", "source_dir", "fps", "val_fraction", "skipped_files")


def pack(parts: dict, root: str, fps: float | None, val_fraction: float,
         skipped: list[str]) -> dict:
  """The file's arrays from the converted sequences.

  Args:
    parts: for each split, lists "poses" (per sequence (T, 72)), "sequence_betas" ((10,) each),
      "seq" ((T,) int32 each), "sequences" and "genders" (str each).
    root: the AMASS root.
    fps: the target frame rate, or None for every frame.
    val_fraction: the fraction of sequences held out.
    skipped: relative paths of the .npz files without poses.
  """
  out = {
      "format_version": np.int64(FORMAT_VERSION),
      "source_dir": np.str_(os.path.abspath(root)),
      "fps": np.float64(math.nan if fps is None else float(fps)),
      "val_fraction": np.float64(val_fraction),
      "skipped_files": np.array(skipped, dtype=str).reshape(-1),
  }
  for split, part in parts.items():
    out[f"{split}_poses"] = (np.concatenate(part["poses"]) if part["poses"]
                             else np.zeros((0, SMPL_POSE_DIM), np.float32))
    out[f"{split}_sequence_betas"] = np.array(part["sequence_betas"], np.float32).reshape(
        -1, NUM_BETAS)
    out[f"{split}_seq"] = (np.concatenate(part["seq"]) if part["seq"]
                           else np.zeros((0,), np.int32))
    out[f"{split}_sequences"] = np.array(part["sequences"], dtype=str).reshape(-1)
    out[f"{split}_genders"] = np.array(part["genders"], dtype=str).reshape(-1)
  return out


def write(out_path: str, out: dict) -> None:
  """Writes :func:`pack`'s arrays to a temporary name and renames it, so an interrupted run leaves
  no partial file behind; the directory is created if needed."""
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tmp = f"{out_path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
      np.savez(f, **out)
    os.replace(tmp, out_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _version(raw, source: str) -> int:
  if "format_version" not in raw:
    raise AmassError.at(source, "missing key 'format_version', expected a file written by "
                        "lgd_jax.data.amass.preprocess (delete it to rebuild)")
  version = int(np.asarray(raw["format_version"]))
  if version not in READABLE_VERSIONS:
    raise AmassError.at(source, f"'format_version' is {version}, expected one of "
                        f"{READABLE_VERSIONS} (delete it to rebuild)")
  return version


def _per_sequence_betas(betas: np.ndarray, seq: np.ndarray, num_seq: int, source: str,
                        split: str) -> np.ndarray:
  """Version 1's per-frame betas (N, 10) as one row per sequence (S, 10)."""
  out = np.zeros((num_seq, NUM_BETAS), np.float32)  # a sequence without frames keeps zeros
  present, first = np.unique(seq, return_index=True)  # each sequence's first frame
  out[present] = betas[first]
  differs = np.flatnonzero(np.any(betas != out[seq], axis=-1))
  if differs.size:
    raise AmassError.at(source, f"'{split}_betas' differs within sequence {int(seq[differs[0]])} "
                        f"(frame {int(differs[0])}), expected one shape per sequence (delete it to "
                        "rebuild)")
  return out


def _unpack_split(raw, source: str, version: int, split: str) -> dict:
  """One split's arrays of a file of ``version``, validated; version 1's betas folded."""
  poses = np.asarray(raw[f"{split}_poses"])
  num = poses.shape[0] if poses.ndim else -1
  sequences = [str(s) for s in np.asarray(raw[f"{split}_sequences"]).reshape(-1)]
  genders = [str(s) for s in np.asarray(raw[f"{split}_genders"]).reshape(-1)]
  want = {f"{split}_poses": ((num, SMPL_POSE_DIM), "f"),
          f"{split}_seq": ((num,), "iu")}
  if version == 1:
    want[f"{split}_betas"] = ((num, NUM_BETAS), "f")
  else:
    want[f"{split}_sequence_betas"] = ((len(sequences), NUM_BETAS), "f")
  arrays = {}
  for key, (shape, kinds) in want.items():
    arr = np.asarray(raw[key])
    if arr.shape != shape or arr.dtype.kind not in kinds:
      rows = "S" if key.endswith("sequence_betas") else "N"
      raise AmassError.at(source, f"'{key}' has shape {shape_text(arr.shape)} and dtype "
                          f"{arr.dtype}, expected {shape_text((rows,) + shape[1:])} "
                          f"{'float' if kinds == 'f' else 'int'} (delete it to rebuild)")
    arrays[key] = arr
  seq = arrays[f"{split}_seq"]
  if seq.size and (seq.min() < 0 or seq.max() >= len(sequences)):
    raise AmassError.at(source, f"'{split}_seq' has indices outside [0, {len(sequences)}), "
                        f"expected indices into '{split}_sequences' (delete it to rebuild)")
  if len(genders) != len(sequences):
    raise AmassError.at(source, f"'{split}_genders' has {len(genders)} entries, expected "
                        f"{len(sequences)} (one per sequence)")
  seq = seq.astype(np.int32, copy=False)
  if version == 1:
    betas = _per_sequence_betas(arrays[f"{split}_betas"].astype(np.float32, copy=False), seq,
                                len(sequences), source, split)
  else:
    betas = arrays[f"{split}_sequence_betas"].astype(np.float32, copy=False)
  return {
      f"{split}_poses": arrays[f"{split}_poses"].astype(np.float32, copy=False),
      f"{split}_seq": seq,
      f"{split}_sequence_betas": betas,
      f"{split}_sequences": sequences,
      f"{split}_genders": genders,
  }


def unpack(raw, source: str) -> dict:
  """Validates the preprocessed arrays (a mapping of the file's keys) and returns them with plain
  Python metadata, as :func:`load_preprocessed` does."""
  version = _version(raw, source)
  array_keys = _ARRAY_KEYS if version == FORMAT_VERSION else _V1_ARRAY_KEYS
  missing = [k for k in _META_KEYS + tuple(f"{s}_{k}" for s in SPLITS for k in array_keys)
             if k not in raw]
  if missing:
    raise AmassError.at(source, f"missing key '{missing[0]}', expected a file written by "
                        "lgd_jax.data.amass.preprocess (delete it to rebuild)")
  data = {
      "format_version": version,
      "source_dir": str(np.asarray(raw["source_dir"])),
      "fps": None if math.isnan(float(raw["fps"])) else float(raw["fps"]),
      "val_fraction": float(raw["val_fraction"]),
      "skipped_files": [str(s) for s in np.asarray(raw["skipped_files"]).reshape(-1)],
  }
  for split in SPLITS:
    data.update(_unpack_split(raw, source, version, split))
  return data


def load_preprocessed(path) -> dict:
  """Loads and validates a file written by :func:`lgd_jax.data.amass.preprocess`.

  Args:
    path: the ``.npz``.

  Returns:
    A dict with format_version (int, the file's), source_dir (str), fps (float, or None for every
    frame), val_fraction (float), skipped_files (list of str) and, for split in train/val:
    {split}_poses (N, 72) float32, {split}_seq (N,) int32, {split}_sequence_betas (S, 10)
    float32 (a frame's shape is ``sequence_betas[seq[i]]``; also for a version-1 file, whose
    per-frame betas are folded), {split}_sequences and {split}_genders (lists of S str).

  Raises:
    AmassError: unreadable file, missing keys, wrong shapes, a version-1 file whose betas differ
      within a sequence, or an unknown format version.
  """
  source = os.fspath(path)
  with open_npz(source) as npz:
    try:
      raw = {k: npz[k] for k in npz.files}
    except READ_ERRORS as e:
      raise AmassError.at(source, f"cannot be read ({describe(e)}), expected a file written by "
                          "lgd_jax.data.amass.preprocess (delete it to rebuild)") from None
  return unpack(raw, source)

