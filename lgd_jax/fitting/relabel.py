"""Left/right relabelling of detected limbs: fit each labelling, keep the one explained best.

2D detectors confuse a person's left and right, most often a whole limb at once (OpenPose labels a
leg or an arm of the other side when the person turns away or crosses them). A fit that trusts
the labels must then twist the torso or cross the limbs to reach them, and no robust penalty
helps: the swapped joints are not outliers, they are consistent with a wrong body. As 3D pose
pipelines do when they test the mirrored labelling of a detection, the labellings are fitted
here side by side, the input as given and with the left and right of one limb group (the arms,
or the legs) exchanged, each with the learned steps, and each person keeps the labelling whose
learned fit reaches the lowest objective. The learned update fits the bodies it was trained on,
so a labelling that asks for an implausible body stays farther from its keypoints; a classical
refinement, which can fit nearly any labelling with a contorted body, tells them apart less well
(``tools/detection_benchmark.py``'s rendered detections, three sets of 48 people, the packaged
model, margin 0.2: with one limb exchanged per person the learned objective chose that limb for
48, 47 and 47 people, the refined fit's robust 2D error and priors for 43, 42 and 41; on the
exact and noisy sets the learned objective relabelled nobody, the refined fit one person; on two
more sets, ``tools/detection_tuning.py``'s seeds 3 and 4, the learned objective found 45 and 44
and relabelled one clean person of 192).
Another labelling must beat the given one by a relative ``margin``, so clean detections keep
theirs.

Both groups exchanged at once is not among the labellings: with the face's keypoints kept, that
is the body seen from the other side, which fits a 2D skeleton about as well as the truth (the
depth ambiguity of a monocular view), so the 2D error cannot decide it; scored by the refined
fit, it was chosen for clean inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import body

# The left/right groups a detector confuses together (a limb: its three joints), and their labels.
LIMB_GROUPS = (("shoulder", "elbow", "wrist"), ("hip", "knee", "ankle"))
GROUP_LABELS = ("arms", "legs")
# How much lower (relative) another labelling's score must be than the given one's.
DEFAULT_MARGIN = 0.2
# A foot's keypoints (BODY_25's), which go with the ankle they are nearer (:func:`attach_feet`).
FOOT_PARTS = ("big_toe", "small_toe", "heel")
# How much closer (relative) exchanged feet must be to their ankles where an ankle is a fit's
# (the detector missed it); detected ankles decide at margin 0 (:func:`attach_feet`).
FEET_MARGIN = 0.3


def _group_permutation(names, group) -> np.ndarray | None:
  perm = np.arange(len(names))
  for part in group:
    left, right = f"left_{part}", f"right_{part}"
    if left in names and right in names:
      i, j = names.index(left), names.index(right)
      perm[i], perm[j] = j, i
  return None if (perm == np.arange(len(names))).all() else perm


@functools.cache
def hypotheses(kpset: str) -> tuple[np.ndarray, tuple[str, ...]]:
  """The labellings of ``kpset``: ((H, K) index permutations, H labels), the given labelling
  first ("as given"), then each limb group of :data:`LIMB_GROUPS` the set has, exchanged
  ("arms", "legs"). Keypoint k of labelling h is the detection's keypoint ``perm[h, k]``."""
  names = list(body.get_keypoint_set(kpset).names)
  perms, labels = [np.arange(len(names))], ["as given"]
  for label, group in zip(GROUP_LABELS, LIMB_GROUPS):
    perm = _group_permutation(names, group)
    if perm is not None:
      perms.append(perm)
      labels.append(label)
  return np.stack(perms), tuple(labels)


def expand(perms: jnp.ndarray, keypoints: jnp.ndarray, conf: jnp.ndarray, *per_person):
  """Every person under every labelling, hypothesis-major: (H·B, K, ...) keypoints and
  confidences, and each of ``per_person`` ((B, ...) arrays) repeated H times."""
  h = perms.shape[0]
  kp = keypoints[:, perms].swapaxes(0, 1).reshape((-1,) + keypoints.shape[1:])
  c = conf[:, perms].swapaxes(0, 1).reshape((-1,) + conf.shape[1:])
  rest = tuple(jnp.tile(a, (h,) + (1,) * (a.ndim - 1)) for a in per_person)
  return (kp, c, *rest)


def choose(scores: jnp.ndarray, margin: float = DEFAULT_MARGIN) -> jnp.ndarray:
  """(H, B) scores (lower is better; row 0 the given labelling) -> (B,) the labelling kept: the
  best one if its score is below the given labelling's by more than ``margin`` times the
  latter's magnitude, else 0. A labelling whose fit is not finite never wins, and any finite
  one beats a given labelling whose fit is not."""
  scores = jnp.where(jnp.isfinite(scores), scores, jnp.inf)
  best = jnp.argmin(scores, 0)
  lowest = jnp.min(scores, 0)
  given = scores[0]
  wins = jnp.isfinite(lowest) & (~jnp.isfinite(given)
                                 | (lowest < given - margin * jnp.abs(given)))
  return jnp.where(wins, best, 0)


def select(tree, choice: jnp.ndarray, num_hypotheses: int):
  """Each person's row of the labelling ``choice`` (B,) from arrays of H·B rows (hypothesis-
  major); leaves without that leading axis are kept as they are."""
  b = choice.shape[0]
  rows = choice * b + jnp.arange(b)

  def take(a):
    a = jnp.asarray(a)
    return a[rows] if a.ndim and a.shape[0] == num_hypotheses * b else a

  return jax.tree.map(take, tree)


@functools.cache
def _feet(kpset: str):
  """(left foot points, right foot points) indices of ``kpset``, or None when it has none."""
  names = list(body.get_keypoint_set(kpset).names)
  want = [f"{side}_{p}" for side in ("left", "right") for p in FOOT_PARTS]
  if not all(n in names for n in want):
    return None
  idx = np.array([names.index(n) for n in want])
  return idx[:len(FOOT_PARTS)], idx[len(FOOT_PARTS):]


def ankle_indices(kpset: str) -> tuple[int, int]:
  """(left, right) ankle indices of ``kpset``."""
  names = list(body.get_keypoint_set(kpset).names)
  return names.index("left_ankle"), names.index("right_ankle")


def attach_feet(kpset: str, keypoints: jnp.ndarray, w: jnp.ndarray, fitted_ankles: jnp.ndarray,
                margin=FEET_MARGIN):
  """Gives each foot's keypoints to the ankle they are nearer (sets with feet, e.g. BODY_25).

  A detector that confuses a person's legs may or may not confuse the feet with them, and the
  limb groups exchange hips, knees and ankles only; so, after the labelling is chosen, the left
  and right foot keypoints are exchanged where that brings them closer to their ankles: the sum
  over the confident foot points of their distances to their own side's ankle, kept or
  exchanged, the lower wins. The detected ankles decide where both were detected; where the
  detector missed one, ``fitted_ankles`` (a fit's, which always exist) stand in for the missing
  ones and the exchange must win by the relative ``margin``. Sets without feet are returned as
  they are.

  Args:
    kpset: the keypoint set's name.
    keypoints: (B, K, 2) pixels; w: (B, K) weights (0 = missing).
    fitted_ankles: (B, 2, 2) a fit's (left, right) ankles, pixels.
    margin: how much lower (relative) the exchanged feet's distances must be when an ankle is
      the fit's.

  Returns:
    (keypoints, w), each person's feet exchanged where that fits its ankles better.
  """
  feet = _feet(kpset)
  if feet is None:
    return keypoints, w
  lf, rf = feet
  detected = list(ankle_indices(kpset))
  seen = w[:, detected] > 0
  ankles = jnp.where(seen[..., None], keypoints[:, detected], fitted_ankles)
  margin = jnp.where(jnp.all(seen, -1), 0.0, margin)

  def cost(side, points):
    d = jnp.linalg.norm(keypoints[:, points] - ankles[:, side, None], axis=-1)
    return jnp.sum(w[:, points] * d, -1)

  swap = cost(0, rf) + cost(1, lf) < (1.0 - margin) * (cost(0, lf) + cost(1, rf))
  perm = np.arange(keypoints.shape[1])
  perm[lf], perm[rf] = rf, lf
  kp = jnp.where(swap[:, None, None], keypoints[:, perm], keypoints)
  return kp, jnp.where(swap[:, None], w[:, perm], w)
