"""AMASS sequence files: reading one, converting it to SMPL, finding them, splitting them.

AMASS (https://amass.is.tue.mpg.de) is a tree of per-sequence ``.npz`` files with keys ``poses``
(N, 156) SMPL+H axis-angle (root 0:3, body 3:66, hands 66:156), ``betas`` (16,), ``trans`` (N, 3),
``gender``, ``mocap_framerate`` and ``dmpls`` (N, 8), in a z-up world. Per-subject ``shape.npz``
files carry no ``poses`` and are skipped.

The conversion to SMPL follows the official LGD preprocessing (``scripts/preprocess_AMASS.py`` of
InpatientJam/Learned-Gradient-Descent):

* ``poses[:, :72]`` with entries 66:72 (SMPL's two hand joints) set to zero, and ``betas[:10]``.
  The same slicing serves SMPL-X (N, 165) and plain SMPL (N, 72) files.
* The root orientation is left-multiplied by :data:`AMASS_TO_Y_UP`. The official code composes
  ``euler_to_rot(x=-1.57, y=-1.57, z=0) = Rz(0) @ Ry(-1.57) @ Rx(-1.57)``; here the angles are
  exactly -pi/2, which gives the permutation matrix below (the official one differs by 0.05 deg).
  Rx(-90) turns AMASS's up axis +z into +y; Ry(-90) then only changes the heading (+x becomes +z),
  which the training code randomises anyway. A standing AMASS body, whose root maps SMPL's +y onto
  world +z, is upright along +y afterwards.

Train and validation sets are split by sequence (:func:`split_of`, a stable hash of its relative
path), so frames of one sequence never land on both sides.

Every problem with an input raises :class:`AmassError` with a one-line message naming the file,
the field and what was expected. :mod:`lgd_jax.data.amass` re-exports the public names.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax.errors import UserError, describe, shape_text
from lgd_jax.geometry import rotations
from lgd_jax.geometry.numerics import full_precision

NUM_BETAS = 10
# Pose widths of SMPL, SMPL+H and SMPL-X files; all start with the root and 21 body joints.
POSE_DIMS = {72: "SMPL", 156: "SMPL+H", 165: "SMPL-X"}
SMPL_POSE_DIM = 72
_HANDS = slice(66, 72)  # SMPL's left_hand and right_hand joints: no data in SMPL+H's layout.
_FRAMERATE_KEYS = ("mocap_framerate", "mocap_frame_rate")  # SMPL+H and SMPL-X AMASS releases
_SEQUENCE_HINT_KEYS = ("trans", "dmpls") + _FRAMERATE_KEYS
# The preprocessed caches' names start with this (lgd_jax.data.amass); the tree walk skips them.
CACHE_PREFIX = "lgd_jax_amass_"

# Rz(0) @ Ry(-pi/2) @ Rx(-pi/2): world (x, y, z) -> (y, z, x); AMASS's +z up becomes +y up.
AMASS_TO_Y_UP = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


class AmassError(UserError):
  """An AMASS file or directory that cannot be used.

  The message is one line: ``<path>: <what is wrong>, expected <what>``.
  """


# ---------------------------------------------------------------------------------------------
# Reading one file.
# ---------------------------------------------------------------------------------------------

# What np.load and reading an .npz member raise for a damaged or foreign file.
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError,
               zipfile.BadZipFile)


def open_npz(source: str):
  """np.load without pickles; anything but a readable .npz archive is an AmassError."""
  try:
    with open(source, "rb") as f:
      head = f.read(64)
  except FileNotFoundError:
    raise AmassError.at(source, "no such file, expected an AMASS sequence .npz") from None
  except IsADirectoryError:
    raise AmassError.at(source, "is a directory, expected an AMASS sequence .npz") from None
  except OSError as e:
    raise AmassError.at(source, f"cannot be read ({describe(e)}), expected an AMASS sequence "
                        ".npz") from None
  if not head.startswith(b"PK"):
    # np.load would try to unpickle it and complain about allow_pickle, which misleads.
    what = "is empty (0 bytes)" if not head else f"is not a zip archive (starts with {head[:16]!r})"
    raise AmassError.at(source, f"{what}, expected an .npz archive of AMASS arrays")
  try:
    npz = np.load(source, allow_pickle=False)
  except FileNotFoundError:
    raise AmassError.at(source, "no such file, expected an AMASS sequence .npz") from None
  except IsADirectoryError:
    raise AmassError.at(source, "is a directory, expected an AMASS sequence .npz") from None
  except READ_ERRORS as e:
    raise AmassError.at(source, f"cannot be read as an .npz archive ({describe(e)}), expected an "
                        "AMASS sequence .npz") from None
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise AmassError.at(source, "is a single .npy array, expected an .npz archive of AMASS arrays")
  return npz


def _get(npz, key: str, source: str, expected: str) -> np.ndarray:
  try:
    value = npz[key]
  except READ_ERRORS as e:
    raise AmassError.at(source, f"'{key}' cannot be read ({describe(e)}), expected "
                        f"{expected}") from None
  return value


def _float(npz, key: str, source: str, expected: str) -> np.ndarray:
  value = _get(npz, key, source, expected)
  if value.dtype.kind not in "fiu":
    raise AmassError.at(source, f"'{key}' has dtype {value.dtype}, expected numbers {expected}")
  value = value.astype(np.float64)
  if not np.all(np.isfinite(value)):
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    raise AmassError.at(source, f"'{key}' has {bad} NaN/Inf values, expected finite numbers "
                        f"{expected}")
  return value


def _gender(npz) -> str:
  if "gender" not in npz.files:
    return "unknown"
  try:
    value = npz["gender"]
  except READ_ERRORS:  # e.g. stored as a pickled object, which is never unpickled here
    return "unknown"
  if value.dtype.kind not in "US" or value.size != 1:
    return "unknown"
  item = value.reshape(()).item()
  return (item.decode("latin1") if isinstance(item, bytes) else str(item)).strip() or "unknown"


def _is_sequence(files, source: str) -> bool:
  """True for a sequence file; False for files without poses (shape.npz); error if broken."""
  if "poses" in files:
    return True
  hints = [k for k in _SEQUENCE_HINT_KEYS if k in files]
  if hints:
    raise AmassError.at(source, f"missing key 'poses' although it has '{hints[0]}', expected an "
                        "AMASS sequence with 'poses' (N, 156)")
  return False


_to_y_up_cache = {}


def _rotate_roots(root_aa: np.ndarray) -> np.ndarray:
  """AMASS_TO_Y_UP @ R(root) as axis-angle, padded to a power of two so few shapes compile."""
  n = root_aa.shape[0]
  size = max(64, 1 << (n - 1).bit_length())
  padded = np.zeros((size, 3), np.float32)
  padded[:n] = root_aa
  fn = _to_y_up_cache.get("fn")
  if fn is None:
    fix = jnp.asarray(AMASS_TO_Y_UP, jnp.float32)
    fn = _to_y_up_cache["fn"] = jax.jit(full_precision(
        lambda aa: rotations.matrix_to_axis_angle(fix @ rotations.axis_angle_to_matrix(aa))))
  return np.asarray(fn(jnp.asarray(padded)))[:n]


def amass_to_smpl_pose(poses: np.ndarray) -> np.ndarray:
  """Converts AMASS poses (z-up, SMPL+H/SMPL-X/SMPL layout) to y-up SMPL poses.

  Args:
    poses: (N, D) axis-angle with D in 72, 156, 165; root orientation first, then 21 body joints.

  Returns:
    (N, 72) float32: the first 72 entries, SMPL's hand joints (66:72) zeroed, the root
    left-multiplied by :data:`AMASS_TO_Y_UP`.
  """
  out = np.array(poses[:, :SMPL_POSE_DIM], np.float32)
  out[:, _HANDS] = 0.0
  out[:, :3] = _rotate_roots(out[:, :3])
  return out


def load_sequence(path, fps: float | None = None) -> dict:
  """Reads one AMASS sequence and converts it to y-up SMPL poses.

  Args:
    path: the sequence ``.npz``.
    fps: target frame rate; keeps every ``round(source_fps / fps)``-th frame (at least every
      frame). None keeps all frames (as the official preprocessing does).

  Returns:
    A dict with poses (T, 72) float32 (see :func:`amass_to_smpl_pose`), betas (10,) float32,
    gender (str, "unknown" if absent or unreadable), fps (float, the frame rate after
    subsampling; NaN when the file has no frame rate and ``fps`` is None) and source_fps.

  Raises:
    AmassError: unreadable file, missing ``poses``/``betas`` (or frame rate when subsampling),
      wrong shapes, fewer than 10 betas, NaN/Inf, non-positive frame rate.
  """
  source = os.fspath(path)
  with open_npz(source) as npz:
    files = set(npz.files)
    if "poses" not in files:
      _is_sequence(files, source)  # the more specific message for a broken sequence file
      raise AmassError.at(source, "missing key 'poses', expected an AMASS sequence with 'poses' "
                          "(N, 156)")
    expected_poses = "(N, 156) or (N, 165) or (N, 72) with N >= 1"
    poses = _float(npz, "poses", source, expected_poses)
    if poses.ndim != 2 or poses.shape[1] not in POSE_DIMS or poses.shape[0] == 0:
      raise AmassError.at(source, f"'poses' has shape {shape_text(poses.shape)}, expected "
                          f"{expected_poses}")
    if "betas" not in files:
      raise AmassError.at(source, f"missing key 'betas', expected shape (B,) with B >= {NUM_BETAS}")
    betas = _float(npz, "betas", source, f"(B,) with B >= {NUM_BETAS}")
    if betas.ndim != 1 or betas.shape[0] < NUM_BETAS:
      raise AmassError.at(source, f"'betas' has shape {shape_text(betas.shape)}, expected (B,) "
                          f"with B >= {NUM_BETAS}")
    rate_key = next((k for k in _FRAMERATE_KEYS if k in files), None)
    if rate_key is None:
      if fps is not None:
        raise AmassError.at(source, "missing key 'mocap_framerate', expected the source frame "
                            f"rate to subsample to {fps:g} fps")
      source_fps = math.nan
    else:
      rate = _float(npz, rate_key, source, "(a positive scalar)")
      if rate.size != 1 or not rate.reshape(()) > 0:
        raise AmassError.at(source, f"'{rate_key}' is {rate.tolist()}, expected a positive scalar")
      source_fps = float(rate.reshape(()))
    gender = _gender(npz)
  step = 1
  if fps is not None:
    if not fps > 0:
      raise ValueError(f"fps must be positive or None, got {fps!r}")
    step = max(1, int(round(source_fps / fps)))
  return {
      "poses": amass_to_smpl_pose(poses[::step]),
      "betas": betas[:NUM_BETAS].astype(np.float32),
      "gender": gender,
      "fps": source_fps / step,
      "source_fps": source_fps,
  }


# ---------------------------------------------------------------------------------------------
# The directory tree.
# ---------------------------------------------------------------------------------------------


def check_dir(amass_dir) -> str:
  """The AMASS root as a str; an AmassError if it is not a directory."""
  root = os.fspath(amass_dir)
  if not os.path.isdir(root):
    what = "is not a directory" if os.path.exists(root) else "no such directory"
    raise AmassError.at(root, f"{what}, expected the AMASS root (a tree of per-sequence .npz "
                        "files)")
  return root


def npz_files(root: str) -> list[str]:
  """Relative paths ('/'-separated) of all .npz files under root but our caches, sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for name in filenames:
      # Caches of other settings may sit beside the data; they must not make each other stale.
      if name.lower().endswith(".npz") and not name.startswith(CACHE_PREFIX):
        rel = os.path.relpath(os.path.join(dirpath, name), root)
        found.append(rel.replace(os.sep, "/"))
  return sorted(found)


def classify(root: str) -> tuple[list[str], list[str]]:
  """(sequence files, other .npz files) under root; a broken or unreadable file, or no sequence
  at all, is an error."""
  sequences, skipped = [], []
  for rel in npz_files(root):
    source = os.path.join(root, rel)
    with open_npz(source) as npz:
      (sequences if _is_sequence(set(npz.files), source) else skipped).append(rel)
  if not sequences:
    raise AmassError.at(root, f"no AMASS sequences (*.npz with 'poses') under {root}, expected the "
                        "AMASS root (a tree of per-sequence .npz files)")
  return sequences, skipped


def find_sequences(amass_dir) -> list[str]:
  """Relative paths of all AMASS sequence files (``*.npz`` with ``poses``) under a directory.

  Files without ``poses`` and without sequence keys (``shape.npz``, caches) are skipped.

  Args:
    amass_dir: the AMASS root, searched recursively.

  Returns:
    Sorted '/'-separated paths relative to ``amass_dir``.

  Raises:
    AmassError: the directory does not exist or holds no sequences; a file is unreadable, or has
      sequence keys (``trans``, ``mocap_framerate``) but no ``poses``.
  """
  sequences, _ = classify(check_dir(amass_dir))
  return sequences


def split_of(relpath: str, val_fraction: float) -> str:
  """Assigns a sequence to 'train' or 'val' from a stable hash of its relative path.

  Args:
    relpath: the path relative to the AMASS root ('/' or os.sep separated).
    val_fraction: the expected fraction of sequences in 'val', in [0, 1].

  Returns:
    'val' if the SHA-256 of the path, read as a number in [0, 1), is below ``val_fraction``,
    else 'train'. The same on every machine and Python run.
  """
  if not 0.0 <= val_fraction <= 1.0:
    raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
  digest = hashlib.sha256(relpath.replace(os.sep, "/").encode("utf-8")).digest()
  return "val" if int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction else "train"
