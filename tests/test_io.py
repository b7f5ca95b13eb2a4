"""Tests of lgd_jax.body.io: SMPL .pkl/.npz loading without chumpy, save_npz and the CLI.

Every file is synthetic (``synthetic_smpl_arrays``) but written in the real formats: the official
pickles are Python-2-style protocol-2 pickles whose objects are pickled under the module paths
``chumpy.ch.Ch``, ``chumpy.reordering.Select``/``Reshape`` and ``scipy.sparse.csc.csc_matrix``
(fake classes registered in ``sys.modules`` only while dumping) and whose NumPy arrays name
``numpy.core.multiarray`` and carry their bytes as latin-1 text, as Python 2 wrote them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import body
from lgd_jax.body.convert import main
from lgd_jax.body.io import ModelFileError, load_model, save_npz

# float32 keeps 24 significant bits: a float64 value read into float32 is off by at most half an
# ulp, 2**-24 relative; allow one ulp.
F32_RTOL = 2.0**-23
# Vertices of the forward pass combine a few float32 products of metre-sized values.
FORWARD_ATOL_M = 1e-5
# Joints regressed again from float32-rounded vertices: cancellation makes the relative error of
# near-zero coordinates large, so compare in metres.
JOINT_ATOL_M = 1e-6
SMALL_VERTS = 300
UINT32_ROOT = 4294967295
_MISSING = object()


# ---------------------------------------------------------------------------------------------
# Writing files in the official formats.
# ---------------------------------------------------------------------------------------------


def _fake_class(module: str, name: str, bases=(object,)) -> type:
  return type(name, bases, {"__module__": module})


FakeCh = _fake_class("chumpy.ch", "Ch")
FakeSelect = _fake_class("chumpy.reordering", "Select", (FakeCh,))
FakeReshape = _fake_class("chumpy.reordering", "Reshape", (FakeCh,))
FakeAdd = _fake_class("chumpy.ch_ops", "add", (FakeCh,))
FakeCsc = _fake_class("scipy.sparse.csc", "csc_matrix")
_FAKE_MODULES = {
    "chumpy": [], "chumpy.ch": [FakeCh], "chumpy.reordering": [FakeSelect, FakeReshape],
    "chumpy.ch_ops": [FakeAdd], "scipy.sparse.csc": [FakeCsc],
}


@contextlib.contextmanager
def _fake_modules():
  """Registers the fake chumpy/scipy modules so that pickle can name the fake classes."""
  saved = {name: sys.modules.get(name, _MISSING) for name in _FAKE_MODULES}
  try:
    for name, classes in _FAKE_MODULES.items():
      module = types.ModuleType(name)
      for cls in classes:
        setattr(module, cls.__name__, cls)
      sys.modules[name] = module
    yield
  finally:
    for name, old in saved.items():
      if old is _MISSING:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = old


def _chumpy(cls: type, **fields):
  """An object with the state chumpy's Ch.__getstate__ pickles (its __dict__ without the
  weak-reference '_parents' and '_cache'); pickled as NEWOBJ + BUILD(state)."""
  obj = cls.__new__(cls)
  obj.__dict__.update(_dirty_vars={"x"}, _itr=None, _depends_on_deps={}, _make_dense=False,
                      _make_sparse=False, **fields)
  return obj


def _ch(x):
  return _chumpy(FakeCh, x=np.asarray(x))


def _fake_csc(dense: np.ndarray):
  """Old SciPy's csc_matrix attribute layout, built without SciPy."""
  rows, cols = np.nonzero(dense.T)  # column-major order: (column, row) pairs
  obj = FakeCsc.__new__(FakeCsc)
  obj.__dict__.update(
      data=dense.T[rows, cols], indices=cols.astype(np.int32),
      indptr=np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[1]))]
                            ).astype(np.int32),
      _shape=dense.shape, maxprint=50, format="csc")
  return obj


class _Py2StylePickler(pickle.Pickler):
  """Pickles arrays as NumPy 1.x under Python 2 did: raw bytes as (latin-1) text."""

  def reducer_override(self, obj):
    if type(obj) is np.ndarray:
      fn, args, (version, shape, dtype, fortran, raw) = obj.__reduce__()
      return fn, args, (version, shape, dtype, fortran, raw.decode("latin1"))
    return NotImplemented


def _official_dict(arrays: dict) -> dict:
  """The official file's dict: chumpy objects, a CSC regressor and the extra keys."""
  v = arrays["v_template"]
  num_verts = v.shape[0]
  # v_template = Select(Ch(reversed), reversed indices, (V, 3)).
  flipped = v.ravel()[::-1].reshape(v.shape)
  v_select = _chumpy(FakeSelect, a=_ch(flipped), idxs=np.arange(v.size)[::-1],
                     preferred_shape=v.shape)
  # posedirs = Reshape(Select(Ch, idxs) with no preferred shape, i.e. 1-D).
  pd = arrays["posedirs"]
  posedirs = _chumpy(FakeReshape, newshape=pd.shape,
                     a=_chumpy(FakeSelect, a=_ch(pd.reshape(-1, 9)), idxs=np.arange(pd.size)))
  return {
      "J_regressor_prior": _fake_csc(arrays["J_regressor"]),
      "f": arrays["f"],
      "J_regressor": _fake_csc(arrays["J_regressor"]),
      "kintree_table": arrays["kintree_table"].astype(np.int64),
      "J": arrays["J"],
      "weights_prior": arrays["weights"],
      "weights": arrays["weights"],
      "vert_sym_idxs": np.arange(num_verts, dtype=np.int64)[::-1].copy(),
      "posedirs": posedirs,
      "pose_training_info": {"num_subjects": 5, "num_poses": 100, "sequence_set": "x"},
      "bs_style": "lbs",
      "v_template": v_select,
      "shapedirs": _ch(arrays["shapedirs"]),
      "bs_type": "lrotmin",
  }


def _write_official_pkl(path, data: dict, protocol: int = 2) -> None:
  with _fake_modules():
    buffer = io.BytesIO()
    _Py2StylePickler(buffer, protocol=protocol).dump(data)
  # NumPy 1.x named its reconstruction helpers numpy.core.*; GLOBAL opcodes are plain text.
  blob = buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
  assert b"numpy.core.multiarray\n_reconstruct" in blob
  path.write_bytes(blob)


def _plain_arrays(num_verts=SMALL_VERTS, num_betas=10, seed=0) -> dict:
  arrays = body.synthetic_smpl_arrays(num_verts=num_verts, num_betas=num_betas, seed=seed)
  arrays.pop("landmarks")
  return arrays


def _dump(path, obj) -> None:
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)


def _assert_matches(model, arrays, num_betas=None):
  nb = num_betas or arrays["shapedirs"].shape[-1]
  check = lambda got, want: np.testing.assert_allclose(np.asarray(got, np.float64), want,
                                                       rtol=F32_RTOL, atol=0)
  check(model.v_template, arrays["v_template"])
  check(model.shapedirs, arrays["shapedirs"][..., :nb])
  check(model.posedirs, arrays["posedirs"])
  check(model.J_regressor, arrays["J_regressor"])
  check(model.weights, arrays["weights"])
  check(model.j_template, arrays["J_regressor"] @ arrays["v_template"])
  np.testing.assert_array_equal(model.faces, arrays["f"].astype(np.int64))
  assert model.parents == body.SMPL_PARENTS
  assert model.num_betas == nb


# ---------------------------------------------------------------------------------------------
# Official pickles.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_arrays():
  return body.synthetic_smpl_arrays(num_verts=6890, num_betas=10, seed=3)


@pytest.fixture(scope="module")
def official_pkl(tmp_path_factory, full_arrays):
  path = tmp_path_factory.mktemp("smpl") / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
  _write_official_pkl(path, _official_dict(full_arrays))
  return path


def test_chumpy_is_not_installed():
  # The point of the loader: the official files load where chumpy cannot be installed.
  assert importlib.util.find_spec("chumpy") is None


def test_official_pkl_loads_without_chumpy(official_pkl, full_arrays):
  raw = official_pkl.read_bytes()
  for name in (b"chumpy.ch\nCh", b"chumpy.reordering\nSelect", b"scipy.sparse.csc\ncsc_matrix"):
    assert name in raw, name  # the file really names the classes an official file names
  scipy_before = "scipy" in sys.modules
  with warnings.catch_warnings():
    # numpy.core is mapped to numpy._core, not imported through NumPy 2's deprecated shim.
    warnings.simplefilter("error", DeprecationWarning)
    model = load_model(official_pkl)
  assert "chumpy" not in sys.modules
  assert not any(m == "chumpy" or m.startswith("chumpy.") for m in sys.modules)
  if not scipy_before:
    assert "scipy" not in sys.modules  # the sparse regressor is densified without SciPy
  _assert_matches(model, full_arrays)
  assert model.name == str(official_pkl)
  assert model.dtype == jnp.float32
  assert dict(model.landmarks) == body.SMPL_LANDMARKS  # make_model's default for 6890 vertices


def test_official_pkl_forward_under_jit(official_pkl, full_arrays):
  model = load_model(official_pkl, num_betas=10)
  rng = np.random.default_rng(0)
  betas = rng.normal(size=(2, 10)).astype(np.float32)
  pose = np.zeros((2, 72), np.float32)
  pose[1] = rng.normal(0.0, 0.3, 72)
  out = jax.jit(body.forward)(model, pose, betas)
  assert out.vertices.shape == (2, 6890, 3) and out.joints.shape == (2, 24, 3)
  assert np.all(np.isfinite(out.vertices))
  # Zero pose: no pose blend shapes and identity skinning, so vertices are the shaped template.
  shaped = full_arrays["v_template"] + np.einsum("bk,vck->bvc", betas, full_arrays["shapedirs"])
  np.testing.assert_allclose(out.vertices[0], shaped[0], atol=FORWARD_ATOL_M, rtol=0)
  # Any pose: the root joint stays where the shaped skeleton's regressor puts it.
  root = full_arrays["J_regressor"][0] @ shaped[1]
  np.testing.assert_allclose(out.joints[1, 0], root, atol=FORWARD_ATOL_M, rtol=0)
  assert np.max(np.abs(out.vertices[1] - shaped[1])) > 0.01  # the pose did move the mesh


def test_protocol_1_pickle_with_copy_reg_reconstructor(tmp_path):
  # Protocols 0/1 rebuild new-style objects with copy_reg._reconstructor(cls, object, None).
  arrays = _plain_arrays()
  path = tmp_path / "SMPL_MALE.pkl"
  _write_official_pkl(path, _official_dict(arrays), protocol=1)
  assert b"copy_reg\n_reconstructor" in path.read_bytes()
  _assert_matches(load_model(path), arrays)


def test_v11_pkl_with_300_betas_keeps_the_first(tmp_path):
  sparse = pytest.importorskip("scipy.sparse")
  arrays = _plain_arrays(num_betas=300, seed=1)
  data = dict(arrays, J_regressor=sparse.csc_matrix(arrays["J_regressor"]),
              bs_style="lbs", bs_type="lrotmin")
  path = tmp_path / "basicmodel_m_lbs_10_207_0_v1.1.0.pkl"
  _dump(path, data)  # a Python 3 protocol-2 pickle: scipy.sparse._csc, numpy._core, _codecs
  assert b"scipy.sparse._csc" in path.read_bytes()
  model = load_model(path, num_betas=10)
  _assert_matches(model, arrays, num_betas=10)
  np.testing.assert_allclose(model.shapedirs, arrays["shapedirs"][..., :10], rtol=F32_RTOL)
  assert load_model(path, num_betas=None).num_betas == 300
  with pytest.raises(ModelFileError) as e:
    load_model(path, num_betas=301)
  _assert_one_line(e.value, path, "key 'shapedirs' has shape (300, 3, 300), "
                   "expected (300, 3, >=301)")


def test_csr_regressor_and_smplx_flat_posedirs(tmp_path):
  arrays = _plain_arrays(seed=2)
  dense = arrays["J_regressor"]
  rows, cols = np.nonzero(dense)
  fake = FakeCsc.__new__(FakeCsc)  # pickled as scipy.sparse._csr.csr_matrix below
  fake.__dict__.update(data=dense[rows, cols], indices=cols, _shape=dense.shape,
                       indptr=np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=24))]))
  data = dict(arrays, J_regressor=fake,
              posedirs=arrays["posedirs"].reshape(SMALL_VERTS * 3, 207).T)
  path = tmp_path / "SMPL_FEMALE.pkl"
  _write_official_pkl(path, data)
  path.write_bytes(path.read_bytes().replace(b"scipy.sparse.csc\ncsc_matrix",
                                             b"scipy.sparse._csr\ncsr_matrix"))
  _assert_matches(load_model(path), arrays)


# ---------------------------------------------------------------------------------------------
# npz and save_npz.
# ---------------------------------------------------------------------------------------------


def test_npz_round_trip_of_official_pkl(official_pkl, tmp_path):
  model = load_model(official_pkl)
  out = tmp_path / "SMPL_NEUTRAL.npz"
  save_npz(out, model)
  with np.load(out) as f:
    keys = set(f.files)
    assert f["kintree_table"][0, 0] == UINT32_ROOT
    assert f["posedirs"].shape == (6890, 3, 207) and f["J_regressor"].shape == (24, 6890)
  assert {"v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
          "J", "landmark_names", "landmark_vertex_ids"} <= keys
  again = load_model(out)
  for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "faces"):
    np.testing.assert_array_equal(getattr(again, name), getattr(model, name), err_msg=name)
  np.testing.assert_allclose(again.j_template, model.j_template, atol=JOINT_ATOL_M, rtol=0)
  assert again.parents == model.parents and again.landmarks == model.landmarks
  assert again.name == str(out)


def test_npz_round_trip_of_arrays_keeps_landmarks(tmp_path):
  arrays = body.synthetic_smpl_arrays(num_verts=SMALL_VERTS, num_betas=16, seed=4)
  out = tmp_path / "custom.npz"
  save_npz(out, arrays)
  model = load_model(out, num_betas=None)
  _assert_matches(model, arrays)
  assert dict(model.landmarks) == arrays["landmarks"]
  assert model.landmark_id("nose") == arrays["landmarks"]["nose"]
  # And through a BodyModel (tiny_model carries the landmarks the same way).
  tiny = body.tiny_model(num_verts=SMALL_VERTS)
  save_npz(tmp_path / "tiny.npz", tiny)
  assert load_model(tmp_path / "tiny.npz").landmarks == tiny.landmarks


def test_save_npz_rejects_other_suffix_and_types(tmp_path):
  with pytest.raises(ValueError, match="npz"):
    save_npz(tmp_path / "x.pkl", body.tiny_model())
  with pytest.raises(TypeError):
    save_npz(tmp_path / "x.npz", [1, 2, 3])
  bad = dict(_plain_arrays(), weights=np.zeros((SMALL_VERTS, 23)))
  with pytest.raises(ModelFileError, match="key 'weights'"):
    save_npz(tmp_path / "x.npz", bad)
  assert not (tmp_path / "x.npz").exists()


def test_cli_converts_losslessly(official_pkl, tmp_path, capsys, full_arrays):
  out = tmp_path / "converted.npz"
  assert main([str(official_pkl), str(out), "--num-betas", "10"]) == 0
  printed = capsys.readouterr().out.strip()
  assert "\n" not in printed and str(out) in printed and "6890 vertices" in printed
  with np.load(out) as f:
    # The CLI stays in float64: the arrays are bit-identical to the source.
    np.testing.assert_array_equal(f["v_template"], full_arrays["v_template"])
    np.testing.assert_array_equal(f["posedirs"], full_arrays["posedirs"])
    np.testing.assert_array_equal(f["J_regressor"], full_arrays["J_regressor"])
  _assert_matches(load_model(out), full_arrays)


# ---------------------------------------------------------------------------------------------
# Bad files: one-line errors naming the file, the key and what was expected.
# ---------------------------------------------------------------------------------------------


def _assert_one_line(exc: BaseException, path, *fragments: str) -> None:
  text = str(exc)
  assert "\n" not in text, text
  if path is not None:
    assert os.path.basename(str(path)) in text, text
  for fragment in fragments:
    assert fragment in text, (fragment, text)
  # No chained traceback ("During handling of the above exception...").
  assert exc.__cause__ is None
  assert exc.__context__ is None or exc.__suppress_context__


def _npz(path, arrays) -> None:
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _bad_text(p):
  p.write_text("v_template = [[0, 0, 0]]\nthis is not a pickle\n")
  return p, ("not a readable SMPL pickle", "expected a pickled dict")


def _bad_empty(p):
  p.write_bytes(b"")
  return p, ("empty",)


def _bad_lfs(p):
  p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
  return p, ("Git LFS",)


def _bad_list(p):
  _dump(p, [1, 2, 3])
  return p, ("holds a list", "expected a dict")


def _bad_missing_key_pkl(p):
  arrays = _plain_arrays()
  del arrays["weights"]
  _dump(p, arrays)
  return p, ("missing key 'weights'",)


def _bad_missing_key_npz(p):
  p = p.with_suffix(".npz")
  arrays = _plain_arrays()
  del arrays["posedirs"]
  _npz(p, arrays)
  return p, ("missing key 'posedirs'",)


def _bad_v_template_shape(p):
  _dump(p, dict(_plain_arrays(), v_template=np.zeros((SMALL_VERTS, 4))))
  return p, ("key 'v_template' has shape (300, 4), expected (V, 3)",)


def _bad_weights_shape(p):
  _dump(p, dict(_plain_arrays(), weights=np.zeros((SMALL_VERTS, 23))))
  return p, ("key 'weights' has shape (300, 23), expected (300, 24)",)


def _bad_regressor_shape(p):
  p = p.with_suffix(".npz")
  _npz(p, dict(_plain_arrays(), J_regressor=np.zeros((24, SMALL_VERTS + 1))))
  return p, ("key 'J_regressor' has shape (24, 301), expected (24, 300)",)


def _bad_too_few_betas(p):
  _write_official_pkl(p, _official_dict(_plain_arrays(num_betas=4)))
  return p, ("key 'shapedirs' has shape (300, 3, 4), expected (300, 3, >=10)",)


def _bad_nan(p):
  arrays = _plain_arrays()
  arrays["v_template"][7, 1] = np.nan
  _write_official_pkl(p, _official_dict(arrays))
  return p, ("key 'v_template'", "NaN")


def _bad_inf_npz(p):
  p = p.with_suffix(".npz")
  arrays = _plain_arrays()
  arrays["posedirs"][0, 0, 0] = np.inf
  _npz(p, arrays)
  return p, ("key 'posedirs'", "NaN/Inf")


def _bad_truncated_pkl(p):
  _write_official_pkl(p, _official_dict(_plain_arrays()))
  blob = p.read_bytes()
  p.write_bytes(blob[: len(blob) // 2])
  return p, ("not a readable SMPL pickle", "truncated")


def _bad_truncated_npz(p):
  p = p.with_suffix(".npz")
  _npz(p, _plain_arrays())
  blob = p.read_bytes()
  p.write_bytes(blob[: len(blob) // 2])
  return p, ("npz",)


def _bad_extension(p):
  p = p.with_suffix(".obj")
  p.write_text("v 0 0 0\n")
  return p, ("unsupported file type '.obj'", ".pkl", ".npz")


def _bad_chumpy_class(p):
  data = _official_dict(_plain_arrays())
  data["shapedirs"] = _chumpy(FakeAdd, a=data["shapedirs"], b=data["shapedirs"])
  _write_official_pkl(p, data)
  return p, ("key 'shapedirs'", "chumpy.ch_ops.add")


def _bad_kintree(p):
  arrays = _plain_arrays()
  arrays["kintree_table"][0, 3] = 5  # joint 3's parent after it: not a valid SMPL tree
  _dump(p, arrays)
  return p, ("kinematic tree",)


def _bad_kintree_shape(p):
  arrays = _plain_arrays()
  arrays["kintree_table"] = np.zeros((2, 52), np.int64)  # an SMPL-H table
  _dump(p, arrays)
  return p, ("key 'kintree_table' has shape (2, 52), expected (2, 24)",)


def _bad_faces(p):
  _dump(p, dict(_plain_arrays(), f=np.full((4, 3), SMALL_VERTS, np.uint32)))
  return p, ("key 'f'", "expected [0, 300)")


def _bad_string_value(p):
  _dump(p, dict(_plain_arrays(), weights="lbs"))
  return p, ("key 'weights'", "expected")


BAD_FILES = [_bad_text, _bad_empty, _bad_lfs, _bad_list, _bad_missing_key_pkl,
             _bad_missing_key_npz, _bad_v_template_shape, _bad_weights_shape,
             _bad_regressor_shape, _bad_too_few_betas, _bad_nan, _bad_inf_npz,
             _bad_truncated_pkl, _bad_truncated_npz, _bad_extension, _bad_chumpy_class,
             _bad_kintree, _bad_kintree_shape, _bad_faces, _bad_string_value]


@pytest.mark.parametrize("make", BAD_FILES, ids=lambda f: f.__name__[5:])
def test_bad_file_gives_one_line_model_file_error(tmp_path, make):
  path, fragments = make(tmp_path / "SMPL_NEUTRAL.pkl")
  with pytest.raises(ModelFileError) as e:
    load_model(path)
  _assert_one_line(e.value, path, *fragments)
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("payload, name", [
    (b"cos\nsystem\n(S'touch {marker}'\ntR.", "os.system"),
    (b"cposix\nsystem\n(S'touch {marker}'\ntR.", "posix.system"),
    (b"c__builtin__\neval\n(S'open(\"{marker}\", \"w\")'\ntR.", "__builtin__.eval"),
    (b"\x80\x02cbuiltins\ngetattr\n.", "builtins.getattr"),
    (b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\nc__builtin__\nobject\nNtR.",
     "copy_reg._reconstructor"),
])
def test_disallowed_class_is_rejected_not_executed(tmp_path, payload, name):
  marker = tmp_path / "executed"
  path = tmp_path / "SMPL_NEUTRAL.pkl"
  path.write_bytes(payload.replace(b"{marker}", str(marker).encode()))
  with pytest.raises(ModelFileError) as e:
    load_model(path)
  _assert_one_line(e.value, path, name, "not allowed")
  assert not marker.exists()


def test_every_pickle_goes_through_the_restricted_unpickler():
  """SMPL, 3DPW and the GMM prior share lgd_jax.safe_pickle; no module unpickles on its own."""
  import pathlib
  import re

  import lgd_jax
  root = pathlib.Path(lgd_jax.__file__).parent
  # pickle's own readers (not safe_pickle.load) and NumPy's pickle switch.
  unsafe = re.compile(r"(?<![\w.])(pickle\.(load|loads|Unpickler)\b|allow_pickle=True)")
  offenders = [f"{p.relative_to(root)}: {m.group(0)}" for p in sorted(root.rglob("*.py"))
               if p.name != "safe_pickle.py" for m in unsafe.finditer(p.read_text())]
  assert not offenders


def test_missing_file_says_where_smpl_goes(tmp_path):
  path = tmp_path / "SMPL_NEUTRAL.pkl"
  with pytest.raises(FileNotFoundError) as e:
    load_model(path)
  _assert_one_line(e.value, path, "third_party/smpl/SMPL_NEUTRAL.pkl", "smpl.is.tue.mpg.de",
                   "licence")


def test_directory_and_bad_num_betas(tmp_path):
  with pytest.raises(ModelFileError) as e:
    load_model(tmp_path)
  _assert_one_line(e.value, tmp_path, "directory")
  with pytest.raises(ValueError, match="num_betas"):
    load_model(tmp_path / "x.pkl", num_betas=-1)


def test_cli_bad_file_exits_2_with_one_line(tmp_path, capsys):
  path = tmp_path / "broken.pkl"
  _dump(path, [1, 2, 3])
  assert main([str(path), str(tmp_path / "out.npz")]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "broken.pkl" in err and "expected a dict" in err
  assert not (tmp_path / "out.npz").exists()
  assert main([str(tmp_path / "absent.pkl"), str(tmp_path / "out.npz")]) == 2
  assert "third_party/smpl" in capsys.readouterr().err


def test_cli_module_entry_point_exit_code(tmp_path):
  path = tmp_path / "broken.pkl"
  path.write_text("not a pickle")
  proc = subprocess.run([sys.executable, "-m", "lgd_jax.body.convert", str(path),
                         str(tmp_path / "out.npz")], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        timeout=120)
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "broken.pkl" in last
