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
