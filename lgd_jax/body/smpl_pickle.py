"""The official SMPL ``.pkl`` without chumpy: restricted unpickling and evaluation to arrays.

The official SMPL ``.pkl`` files are Python 2 pickles holding chumpy objects and a
``scipy.sparse`` joint regressor. chumpy is unmaintained and no longer installs on current NumPy
and Python, and unpickling runs code, so :func:`read_pkl` reads them with lgd_jax's restricted
unpickler (:mod:`lgd_jax.safe_pickle`): an allow-list of NumPy's array reconstruction helpers,
with chumpy and scipy.sparse classes replaced by inert stand-ins that only record their pickled
state, and every other class refused. :func:`to_array` then evaluates a stand-in from that state
(the few chumpy node types SMPL files use, CSC/CSR matrices made dense). Neither chumpy nor SciPy
is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lgd_jax import safe_pickle
from lgd_jax.body.model_files import REQUIRED_KEYS, SMPL_URL, ModelFileError
from lgd_jax.errors import describe

# chumpy wraps objects in objects (a Select of a Ch of ...); real files nest two levels. The cap
# turns a cyclic or hostile pickle into an error instead of a RecursionError.
_MAX_NESTING = 32


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


def read_pkl(source: str) -> dict:
  """The unpickled dict of an SMPL ``.pkl``, chumpy and sparse objects as stand-ins (see
  :func:`to_array`); a ModelFileError for anything else."""
  try:
    with open(source, "rb") as f:
      head = f.read(64)
      hint = _sniff(head)
      if hint is not None:
        raise ModelFileError.at(source, f"{hint}; expected a pickled dict of SMPL arrays")
      f.seek(0)
      data = safe_pickle.load(f, stubs=_model_stubs)
  except ModelFileError:
    raise
  except safe_pickle.ForbiddenGlobal as e:
    raise ModelFileError.at(source, f"{e} in a model file (expected only NumPy arrays, chumpy "
                            "objects and a scipy.sparse matrix)") from None
  except OSError as e:
    raise ModelFileError.at(source, f"cannot read the file ({describe(e)})") from None
  except Exception as e:  # noqa: BLE001  Any unpickling failure means a corrupt or foreign file.
    raise ModelFileError.at(source, f"not a readable SMPL pickle ({describe(e)}); expected a "
                            "pickled dict of SMPL arrays (the file may be truncated or "
                            "corrupt)") from None
  if not isinstance(data, dict):
    raise ModelFileError.at(source, f"the pickle holds a {type(data).__name__}, expected a dict "
                            "of SMPL arrays with keys " + ", ".join(REQUIRED_KEYS))
  return data


def _sparse_to_dense(obj: _SparseMatrix, key: str, source: str) -> np.ndarray:
  """CSC/CSR state (data, indices, indptr, _shape) -> dense float64, without SciPy."""
  fmt = _SPARSE_CLASSES[obj.qualname.rsplit(".", 1)[-1]]
  state = obj.state()
  shape = state.get("_shape", state.get("shape"))
  missing = [k for k in ("data", "indices", "indptr") if k not in state]
  if missing or shape is None:
    raise ModelFileError.at(source, f"key '{key}' holds a {obj.qualname} without "
                            f"{', '.join(missing) or '_shape'}, expected data, indices, indptr and "
                            "_shape")
  bad = f"key '{key}' holds a malformed {obj.qualname}"
  try:
    rows, cols = (int(s) for s in shape)
    data = np.asarray(to_array(state["data"], key, source, 1), np.float64).ravel()
    indices = np.asarray(to_array(state["indices"], key, source, 1)).ravel().astype(np.int64)
    indptr = np.asarray(to_array(state["indptr"], key, source, 1)).ravel().astype(np.int64)
  except ModelFileError:
    raise
  except (TypeError, ValueError) as e:
    raise ModelFileError.at(source, f"{bad} ({describe(e)})") from None
  major, minor = (cols, rows) if fmt == "csc" else (rows, cols)
  nnz = int(indptr[-1]) if indptr.size else 0
  if (rows < 0 or cols < 0 or indptr.size != major + 1 or indptr[0] != 0
      or np.any(np.diff(indptr) < 0) or nnz > min(indices.size, data.size)):
    raise ModelFileError.at(source, f"{bad}: indptr does not match shape ({rows}, {cols}) and "
                            f"{data.size} stored values")
  indices, data = indices[:nnz], data[:nnz]
  if indices.size and (indices.min() < 0 or indices.max() >= minor):
    raise ModelFileError.at(source, f"{bad}: index outside [0, {minor})")
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
      raise ModelFileError.at(source, f"key '{key}' holds a {obj.qualname} without its '{name}' "
                              "field, expected a complete chumpy object")
    return to_array(state[name], key, source, depth + 1)

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
    raise ModelFileError.at(source, f"key '{key}' holds a malformed {obj.qualname} "
                            f"({describe(e)})") from None
  raise ModelFileError.at(source, f"key '{key}' holds a {obj.qualname} object, which cannot be "
                          "evaluated without chumpy; expected a chumpy Ch, Select, Reshape or "
                          "transpose (convert the file to .npz where chumpy works)")


def to_array(value: Any, key: str, source: str, depth: int = 0) -> np.ndarray:
  """A plain ndarray from an unpickled value (array, chumpy stand-in, sparse stand-in, list)."""
  if depth > _MAX_NESTING:
    raise ModelFileError.at(source, f"key '{key}' nests chumpy objects more than {_MAX_NESTING} "
                            "deep, expected an array")
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
      raise ModelFileError.at(source, f"key '{key}' is not a regular array "
                              f"({describe(e)})") from None
  raise ModelFileError.at(source, f"key '{key}' holds a {type(value).__name__}, expected an array")
