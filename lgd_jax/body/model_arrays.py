"""Validating an SMPL model's values (as unpickled or loaded) into the arrays of a body model.

:func:`model_arrays` checks the official keys of a model file, whatever read it
(:mod:`lgd_jax.body.smpl_pickle` or NumPy's ``.npz``), and returns float64/int64 arrays; every
problem is a :class:`~lgd_jax.body.model_files.ModelFileError` that names the file, the key and
what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lgd_jax.body.model import NUM_JOINTS
from lgd_jax.body.model_files import REQUIRED_KEYS, ModelFileError
from lgd_jax.body.smpl_pickle import to_array
from lgd_jax.errors import shape_text

# kintree_table marks the root's parent with -1 stored as an unsigned 32-bit integer.
_ROOT_MARKERS = (-1, 2**32 - 1, 2**64 - 1)
OFFICIAL_ROOT = 2**32 - 1


def _numeric(value, key: str, source: str, expected: str) -> np.ndarray:
  arr = to_array(value, key, source)
  if arr.dtype.kind not in "iuf":
    raise ModelFileError.at(source, f"key '{key}' has dtype {arr.dtype}, expected numbers "
                            f"{expected}")
  return arr


def _float(value, key: str, source: str, expected: str) -> np.ndarray:
  arr = _numeric(value, key, source, expected).astype(np.float64)
  bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
  if bad:
    raise ModelFileError.at(source, f"key '{key}' has {bad} NaN/Inf values, expected finite "
                            "numbers")
  return arr


def _integers(value, key: str, source: str, expected: str) -> np.ndarray:
  arr = _numeric(value, key, source, expected)
  if arr.dtype.kind == "f":
    # Some conversions store indices as floats; accept them only if they are whole numbers.
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
      raise ModelFileError.at(source, f"key '{key}' has non-integer values, expected integers "
                              f"{expected}")
    arr = arr.astype(np.int64)
  return arr


def _check_shape(arr: np.ndarray, key: str, source: str, expected: tuple, shown=None) -> None:
  """expected: ints, None (any) or (">=", n); a mismatch names the key and both shapes."""
  def ok(want, got):
    if want is None:
      return True
    if isinstance(want, tuple):
      return got >= want[1]
    return got == want
  if arr.ndim != len(expected) or not all(ok(w, g) for w, g in zip(expected, arr.shape)):
    text = shown or shape_text(["*" if w is None else f">={w[1]}" if isinstance(w, tuple)
                                else w for w in expected])
    raise ModelFileError.at(source, f"key '{key}' has shape {shape_text(arr.shape)}, expected "
                            f"{text}")


def _parents_from_kintree(table: np.ndarray, source: str) -> tuple[int, ...]:
  _check_shape(table, "kintree_table", source, (2, NUM_JOINTS),
               f"(2, {NUM_JOINTS}) (SMPL's {NUM_JOINTS} joints)")
  parent_ids = [int(p) for p in table[0]]
  joint_ids = [int(j) for j in table[1]]
  if sorted(joint_ids) != list(range(NUM_JOINTS)):
    raise ModelFileError.at(source, f"key 'kintree_table' row 1 is {joint_ids}, expected the joint "
                            f"ids 0..{NUM_JOINTS - 1}")
  parents = [0] * NUM_JOINTS
  for joint, parent in zip(joint_ids, parent_ids):
    if parent in _ROOT_MARKERS:
      parents[joint] = -1
    elif 0 <= parent < NUM_JOINTS:
      parents[joint] = parent
    else:
      raise ModelFileError.at(source, f"key 'kintree_table' names parent {parent} for joint "
                              f"{joint}, expected a joint id in [0, {NUM_JOINTS}) or "
                              f"{OFFICIAL_ROOT} for the root")
  return tuple(parents)


def _landmarks(raw: Mapping, num_verts: int, source: str) -> dict[str, int] | None:
  if isinstance(raw.get("landmarks"), Mapping):  # a synthetic_smpl_arrays()-style dict
    names, ids = list(raw["landmarks"]), list(raw["landmarks"].values())
  elif "landmark_names" in raw or "landmark_vertex_ids" in raw:
    if "landmark_names" not in raw or "landmark_vertex_ids" not in raw:
      absent = "landmark_names" if "landmark_names" not in raw else "landmark_vertex_ids"
      raise ModelFileError.at(source, f"missing key '{absent}', expected landmark_names and "
                              "landmark_vertex_ids together")
    names_arr = to_array(raw["landmark_names"], "landmark_names", source)
    if names_arr.dtype.kind not in "US" or names_arr.ndim != 1:
      raise ModelFileError.at(source, f"key 'landmark_names' has dtype {names_arr.dtype} and shape "
                              f"{shape_text(names_arr.shape)}, expected a 1-D array of strings")
    # Bytes ('S') names come from files written by Python 2 or with dtype=bytes.
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names_arr]
    ids = list(_integers(raw["landmark_vertex_ids"], "landmark_vertex_ids", source,
                         "(vertex ids)").ravel())
  else:
    return None
  if len(names) != len(ids) or len(set(names)) != len(names):
    raise ModelFileError.at(source, f"{len(names)} landmark names and {len(ids)} "
                            "landmark_vertex_ids, expected one unique name per vertex id")
  bad = [int(i) for i in ids if not 0 <= int(i) < num_verts]
  if bad:
    raise ModelFileError.at(source, f"key 'landmark_vertex_ids' has ids {bad[:5]} outside "
                            f"[0, {num_verts})")
  return {str(n): int(i) for n, i in zip(names, ids)}


def model_arrays(raw: Mapping, source: str, num_betas: int | None) -> dict:
  """Validates a dict with the official SMPL keys.

  Args:
    raw: values as unpickled or loaded (arrays, chumpy/sparse stand-ins, lists).
    source: the file path, for messages.
    num_betas: shape components to keep; None keeps all.

  Returns:
    float64 v_template (V, 3), shapedirs (V, 3, num_betas), posedirs (V, 3, 207), J_regressor
    (24, V), weights (V, 24); int64 faces (F, 3); parents (24 ints); landmarks (dict or None).
  """
  missing = [k for k in REQUIRED_KEYS if k not in raw]
  if missing:
    raise ModelFileError.at(source, f"missing key{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(repr(k) for k in missing)}, expected an SMPL model with "
                            f"keys {', '.join(REQUIRED_KEYS)}")
  v_template = _float(raw["v_template"], "v_template", source, "(V, 3)")
  _check_shape(v_template, "v_template", source, (None, 3), "(V, 3)")
  num_verts = v_template.shape[0]
  num_pose = 9 * (NUM_JOINTS - 1)

  shapedirs = _numeric(raw["shapedirs"], "shapedirs", source, "")
  want = shapedirs.shape[-1] if num_betas is None and shapedirs.ndim == 3 else (num_betas or 0)
  _check_shape(shapedirs, "shapedirs", source, (num_verts, 3, (">=", want)))
  # Slice before the finiteness check: v1.1 files carry 300 components, most of them unused.
  shapedirs = _float(shapedirs[..., :want], "shapedirs", source, "")

  posedirs = _float(raw["posedirs"], "posedirs", source, "")
  if posedirs.shape == (num_pose, 3 * num_verts):  # smplx's flattened layout
    posedirs = posedirs.T.reshape(num_verts, 3, num_pose)
  _check_shape(posedirs, "posedirs", source, (num_verts, 3, num_pose),
               f"({num_verts}, 3, {num_pose}) or ({num_pose}, {3 * num_verts})")

  regressor = _float(raw["J_regressor"], "J_regressor", source, "")
  _check_shape(regressor, "J_regressor", source, (NUM_JOINTS, num_verts))
  weights = _float(raw["weights"], "weights", source, "")
  _check_shape(weights, "weights", source, (num_verts, NUM_JOINTS))

  table = _integers(raw["kintree_table"], "kintree_table", source, "")
  parents = _parents_from_kintree(table, source)

  faces = _integers(raw["f"], "f", source, "(vertex ids)")
  _check_shape(faces, "f", source, (None, 3), "(F, 3)")
  if faces.size and (faces.min() < 0 or faces.max() >= num_verts):
    raise ModelFileError.at(source, f"key 'f' has vertex ids in [{faces.min()}, {faces.max()}], "
                            f"expected [0, {num_verts})")
  return {
      "v_template": v_template, "shapedirs": shapedirs, "posedirs": posedirs,
      "J_regressor": regressor, "weights": weights, "faces": faces.astype(np.int64),
      "parents": parents, "landmarks": _landmarks(raw, num_verts, source),
  }
