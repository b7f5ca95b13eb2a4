"""Left/right relabelling of detected limbs (lgd_jax.fitting.relabel): the labellings, how the
batch is expanded and a labelling chosen per person."""

import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import body
from lgd_jax.fitting import relabel


@pytest.mark.parametrize("kpset", ["coco18", "body25", "coco17"])
def test_labellings_exchange_one_limb_group_each(kpset):
  perms, labels = relabel.hypotheses(kpset)
  names = list(body.get_keypoint_set(kpset).names)
  assert labels == ("as given", "arms", "legs")
  np.testing.assert_array_equal(perms[0], np.arange(len(names)))
  for perm, label in zip(perms[1:], labels[1:]):
    parts = relabel.LIMB_GROUPS[0 if label == "arms" else 1]
    assert sorted(perm) == list(range(len(names)))  # a permutation
    for k, name in enumerate(names):
      side, _, part = name.partition("_")
      if part in parts and side in ("left", "right"):
        other = ("right" if side == "left" else "left") + "_" + part
        assert names[perm[k]] == other, (label, name)
      else:
        assert perm[k] == k, (label, name)  # the head, the torso's middle, the other group


def test_expand_and_select_round_trip():
  perms = jnp.asarray(relabel.hypotheses("coco18")[0])
  h, b, k = perms.shape[0], 3, perms.shape[1]
  kp = jnp.arange(b * k * 2, dtype=jnp.float32).reshape(b, k, 2)
  conf = jnp.arange(b * k, dtype=jnp.float32).reshape(b, k)
  focal = jnp.array([1.0, 2.0, 3.0])
  kp_h, conf_h, focal_h = relabel.expand(perms, kp, conf, focal)
  assert kp_h.shape == (h * b, k, 2) and conf_h.shape == (h * b, k)
  # Hypothesis-major rows: row i * b + j is person j under labelling i.
  for i in range(h):
    for j in range(b):
      np.testing.assert_array_equal(kp_h[i * b + j], kp[j][np.asarray(perms[i])])
      np.testing.assert_array_equal(conf_h[i * b + j], conf[j][np.asarray(perms[i])])
      assert focal_h[i * b + j] == focal[j]
  choice = jnp.array([0, 2, 1])
  picked, scalar = relabel.select((kp_h, jnp.float32(7.0)), choice, h)
  for j in range(b):
    np.testing.assert_array_equal(picked[j], kp[j][np.asarray(perms[int(choice[j])])])
  assert float(scalar) == 7.0  # leaves without the H·B axis are kept


def test_another_labelling_must_win_by_the_margin():
  scores = jnp.array([[1.0, 1.0, -1.0, 2.0, jnp.nan],
                      [0.85, 0.75, -1.1, 0.1, 0.1],
                      [0.9, 0.95, -1.5, 3.0, 0.2]])
  np.testing.assert_array_equal(relabel.choose(scores, 0.2), [0, 1, 2, 1, 1])
  # -1.5 beats -1.0 by 0.5 > 0.2 · |-1.0|; a NaN given score never blocks a finite winner.
  np.testing.assert_array_equal(relabel.choose(scores, 0.0), [1, 1, 2, 1, 1])
  np.testing.assert_array_equal(relabel.choose(scores[:, :4], 0.9), [0, 0, 0, 1])
  np.testing.assert_array_equal(relabel.choose(jnp.full((3, 2), jnp.nan), 0.2), [0, 0])


def _feet_person(swap_feet: bool):
  """BODY_25 pixels of one standing person, ankles 60 px apart, each foot's three points 10-25 px
  from its ankle; with ``swap_feet`` the left and right foot keypoints exchanged."""
  names = list(body.get_keypoint_set("body25").names)
  kp = np.zeros((len(names), 2), np.float32)
  ankle = {"left": np.array([330.0, 400.0]), "right": np.array([270.0, 400.0])}
  offsets = {"big_toe": (0.0, 25.0), "small_toe": (8.0, 22.0), "heel": (0.0, -10.0)}
  for side in ("left", "right"):
    kp[names.index(f"{side}_ankle")] = ankle[side]
    other = "right" if side == "left" else "left"
    for part, off in offsets.items():
      kp[names.index(f"{other if swap_feet else side}_{part}")] = ankle[side] + off
  return kp


def test_attach_feet_gives_each_foot_to_its_nearer_ankle():
  names = list(body.get_keypoint_set("body25").names)
  la, ra = relabel.ankle_indices("body25")
  right = jnp.asarray(np.stack([_feet_person(False), _feet_person(True)]))
  w = jnp.ones(right.shape[:2])
  # Detected ankles decide: the fit's ankles (here exchanged) are not looked at.
  wrong = right[:, [ra, la]]
  kp, ww = relabel.attach_feet("body25", right, w, wrong)
  np.testing.assert_array_equal(kp[0], right[0])  # feet where they belong: kept
  np.testing.assert_array_equal(kp[1], right[0])  # exchanged feet: given back
  np.testing.assert_array_equal(ww, w)
  # Weights travel with their points; a missing foot point does not pull.
  w2 = w.at[1, names.index("left_heel")].set(0.0)
  kp, ww = relabel.attach_feet("body25", right, w2, wrong)
  np.testing.assert_array_equal(kp[1], right[0])
  assert float(ww[1, names.index("right_heel")]) == 0.0 and float(ww[1].sum()) == w.shape[1] - 1
  # A missed ankle: the fit's ankles stand in, and the exchange must win by the margin. Fitted
  # ankles 40 px apart instead of 60: the exchange wins, but not by 90 %.
  no_ankle = w[1:].at[0, la].set(0.0)
  near = jnp.asarray([[[320.0, 400.0], [280.0, 400.0]]])
  kp, _ = relabel.attach_feet("body25", right[1:], no_ankle, near, margin=0.0)
  np.testing.assert_array_equal(kp[0], right[0])
  kp, _ = relabel.attach_feet("body25", right[1:], no_ankle, near, margin=0.9)
  np.testing.assert_array_equal(kp[0], right[1])
  # The same fitted ankles are ignored while both ankles are detected, whatever the margin.
  kp, _ = relabel.attach_feet("body25", right[1:], w[1:], near[:, ::-1], margin=0.9)
  np.testing.assert_array_equal(kp[0], right[0])
  # Sets without feet are returned as they are.
  kp18 = jnp.zeros((2, 18, 2))
  out, _ = relabel.attach_feet("coco18", kp18, jnp.ones((2, 18)), jnp.zeros((2, 2, 2)))
  assert out is kp18
