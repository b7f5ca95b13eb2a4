"""AMASS motion capture as SMPL training poses: reading, converting, splitting and caching.

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

Train and validation sets are split by sequence (a stable hash of its relative path), so frames of
one sequence never land on both sides. :func:`preprocess` writes everything into one ``.npz``:

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

Every problem with an input raises :class:`AmassError` with a one-line message naming the file,
the field and what was expected.
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
from tqdm.auto import tqdm

from lgd_jax import rotations
from lgd_jax.numerics import full_precision

FORMAT_VERSION = 2
# Version 1 stored {split}_betas per frame; it is still read (see the module docstring).
READABLE_VERSIONS = (1, 2)
NUM_BETAS = 10
# Pose widths of SMPL, SMPL+H and SMPL-X files; all start with the root and 21 body joints.
POSE_DIMS = {72: "SMPL", 156: "SMPL+H", 165: "SMPL-X"}
_SMPL_POSE = 72
_HANDS = slice(66, 72)  # SMPL's left_hand and right_hand joints: no data in SMPL+H's layout.
_FRAMERATE_KEYS = ("mocap_framerate", "mocap_frame_rate")  # SMPL+H and SMPL-X AMASS releases
_SEQUENCE_HINT_KEYS = ("trans", "dmpls") + _FRAMERATE_KEYS

# Rz(0) @ Ry(-pi/2) @ Rx(-pi/2): world (x, y, z) -> (y, z, x); AMASS's +z up becomes +y up.
AMASS_TO_Y_UP = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

_SPLITS = ("train", "val")
_CACHE_PREFIX = "lgd_jax_amass_"
_ARRAY_KEYS = ("poses", "seq", "sequence_betas", "sequences", "genders")
_V1_ARRAY_KEYS = ("poses", "betas", "seq", "sequences", "genders")
_META_KEYS = ("format_version", "source_dir", "fps", "val_fraction", "skipped_files")


class AmassError(ValueError):
  """An AMASS file or directory that cannot be used.

  The message is one line: ``<path>: <what is wrong>, expected <what>``.
  """


def _error(source: str, message: str) -> AmassError:
  return AmassError(" ".join(f"{source}: {message}".split("\n")))


def _short(exc: BaseException) -> str:
  text = " ".join(str(exc).split())
  return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shape_text(shape) -> str:
  return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


# ---------------------------------------------------------------------------------------------
# Reading one file.
# ---------------------------------------------------------------------------------------------

_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError,
                zipfile.BadZipFile)


def _open(source: str):
  """np.load without pickles; anything but a readable .npz archive is an AmassError."""
  try:
    with open(source, "rb") as f:
      head = f.read(64)
  except FileNotFoundError:
    raise _error(source, "no such file, expected an AMASS sequence .npz") from None
  except IsADirectoryError:
    raise _error(source, "is a directory, expected an AMASS sequence .npz") from None
  except OSError as e:
    raise _error(source, f"cannot be read ({_short(e)}), expected an AMASS sequence .npz") from None
  if not head.startswith(b"PK"):
    # np.load would try to unpickle it and complain about allow_pickle, which misleads.
    what = "is empty (0 bytes)" if not head else f"is not a zip archive (starts with {head[:16]!r})"
    raise _error(source, f"{what}, expected an .npz archive of AMASS arrays")
  try:
    npz = np.load(source, allow_pickle=False)
  except FileNotFoundError:
    raise _error(source, "no such file, expected an AMASS sequence .npz") from None
  except IsADirectoryError:
    raise _error(source, "is a directory, expected an AMASS sequence .npz") from None
  except _READ_ERRORS as e:
    raise _error(source, f"cannot be read as an .npz archive ({_short(e)}), expected an AMASS "
                 "sequence .npz") from None
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise _error(source, "is a single .npy array, expected an .npz archive of AMASS arrays")
  return npz


def _get(npz, key: str, source: str, expected: str) -> np.ndarray:
  try:
    value = npz[key]
  except _READ_ERRORS as e:
    raise _error(source, f"'{key}' cannot be read ({_short(e)}), expected {expected}") from None
  return value


def _float(npz, key: str, source: str, expected: str) -> np.ndarray:
  value = _get(npz, key, source, expected)
  if value.dtype.kind not in "fiu":
    raise _error(source, f"'{key}' has dtype {value.dtype}, expected numbers {expected}")
  value = value.astype(np.float64)
  if not np.all(np.isfinite(value)):
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    raise _error(source, f"'{key}' has {bad} NaN/Inf values, expected finite numbers {expected}")
  return value


def _gender(npz) -> str:
  if "gender" not in npz.files:
    return "unknown"
  try:
    value = npz["gender"]
  except _READ_ERRORS:  # e.g. stored as a pickled object, which is never unpickled here
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
    raise _error(source, f"missing key 'poses' although it has '{hints[0]}', expected an AMASS "
                 "sequence with 'poses' (N, 156)")
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
  out = np.array(poses[:, :_SMPL_POSE], np.float32)
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
  with _open(source) as npz:
    files = set(npz.files)
    if "poses" not in files:
      _is_sequence(files, source)  # the more specific message for a broken sequence file
      raise _error(source, "missing key 'poses', expected an AMASS sequence with 'poses' "
                   "(N, 156)")
    expected_poses = "(N, 156) or (N, 165) or (N, 72) with N >= 1"
    poses = _float(npz, "poses", source, expected_poses)
    if poses.ndim != 2 or poses.shape[1] not in POSE_DIMS or poses.shape[0] == 0:
      raise _error(source, f"'poses' has shape {_shape_text(poses.shape)}, expected "
                   f"{expected_poses}")
    if "betas" not in files:
      raise _error(source, f"missing key 'betas', expected shape (B,) with B >= {NUM_BETAS}")
    betas = _float(npz, "betas", source, f"(B,) with B >= {NUM_BETAS}")
    if betas.ndim != 1 or betas.shape[0] < NUM_BETAS:
      raise _error(source, f"'betas' has shape {_shape_text(betas.shape)}, expected (B,) with "
                   f"B >= {NUM_BETAS}")
    rate_key = next((k for k in _FRAMERATE_KEYS if k in files), None)
    if rate_key is None:
      if fps is not None:
        raise _error(source, f"missing key 'mocap_framerate', expected the source frame rate "
                     f"to subsample to {fps:g} fps")
      source_fps = math.nan
    else:
      rate = _float(npz, rate_key, source, "(a positive scalar)")
      if rate.size != 1 or not rate.reshape(()) > 0:
        raise _error(source, f"'{rate_key}' is {rate.tolist()}, expected a positive scalar")
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


def _check_dir(amass_dir) -> str:
  root = os.fspath(amass_dir)
  if not os.path.isdir(root):
    what = "is not a directory" if os.path.exists(root) else "no such directory"
    raise _error(root, f"{what}, expected the AMASS root (a tree of per-sequence .npz files)")
  return root


def _npz_files(root: str) -> list[str]:
  """Relative paths ('/'-separated) of all .npz files under root but our caches, sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for name in filenames:
      # Caches of other settings may sit beside the data; they must not make each other stale.
      if name.lower().endswith(".npz") and not name.startswith(_CACHE_PREFIX):
        rel = os.path.relpath(os.path.join(dirpath, name), root)
        found.append(rel.replace(os.sep, "/"))
  return sorted(found)


def _classify(root: str) -> tuple[list[str], list[str]]:
  """(sequence files, other .npz files) under root; a broken or unreadable file is an error."""
  sequences, skipped = [], []
  for rel in _npz_files(root):
    source = os.path.join(root, rel)
    with _open(source) as npz:
      (sequences if _is_sequence(set(npz.files), source) else skipped).append(rel)
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
  root = _check_dir(amass_dir)
  sequences, _ = _classify(root)
  if not sequences:
    raise _error(root, f"no AMASS sequences (*.npz with 'poses') under {root}, expected the AMASS "
                 "root (a tree of per-sequence .npz files)")
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


# ---------------------------------------------------------------------------------------------
# The preprocessed file.
# ---------------------------------------------------------------------------------------------


def _fps_value(fps: float | None) -> float:
  return math.nan if fps is None else float(fps)


def preprocess(amass_dir, out_path, fps: float | None = 30.0, val_fraction: float = 0.05,
               show_progress: bool = True) -> dict:
  """Converts every AMASS sequence under a directory and writes one compact ``.npz``.

  The file is written to a temporary name and renamed, so an interrupted run leaves no partial
  file behind. The layout is described in the module docstring.

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
  root = _check_dir(amass_dir)
  if not 0.0 <= val_fraction <= 1.0:
    raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
  out_path = os.fspath(out_path)
  if not out_path.lower().endswith(".npz"):
    raise ValueError(f"{out_path}: expected an output path ending in .npz")
  out_abs = os.path.abspath(out_path)
  sequences, skipped = _classify(root)
  skipped = [rel for rel in skipped if os.path.abspath(os.path.join(root, rel)) != out_abs]
  if not sequences:
    raise _error(root, f"no AMASS sequences (*.npz with 'poses') under {root}, expected the AMASS "
                 "root (a tree of per-sequence .npz files)")
  parts = {s: {"poses": [], "sequence_betas": [], "seq": [], "sequences": [], "genders": []}
           for s in _SPLITS}
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
  out = {
      "format_version": np.int64(FORMAT_VERSION),
      "source_dir": np.str_(os.path.abspath(root)),
      "fps": np.float64(_fps_value(fps)),
      "val_fraction": np.float64(val_fraction),
      "skipped_files": np.array(skipped, dtype=str).reshape(-1),
  }
  for split, part in parts.items():
    out[f"{split}_poses"] = (np.concatenate(part["poses"]) if part["poses"]
                             else np.zeros((0, _SMPL_POSE), np.float32))
    out[f"{split}_sequence_betas"] = np.array(part["sequence_betas"], np.float32).reshape(
        -1, NUM_BETAS)
    out[f"{split}_seq"] = (np.concatenate(part["seq"]) if part["seq"]
                           else np.zeros((0,), np.int32))
    out[f"{split}_sequences"] = np.array(part["sequences"], dtype=str).reshape(-1)
    out[f"{split}_genders"] = np.array(part["genders"], dtype=str).reshape(-1)
  os.makedirs(os.path.dirname(out_abs), exist_ok=True)
  tmp = f"{out_path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
      np.savez(f, **out)
    os.replace(tmp, out_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return _unpack(out, out_path)


def _version(raw, source: str) -> int:
  if "format_version" not in raw:
    raise _error(source, "missing key 'format_version', expected a file written by "
                 "lgd_jax.data.amass.preprocess (delete it to rebuild)")
  version = int(np.asarray(raw["format_version"]))
  if version not in READABLE_VERSIONS:
    raise _error(source, f"'format_version' is {version}, expected one of {READABLE_VERSIONS} "
                 "(delete it to rebuild)")
  return version


def _per_sequence_betas(betas: np.ndarray, seq: np.ndarray, num_seq: int, source: str,
                        split: str) -> np.ndarray:
  """Version 1's per-frame betas (N, 10) as one row per sequence (S, 10)."""
  out = np.zeros((num_seq, NUM_BETAS), np.float32)  # a sequence without frames keeps zeros
  present, first = np.unique(seq, return_index=True)  # each sequence's first frame
  out[present] = betas[first]
  differs = np.flatnonzero(np.any(betas != out[seq], axis=-1))
  if differs.size:
    raise _error(source, f"'{split}_betas' differs within sequence {int(seq[differs[0]])} (frame "
                 f"{int(differs[0])}), expected one shape per sequence (delete it to rebuild)")
  return out


def _unpack(raw, source: str) -> dict:
  """Validates the preprocessed arrays and returns plain Python metadata with them."""
  version = _version(raw, source)
  array_keys = _ARRAY_KEYS if version == FORMAT_VERSION else _V1_ARRAY_KEYS
  missing = [k for k in _META_KEYS + tuple(f"{s}_{k}" for s in _SPLITS for k in array_keys)
             if k not in raw]
  if missing:
    raise _error(source, f"missing key '{missing[0]}', expected a file written by "
                 "lgd_jax.data.amass.preprocess (delete it to rebuild)")
  data = {
      "format_version": version,
      "source_dir": str(np.asarray(raw["source_dir"])),
      "fps": None if math.isnan(float(raw["fps"])) else float(raw["fps"]),
      "val_fraction": float(raw["val_fraction"]),
      "skipped_files": [str(s) for s in np.asarray(raw["skipped_files"]).reshape(-1)],
  }
  for split in _SPLITS:
    poses = np.asarray(raw[f"{split}_poses"])
    num = poses.shape[0] if poses.ndim else -1
    sequences = [str(s) for s in np.asarray(raw[f"{split}_sequences"]).reshape(-1)]
    genders = [str(s) for s in np.asarray(raw[f"{split}_genders"]).reshape(-1)]
    want = {f"{split}_poses": ((num, _SMPL_POSE), "f"),
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
        raise _error(source, f"'{key}' has shape {_shape_text(arr.shape)} and dtype {arr.dtype}, "
                     f"expected {_shape_text((rows,) + shape[1:])} "
                     f"{'float' if kinds == 'f' else 'int'} (delete it to rebuild)")
      arrays[key] = arr
    seq = arrays[f"{split}_seq"]
    if seq.size and (seq.min() < 0 or seq.max() >= len(sequences)):
      raise _error(source, f"'{split}_seq' has indices outside [0, {len(sequences)}), expected "
                   f"indices into '{split}_sequences' (delete it to rebuild)")
    if len(genders) != len(sequences):
      raise _error(source, f"'{split}_genders' has {len(genders)} entries, expected "
                   f"{len(sequences)} (one per sequence)")
    seq = seq.astype(np.int32, copy=False)
    if version == 1:
      betas = _per_sequence_betas(arrays[f"{split}_betas"].astype(np.float32, copy=False), seq,
                                  len(sequences), source, split)
    else:
      betas = arrays[f"{split}_sequence_betas"].astype(np.float32, copy=False)
    data[f"{split}_poses"] = arrays[f"{split}_poses"].astype(np.float32, copy=False)
    data[f"{split}_seq"] = seq
    data[f"{split}_sequence_betas"] = betas
    data[f"{split}_sequences"] = sequences
    data[f"{split}_genders"] = genders
  return data


def load_preprocessed(path) -> dict:
  """Loads and validates a file written by :func:`preprocess`.

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
  with _open(source) as npz:
    try:
      raw = {k: npz[k] for k in npz.files}
    except _READ_ERRORS as e:
      raise _error(source, f"cannot be read ({_short(e)}), expected a file written by "
                   "lgd_jax.data.amass.preprocess (delete it to rebuild)") from None
  return _unpack(raw, source)


def _cache_name(fps: float | None, val_fraction: float) -> str:
  rate = "allfps" if fps is None else f"{float(fps):g}fps"
  return f"{_CACHE_PREFIX}{rate}_val{float(val_fraction):g}.npz"


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
  present = [rel for rel in _npz_files(root)
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
  root = _check_dir(amass_dir)
  if cache_path is None:
    cache_path = default_cache_path(root, fps, val_fraction)
  cache_path = os.fspath(cache_path)
  data = _fresh_cache(root, cache_path, fps, val_fraction) if os.path.exists(cache_path) else None
  if data is not None:
    return data
  return preprocess(root, cache_path, fps=fps, val_fraction=val_fraction,
                    show_progress=show_progress)
