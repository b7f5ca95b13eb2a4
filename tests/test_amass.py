"""AMASS reading on synthetic files: conversion, up axis, subsampling, split, cache, bad inputs."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax.data import amass
from lgd_jax.geometry import rotations

# float32 axis-angle round trip through rotation matrices.
ROT_TOL = 1e-5
SOURCE_FPS = 120.0
NUM_FRAMES = 40
VAL_FRACTION = 0.3

# 24 sequences in nested per-dataset/per-subject folders, with shape.npz files beside them.
SEQUENCES = [f"{ds}/subject{s}/motion_{m:02d}_poses.npz"
             for ds in ("CMU", "BMLmovi") for s in range(3) for m in range(4)]


def _standing_root(yaw: float) -> np.ndarray:
  """AMASS's convention: SMPL's +y (up in the body) maps to world +z; any heading about z."""
  rot = rotations.euler_to_matrix(jnp.array([0.0, 0.0, yaw]), "xyz") @ \
      rotations.euler_to_matrix(jnp.array([np.pi / 2, 0.0, 0.0]), "xyz")
  return np.asarray(rotations.matrix_to_axis_angle(rot), np.float64)


def _write_sequence(path, rng, num_frames=NUM_FRAMES, pose_dim=156, **overrides):
  poses = rng.normal(0.0, 0.2, (num_frames, pose_dim))
  poses[:, :3] = _standing_root(rng.uniform(-np.pi, np.pi))
  arrays = {
      "poses": poses, "betas": rng.normal(size=16), "trans": rng.normal(size=(num_frames, 3)),
      "gender": np.array("female"), "mocap_framerate": np.array(SOURCE_FPS),
      "dmpls": np.zeros((num_frames, 8)),
  }
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **arrays)


@pytest.fixture(scope="module")
def amass_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("amass")
  rng = np.random.default_rng(0)
  for rel in SEQUENCES:
    _write_sequence(os.path.join(root, rel), rng, num_frames=int(rng.integers(20, 60)))
    shape = os.path.join(root, os.path.dirname(rel), "shape.npz")
    if not os.path.exists(shape):
      np.savez(shape, betas=rng.normal(size=16), gender=np.array("female"))
  return str(root)


def _assert_one_line_error(excinfo, *parts):
  message = str(excinfo.value)
  assert "\n" not in message
  for part in parts:
    assert part in message, (part, message)


def test_fixed_rotation_is_the_official_euler_composition():
  # Official: euler_to_rot(x=-1.57, y=-1.57, z=0) = Rz(0) @ Ry(y) @ Rx(x).
  want = rotations.euler_to_matrix(jnp.array([0.0, -np.pi / 2, -np.pi / 2]), "zyx")
  np.testing.assert_allclose(amass.AMASS_TO_Y_UP, want, atol=1e-6)
  official = rotations.euler_to_matrix(jnp.array([0.0, -1.57, -1.57]), "zyx")
  np.testing.assert_allclose(amass.AMASS_TO_Y_UP, official, atol=1e-3)
  np.testing.assert_allclose(amass.AMASS_TO_Y_UP @ [0.0, 0.0, 1.0], [0.0, 1.0, 0.0])


def test_conversion_makes_standing_bodies_upright(amass_dir):
  path = os.path.join(amass_dir, SEQUENCES[0])
  raw = np.load(path)
  seq = amass.load_sequence(path)
  num = raw["poses"].shape[0]
  assert seq["poses"].shape == (num, 72) and seq["poses"].dtype == np.float32
  assert np.all(seq["poses"][:, 66:72] == 0.0)
  np.testing.assert_allclose(seq["poses"][:, 3:66], raw["poses"][:, 3:66], atol=1e-6)
  np.testing.assert_allclose(seq["betas"], raw["betas"][:10], atol=1e-6)
  assert seq["betas"].shape == (10,) and seq["betas"].dtype == np.float32
  assert seq["gender"] == "female" and seq["fps"] == SOURCE_FPS
  # Before: SMPL's up axis points along world +z. After: along +y (upright in SMPL's frame).
  before = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(raw["poses"][:, :3])))
  after = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(seq["poses"][:, :3])))
  np.testing.assert_allclose(before[:, :, 1], np.tile([0.0, 0.0, 1.0], (num, 1)), atol=ROT_TOL)
  np.testing.assert_allclose(after[:, :, 1], np.tile([0.0, 1.0, 0.0], (num, 1)), atol=ROT_TOL)
  np.testing.assert_allclose(after, amass.AMASS_TO_Y_UP @ before, atol=ROT_TOL)


def test_identity_root_lies_flat_and_smpl_layouts(tmp_path):
  rng = np.random.default_rng(1)
  for dim in (72, 156, 165):
    path = str(tmp_path / f"seq{dim}.npz")
    _write_sequence(path, rng, pose_dim=dim)
    raw = np.load(path)
    poses = raw["poses"].copy()
    poses[:, :3] = 0.0  # identity in AMASS's z-up world: the body lies along world +y
    np.savez(path, **{**dict(raw), "poses": poses})
    seq = amass.load_sequence(path)
    rot = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(seq["poses"][:, :3])))
    assert np.abs(rot[:, 1, 1]).max() < ROT_TOL  # SMPL's up axis is horizontal: lying
    np.testing.assert_allclose(seq["poses"][:, 3:66], poses[:, 3:66], atol=1e-6)
    assert np.all(seq["poses"][:, 66:] == 0.0)


def test_subsampling(amass_dir):
  path = os.path.join(amass_dir, SEQUENCES[1])
  full = amass.load_sequence(path)
  for target, step in ((30.0, 4), (50.0, 2), (240.0, 1), (120.0, 1)):
    seq = amass.load_sequence(path, fps=target)
    np.testing.assert_allclose(seq["poses"], full["poses"][::step], atol=1e-6)
    assert seq["fps"] == SOURCE_FPS / step and seq["source_fps"] == SOURCE_FPS


def test_find_sequences_skips_shape_files(amass_dir):
  found = amass.find_sequences(amass_dir)
  assert found == sorted(SEQUENCES)


def test_split_is_deterministic_and_by_sequence():
  splits = [amass.split_of(rel, VAL_FRACTION) for rel in SEQUENCES]
  assert splits == [amass.split_of(rel, VAL_FRACTION) for rel in SEQUENCES]
  assert "train" in splits and "val" in splits
  assert set(splits) <= {"train", "val"}
  assert all(amass.split_of(rel, 0.0) == "train" for rel in SEQUENCES)
  assert all(amass.split_of(rel, 1.0) == "val" for rel in SEQUENCES)
  # Growing the fraction only moves sequences from train to val.
  more = [amass.split_of(rel, 0.6) for rel in SEQUENCES]
  assert all(m == "val" for s, m in zip(splits, more) if s == "val")
  # Known values (SHA-256 of the path reads as 0.668), so the split never silently changes.
  assert amass.split_of("CMU/01/01_01_poses.npz", 0.66) == "train"
  assert amass.split_of("CMU/01/01_01_poses.npz", 0.67) == "val"
  assert amass.split_of(os.path.join("CMU", "01", "01_01_poses.npz"), 0.67) == "val"
  with pytest.raises(ValueError):
    amass.split_of("a.npz", 1.5)


def test_preprocess_round_trip(amass_dir, tmp_path):
  out = str(tmp_path / "out" / "amass.npz")
  written = amass.preprocess(amass_dir, out, fps=30.0, val_fraction=VAL_FRACTION,
                             show_progress=False)
  assert os.listdir(tmp_path / "out") == ["amass.npz"]  # no temporary file left behind
  data = amass.load_preprocessed(out)
  assert data["format_version"] == amass.FORMAT_VERSION and data["fps"] == 30.0
  assert data["source_dir"] == os.path.abspath(amass_dir)
  assert data["val_fraction"] == VAL_FRACTION
  assert len(data["skipped_files"]) == 6 and all(s.endswith("shape.npz")
                                                 for s in data["skipped_files"])
  for split in ("train", "val"):
    seqs = data[f"{split}_sequences"]
    assert seqs and all(amass.split_of(s, VAL_FRACTION) == split for s in seqs)
    loaded = [amass.load_sequence(os.path.join(amass_dir, s), fps=30.0) for s in seqs]
    np.testing.assert_allclose(data[f"{split}_poses"],
                               np.concatenate([q["poses"] for q in loaded]), atol=1e-6)
    # One shape per sequence, indexed per frame.
    np.testing.assert_array_equal(data[f"{split}_sequence_betas"],
                                  np.stack([q["betas"] for q in loaded]))
    seq_of_frame = np.concatenate([np.full(len(q["poses"]), i) for i, q in enumerate(loaded)])
    np.testing.assert_array_equal(data[f"{split}_seq"], seq_of_frame)
    np.testing.assert_array_equal(
        data[f"{split}_sequence_betas"][data[f"{split}_seq"]],
        np.concatenate([np.tile(q["betas"], (len(q["poses"]), 1)) for q in loaded]))
    assert data[f"{split}_poses"].dtype == np.float32
    assert data[f"{split}_genders"] == ["female"] * len(seqs)
    np.testing.assert_array_equal(written[f"{split}_poses"], data[f"{split}_poses"])
  assert sorted(data["train_sequences"] + data["val_sequences"]) == sorted(SEQUENCES)
  # The file itself holds no per-frame betas.
  with np.load(out) as raw:
    assert not any(k.endswith("_betas") and not k.endswith("_sequence_betas") for k in raw.files)
    for split in ("train", "val"):
      assert raw[f"{split}_sequence_betas"].shape == (len(data[f"{split}_sequences"]), 10)


def _as_version_1(path, out, **changes):
  """A cache in the layout of format version 1: betas repeated per frame, no sequence_betas."""
  with np.load(path) as raw:
    arrays = dict(raw)
  arrays["format_version"] = np.int64(1)
  for split in ("train", "val"):
    arrays[f"{split}_betas"] = arrays.pop(f"{split}_sequence_betas")[arrays[f"{split}_seq"]]
  arrays.update(changes)
  np.savez(out, **arrays)


def test_version_1_caches_are_read_in_the_per_sequence_layout(amass_dir, tmp_path):
  """An existing cache of the old layout is folded on reading, and reused (not rebuilt)."""
  cache = str(tmp_path / "cache.npz")
  new = amass.load_or_preprocess(amass_dir, cache_path=cache, val_fraction=VAL_FRACTION,
                                 show_progress=False)
  v2 = str(tmp_path / "v2.npz")
  os.replace(cache, v2)
  _as_version_1(v2, cache)
  past = os.stat(cache).st_mtime + 5  # still newer than the sequences
  os.utime(cache, (past, past))
  mtime = os.stat(cache).st_mtime_ns
  old = amass.load_or_preprocess(amass_dir, cache_path=cache, val_fraction=VAL_FRACTION,
                                 show_progress=False)
  assert os.stat(cache).st_mtime_ns == mtime  # reused
  assert old["format_version"] == 1 and new["format_version"] == amass.FORMAT_VERSION == 2
  for split in ("train", "val"):
    for key in ("poses", "seq", "sequence_betas"):
      np.testing.assert_array_equal(old[f"{split}_{key}"], new[f"{split}_{key}"], err_msg=key)
    assert f"{split}_betas" not in old
  # Frames of one sequence with different shapes cannot be folded: one line names the field.
  betas = new["train_sequence_betas"][new["train_seq"]].copy()
  betas[3, 0] += 1.0
  bad = str(tmp_path / "bad.npz")
  _as_version_1(v2, bad, train_betas=betas)
  with pytest.raises(amass.AmassError) as excinfo:
    amass.load_preprocessed(bad)
  _assert_one_line_error(excinfo, "bad.npz", "'train_betas' differs within sequence", "frame 3")
  _as_version_1(v2, bad, format_version=np.int64(7))
  with pytest.raises(amass.AmassError) as excinfo:
    amass.load_preprocessed(bad)
  _assert_one_line_error(excinfo, "bad.npz", "'format_version' is 7")


def test_load_or_preprocess_reuses_the_cache(tmp_path):
  root = tmp_path / "amass"
  rng = np.random.default_rng(2)
  for rel in SEQUENCES[:4]:
    _write_sequence(str(root / rel), rng)
  first = amass.load_or_preprocess(str(root), show_progress=False)
  cache = amass.default_cache_path(str(root))
  assert os.path.dirname(cache) == str(root) and os.path.exists(cache)
  mtime = os.stat(cache).st_mtime_ns
  past = os.stat(cache).st_mtime - 10  # inputs clearly older than the cache
  for rel in SEQUENCES[:4]:
    os.utime(root / rel, (past, past))
  second = amass.load_or_preprocess(str(root), show_progress=False)
  assert os.stat(cache).st_mtime_ns == mtime
  np.testing.assert_array_equal(first["train_poses"], second["train_poses"])
  # Other settings get their own cache file and leave this one alone.
  other = amass.load_or_preprocess(str(root), fps=None, show_progress=False)
  assert other["train_poses"].shape[0] + other["val_poses"].shape[0] == 4 * NUM_FRAMES
  assert os.stat(cache).st_mtime_ns == mtime
  amass.load_or_preprocess(str(root), show_progress=False)
  assert os.stat(cache).st_mtime_ns == mtime
  # A new sequence makes the cache stale.
  _write_sequence(str(root / SEQUENCES[5]), rng)
  os.utime(root / SEQUENCES[5], (past, past))
  third = amass.load_or_preprocess(str(root), show_progress=False)
  assert SEQUENCES[5] in third["train_sequences"] + third["val_sequences"]
  # An explicit cache path is used as given.
  explicit = tmp_path / "cache" / "a.npz"
  amass.load_or_preprocess(str(root), cache_path=str(explicit), show_progress=False)
  assert explicit.exists()


@pytest.mark.parametrize("case, parts", [
    ("missing_poses", ("walk_01_poses.npz", "'poses'")),
    ("wrong_shape", ("walk_01_poses.npz", "'poses' has shape (30, 40)", "(N, 156)")),
    ("nan", ("walk_01_poses.npz", "'poses'", "NaN")),
    ("few_betas", ("walk_01_poses.npz", "'betas' has shape (8,)", ">= 10")),
    ("text_file", ("walk_01_poses.npz", ".npz")),
])
def test_bad_sequence_files(tmp_path, case, parts):
  path = str(tmp_path / "DS" / "walk_01_poses.npz")
  rng = np.random.default_rng(3)
  if case == "missing_poses":
    _write_sequence(path, rng, poses=None)
  elif case == "wrong_shape":
    _write_sequence(path, rng, poses=np.zeros((30, 40)))
  elif case == "nan":
    _write_sequence(path, rng)
    arrays = dict(np.load(path))
    arrays["poses"][3, 7] = np.nan
    np.savez(path, **arrays)
  elif case == "few_betas":
    _write_sequence(path, rng, betas=np.zeros(8))
  else:
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
      f.write("not an archive\n")
  with pytest.raises(amass.AmassError) as excinfo:
    amass.load_sequence(path)
  _assert_one_line_error(excinfo, *parts)
  # The directory-level entry points report the same file.
  with pytest.raises(amass.AmassError) as excinfo:
    amass.preprocess(str(tmp_path), str(tmp_path / "out.npz"), show_progress=False)
  _assert_one_line_error(excinfo, "walk_01_poses.npz")
  assert not (tmp_path / "out.npz").exists()


def test_bad_directories(tmp_path):
  with pytest.raises(amass.AmassError) as excinfo:
    amass.find_sequences(str(tmp_path / "nowhere"))
  _assert_one_line_error(excinfo, "nowhere", "no such directory")
  empty = tmp_path / "empty"
  (empty / "sub").mkdir(parents=True)
  np.savez(empty / "sub" / "shape.npz", betas=np.zeros(16))
  with pytest.raises(amass.AmassError) as excinfo:
    amass.find_sequences(str(empty))
  _assert_one_line_error(excinfo, "no AMASS sequences (*.npz with 'poses') under", str(empty))
  with pytest.raises(amass.AmassError) as excinfo:
    amass.load_or_preprocess(str(empty), show_progress=False)
  _assert_one_line_error(excinfo, "no AMASS sequences")


def test_bad_preprocessed_file(tmp_path):
  path = tmp_path / "cache.npz"
  np.savez(path, train_poses=np.zeros((3, 72)))
  with pytest.raises(amass.AmassError) as excinfo:
    amass.load_preprocessed(str(path))
  _assert_one_line_error(excinfo, "cache.npz", "missing key")
