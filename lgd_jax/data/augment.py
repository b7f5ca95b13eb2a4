"""Detector-like corruption of rendered 2D keypoints (all jittable, per sample).

A 2D pose detector's output differs from a perfect rendering in five ways, each a knob of the
``detector`` config group (0 = off; all off in ``configs/paper.py`` and ``configs/official.py``):

* ``noise``: Gaussian jitter of every joint; its standard deviation is a fraction of the
  person's size (the longer side of the visible joints' box), drawn per sample from U(0, noise),
  so a batch holds exact and noisy samples. Low-scored joints (see ``score_jitter``) get twice
  as much, as a detector's unsure joints are its imprecise ones.
* ``score_jitter``: detector scores instead of 0/1: that fraction of the visible joints is scored
  U(0, 2 · 0.01) (about half of them fall below the official threshold and go missing), the
  others U(0.05, 1). The official test-time rule (:func:`lgd_jax.fitting.objective.observe`) is
  applied
  after it, exactly as on real detections.
* ``swap_prob``: per sample, the probability that one left/right pair of limbs (arms, legs,
  eyes and ears, or feet) trades places: the classic detector error on turned bodies.
* ``truncate_prob``: per sample, the probability that an image border cuts the body: the joints
  beyond a random line parallel to one side of the box, 50-90 % of the way across it, go missing.
* ``outlier_prob``: per joint, the probability of a false detection at a uniformly random place
  of the person's box grown by 20 %, with a normal score.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import body
from lgd_jax.geometry import camera

LOW_SCORE = (0.0, 2 * camera.CONFIDENCE_THRESHOLD)
HIGH_SCORE = (0.05, 1.0)
# Groups of left/right keypoints that a detector confuses together.
SWAP_GROUPS = (("shoulder", "elbow", "wrist"), ("hip", "knee", "ankle"), ("eye", "ear"),
               ("big_toe", "small_toe", "heel"))
OUTLIER_MARGIN = 0.2
TRUNCATE_RANGE = (0.5, 0.9)


class DetectorSettings(NamedTuple):
  """The ``detector`` config group (hashable: a static argument of the train step)."""

  noise: float = 0.0
  score_jitter: float = 0.0
  swap_prob: float = 0.0
  truncate_prob: float = 0.0
  outlier_prob: float = 0.0

  @property
  def enabled(self) -> bool:
    return any(v > 0 for v in self)


KNOBS = DetectorSettings._fields
# The detector-like held-out inputs of evaluate.py and the convergence analysis (--inputs
# detector): the same for every checkpoint, so that tables compare.
EVAL_DETECTOR = DetectorSettings(noise=0.02, score_jitter=0.1, swap_prob=0.3, truncate_prob=0.05,
                                 outlier_prob=0.01)


def parse_overrides(values, base: DetectorSettings = EVAL_DETECTOR) -> DetectorSettings:
  """``["noise=0.03", "swap_prob=0"]`` (command-line ``--detector`` values) applied to ``base``."""
  out = base._asdict()
  for item in values or ():
    key, sep, value = item.partition("=")
    if not sep or key not in out:
      raise ValueError(f"--detector {item!r}: expected KEY=VALUE with KEY one of {KNOBS}")
    try:
      out[key] = float(value)
    except ValueError:
      raise ValueError(f"--detector {item!r}: expected a number after '='") from None
  return settings_from(out)


def settings_from(group) -> DetectorSettings:
  """:class:`DetectorSettings` of a config group (a dict-like; missing knobs are 0)."""
  if group is None:
    return DetectorSettings()
  values = {}
  for k in KNOBS:
    v = float(group.get(k, 0.0))
    if not 0.0 <= v <= (1.0 if k != "noise" else 0.5):
      raise ValueError(f"detector.{k}: expected a value in [0, {1.0 if k != 'noise' else 0.5}], "
                       f"got {v!r}")
    values[k] = v
  return DetectorSettings(**values)


def swap_permutations(kpset: str) -> np.ndarray:
  """(G, K) index permutations, one per :data:`SWAP_GROUPS` entry the set has (identity rows
  are dropped); keypoint k of a swapped sample takes the position of ``perm[g, k]``."""
  names = body.get_keypoint_set(kpset).names
  perms = []
  for group in SWAP_GROUPS:
    perm = np.arange(len(names))
    for part in group:
      left, right = f"left_{part}", f"right_{part}"
      if left in names and right in names:
        i, j = names.index(left), names.index(right)
        perm[i], perm[j] = j, i
    if (perm != np.arange(len(names))).any():
      perms.append(perm)
  return np.stack(perms) if perms else np.arange(len(names))[None]


def _box(pix, visible):
  big = 1e9
  lo = jnp.min(jnp.where(visible[..., None], pix, big), axis=-2)
  hi = jnp.max(jnp.where(visible[..., None], pix, -big), axis=-2)
  anyv = jnp.any(visible, -1, keepdims=True)
  return jnp.where(anyv, lo, 0.0), jnp.where(anyv, hi, 0.0)


def corrupt(key, pix: jnp.ndarray, conf: jnp.ndarray, kpset: str, s: DetectorSettings):
  """Corrupts rendered keypoints like a detector would.

  Args:
    key: a PRNG key.
    pix: (B, K, 2) rendered keypoints, pixels.
    conf: (B, K) 0/1 visibility of the rendering (0: dropped).
    kpset: the keypoint set's name (for the left/right pairs).
    s: the knobs.

  Returns:
    (pix (B, K, 2), scores (B, K)): detector-like keypoints and raw scores (0 = missing);
    apply :func:`lgd_jax.fitting.objective.observe` to get the fit's input.
  """
  if not s.enabled:
    return pix, conf
  b, k = conf.shape
  keys = jax.random.split(key, 10)
  visible = conf > 0
  lo, hi = _box(pix, visible)
  size = jnp.max(hi - lo, -1)  # (B,)
  scores = jnp.where(visible, 1.0, 0.0)
  low = jnp.zeros((b, k), bool)
  if s.score_jitter > 0:
    low = jax.random.bernoulli(keys[0], s.score_jitter, (b, k)) & visible
    lo_s = jax.random.uniform(keys[1], (b, k), minval=LOW_SCORE[0], maxval=LOW_SCORE[1])
    hi_s = jax.random.uniform(keys[2], (b, k), minval=HIGH_SCORE[0], maxval=HIGH_SCORE[1])
    scores = jnp.where(visible, jnp.where(low, lo_s, hi_s), 0.0)
  if s.noise > 0:
    std = s.noise * jax.random.uniform(keys[3], (b, 1, 1)) * size[:, None, None]
    std = std * jnp.where(low, 2.0, 1.0)[..., None]
    pix = pix + std * jax.random.normal(keys[4], pix.shape, pix.dtype)
  if s.swap_prob > 0:
    perms = jnp.asarray(swap_permutations(kpset))
    which = jax.random.randint(keys[5], (b,), 0, perms.shape[0])
    swap = jax.random.bernoulli(keys[6], s.swap_prob, (b,))
    idx = jnp.where(swap[:, None], perms[which], jnp.arange(k)[None])
    pix = jnp.take_along_axis(pix, idx[..., None], axis=1)
    scores = jnp.take_along_axis(scores, idx, axis=1)
  if s.outlier_prob > 0:
    out = jax.random.bernoulli(keys[7], s.outlier_prob, (b, k)) & (scores > 0)
    grow = OUTLIER_MARGIN * (hi - lo)
    u = jax.random.uniform(keys[8], pix.shape, pix.dtype)
    anywhere = (lo - grow)[:, None] + u * (hi - lo + 2 * grow)[:, None]
    pix = jnp.where(out[..., None], anywhere, pix)
  if s.truncate_prob > 0:
    k_t, k_side, k_frac = jax.random.split(keys[9], 3)
    cut = jax.random.bernoulli(k_t, s.truncate_prob, (b,))
    side = jax.random.randint(k_side, (b,), 0, 4)  # 0: keep left of x, 1: right of, 2/3: y
    frac = jax.random.uniform(k_frac, (b,), minval=TRUNCATE_RANGE[0], maxval=TRUNCATE_RANGE[1])
    axis = side // 2
    lo_a = jnp.take_along_axis(lo, axis[:, None], 1)[:, 0]
    hi_a = jnp.take_along_axis(hi, axis[:, None], 1)[:, 0]
    coord = jnp.take_along_axis(pix, jnp.broadcast_to(axis[:, None, None], (b, k, 1)), 2)[..., 0]
    forward = side % 2 == 0
    line = jnp.where(forward, lo_a + frac * (hi_a - lo_a), hi_a - frac * (hi_a - lo_a))
    beyond = jnp.where(forward[:, None], coord > line[:, None], coord < line[:, None])
    scores = jnp.where(cut[:, None] & beyond, 0.0, scores)
  return pix, scores
