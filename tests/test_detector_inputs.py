"""What the fit sees of detections: the official confidence rule, each detector-like corruption
knob, and the broad and held-out free pose sources."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgd_jax import body
from lgd_jax.data import augment, pose_sources, synthetic
from lgd_jax.eval import detections, restore
from lgd_jax.fitting import objective
from lgd_jax.geometry import camera

B = 512  # samples per corruption check
PROB_TOL = 0.06  # an observed frequency of B Bernoulli draws may differ this much from p
LIMIT_TOL_DEG = 0.05  # float32 Euler round trip
POSE_TOL = 1e-6


@pytest.fixture(scope="module")
def restored(tiny_checkpoint):
  return restore.restore(tiny_checkpoint)


@pytest.fixture(scope="module")
def rendered():
  """(B, 25, 2) BODY_25 pixels of T-pose-like people of 200-400 px, all visible."""
  rng = np.random.default_rng(0)
  kpset = body.get_keypoint_set("body25")
  base = rng.uniform(-0.5, 0.5, (1, len(kpset.names), 2))
  size = rng.uniform(200, 400, (B, 1, 1))
  pix = 500 + size * base + rng.uniform(-50, 50, (B, 1, 2))
  return jnp.asarray(pix, jnp.float32), jnp.ones((B, len(kpset.names)), jnp.float32)


def _corrupt(rendered, seed=1, **knobs):
  pix, conf = rendered
  return augment.corrupt(jax.random.PRNGKey(seed), pix, conf, "body25",
                         augment.DetectorSettings(**knobs))


# ---------------------------------------------------------------------------------------------
# The official confidence rule.

def test_binary_rule_makes_any_score_scale_the_same_fit(restored, rendered):
  problem = restored.problem
  names = body.get_keypoint_set(problem.kpset).names
  pix = rendered[0][:8, :len(names)]
  rng = np.random.default_rng(3)
  high = np.full(pix.shape[:2], 0.9, np.float32)
  scattered = rng.uniform(0.05, 1.0, pix.shape[:2]).astype(np.float32)
  scattered[:, 3] = 0.005  # below the threshold: missing under both rules
  high[:, 3] = 0.005
  focal, center = jnp.full((8,), 1100.0), jnp.full((8, 2), 500.0)
  k_hi, w_hi = objective.observe(problem, pix, high, focal[:, None], center)
  k_sc, w_sc = objective.observe(problem, pix, scattered, focal[:, None], center)
  assert set(np.unique(np.asarray(w_sc))) == {0.0, 1.0}
  np.testing.assert_array_equal(np.asarray(w_hi), np.asarray(w_sc))
  np.testing.assert_array_equal(np.asarray(k_hi), np.asarray(k_sc))
  # Through the whole detection fit: the same fit, bit for bit.
  fits = [detections.fit_batch(restored.learner, restored.variables, problem, pix, c, focal,
                               center, num_steps=2, with_vertices=False, refine_steps=0)
          for c in (high, scattered)]
  for field in ("body_pose", "betas", "transl"):
    np.testing.assert_array_equal(np.asarray(getattr(fits[0].placement, field)),
                                  np.asarray(getattr(fits[1].placement, field)))
  # The raw option keeps the scores as weights (and so fits differently).
  _, w_raw = objective.observe(problem, pix, scattered, focal[:, None], center,
                               confidence="raw")
  np.testing.assert_allclose(np.asarray(w_raw), np.where(scattered >= 0.01, scattered, 0.0))
  with pytest.raises(ValueError, match="confidence"):
    objective.observe(problem, pix, scattered, confidence="soft")


# ---------------------------------------------------------------------------------------------
# Each corruption knob.

def test_all_knobs_off_changes_nothing(rendered):
  pix, scores = _corrupt(rendered)
  np.testing.assert_array_equal(np.asarray(pix), np.asarray(rendered[0]))
  np.testing.assert_array_equal(np.asarray(scores), np.asarray(rendered[1]))


def test_noise_is_in_proportion_to_the_persons_size(rendered):
  pix, scores = _corrupt(rendered, noise=0.05)
  moved = np.asarray(pix - rendered[0])
  # The same draws on bodies twice as large (about the same centre) move twice as far.
  big = (rendered[0] - 500.0) * 2.0 + 500.0
  pix2, _ = augment.corrupt(jax.random.PRNGKey(1), big, rendered[1], "body25",
                            augment.DetectorSettings(noise=0.05))
  np.testing.assert_allclose(np.asarray(pix2 - big), 2.0 * moved, rtol=1e-3, atol=1e-2)
  # Per sample std up to 5 % of the box: nothing beyond 5 standard deviations of the largest.
  size = np.ptp(np.asarray(rendered[0]), axis=1).max(-1)
  assert np.abs(moved).max(axis=(1, 2)).max() / size.max() < 5 * 0.05
  assert np.all(np.asarray(scores) == 1.0)


def test_score_jitter_then_the_official_rule(rendered):
  p = 0.3
  _, scores = _corrupt(rendered, score_jitter=p)
  s = np.asarray(scores)
  low = s < augment.HIGH_SCORE[0]
  assert abs(low.mean() - p) < PROB_TOL
  assert s[~low].min() >= augment.HIGH_SCORE[0] and s.max() <= augment.HIGH_SCORE[1]
  # About half of the low-scored joints fall below the threshold and go missing.
  missing = s < camera.CONFIDENCE_THRESHOLD
  assert abs(missing.sum() / low.sum() - 0.5) < 2 * PROB_TOL


def test_swaps_trade_one_left_right_group(rendered):
  p = 0.5
  pix, scores = _corrupt(rendered, swap_prob=p)
  perms = augment.swap_permutations("body25")
  src = np.asarray(rendered[0])
  out = np.asarray(pix)
  which = []
  for b in range(B):
    hits = [g for g, perm in enumerate(perms) if np.array_equal(out[b], src[b][perm])]
    assert hits or np.array_equal(out[b], src[b]), f"sample {b}: not a single-group swap"
    which.append(hits[0] if hits and not np.array_equal(out[b], src[b]) else -1)
  which = np.array(which)
  assert abs((which >= 0).mean() - p) < PROB_TOL
  assert len(set(which[which >= 0])) == len(perms)  # every group gets swapped sometimes
  names = body.get_keypoint_set("body25").names
  arms = perms[[g for g, perm in enumerate(perms)
                if perm[names.index("left_wrist")] == names.index("right_wrist")][0]]
  assert arms[names.index("left_knee")] == names.index("left_knee")  # one limb pair at a time


def test_truncation_drops_the_joints_beyond_a_line(rendered):
  p = 0.5
  _, scores = _corrupt(rendered, truncate_prob=p)
  gone = np.asarray(scores) == 0
  cut = gone.any(-1)
  assert abs(cut.mean() - p) < PROB_TOL
  frac = gone[cut].mean(-1)
  assert np.median(frac) > 0.05 and frac.max() < 1.0  # a cut removes joints, never all
  # The dropped joints of a sample lie beyond a line 50-90 % of the way across its box.
  src = np.asarray(rendered[0])
  lo_edge, _ = augment.TRUNCATE_RANGE
  for b in np.flatnonzero(cut)[:50]:
    lo, hi = src[b].min(0), src[b].max(0)
    ok = False
    for axis in (0, 1):
      u = (src[b, :, axis] - lo[axis]) / (hi[axis] - lo[axis])
      for pos in (u, 1.0 - u):  # the line measured from either side
        kept, dropped = pos[~gone[b]], pos[gone[b]]
        ok |= bool(dropped.min() > kept.max() and dropped.min() >= lo_edge - 1e-6)
    assert ok, f"sample {b}: dropped joints are not beyond one line past the box's middle"


def test_outliers_land_in_the_grown_box(rendered):
  p = 0.2
  pix, scores = _corrupt(rendered, outlier_prob=p)
  src, out = np.asarray(rendered[0]), np.asarray(pix)
  moved = np.any(out != src, -1)
  assert abs(moved.mean() - p) < PROB_TOL
  lo, hi = src.min(1, keepdims=True), src.max(1, keepdims=True)
  grow = augment.OUTLIER_MARGIN * (hi - lo)
  assert np.all(out >= lo - grow - 1e-3) and np.all(out <= hi + grow + 1e-3)
  assert np.all(np.asarray(scores) == 1.0)  # an outlier keeps a normal score


def test_settings_are_checked_and_overridden():
  with pytest.raises(ValueError, match="detector.swap_prob"):
    augment.settings_from({"swap_prob": 1.5})
  s = augment.parse_overrides(["noise=0.03", "swap_prob=0"])
  assert s.noise == 0.03 and s.swap_prob == 0.0
  assert s.outlier_prob == augment.EVAL_DETECTOR.outlier_prob
  with pytest.raises(ValueError, match="--detector"):
    augment.parse_overrides(["noize=1"])


# ---------------------------------------------------------------------------------------------
# The free pose sources.

N_POSES = 2048
_sample = jax.jit(pose_sources.sample, static_argnums=(0, 2))


@pytest.fixture(scope="module")
def poses():
  return {kind: np.asarray(_sample(kind, jax.random.PRNGKey(0), N_POSES))
          for kind in ("broad", "test")}


def _lying_fraction(pose):
  # Lying: the body's up axis (y of the root frame) is far from the world's vertical.
  from scipy.spatial.transform import Rotation
  up = Rotation.from_rotvec(pose[:, :3]).apply(np.array([0.0, 1.0, 0.0]))
  return np.mean(np.abs(up[:, 1]) < np.cos(np.deg2rad(45)))


@pytest.mark.parametrize("kind", ["broad", "test"])
def test_pose_sources_are_finite_deterministic_and_within_limits(poses, kind):
  p = poses[kind]
  assert p.shape == (N_POSES, 72) and np.isfinite(p).all()
  again = np.asarray(_sample(kind, jax.random.PRNGKey(0), N_POSES))
  np.testing.assert_allclose(again, p, atol=POSE_TOL)
  violation = np.asarray(synthetic.limit_violation_deg(jnp.asarray(p).at[:, :3].set(0.0)))
  elbows = [body.JOINT_NAMES.index(f"{s}_elbow") for s in ("left", "right")]
  others = [j for j in range(1, 24) if j not in elbows]
  # The held-out source projects every joint onto the limits; the broad one clips Euler angles.
  assert np.quantile(violation[:, others], 0.999) <= LIMIT_TOL_DEG + 0.5


def test_pose_sources_lie_and_bend_as_documented(poses):
  assert abs(_lying_fraction(poses["broad"]) - 0.15) < 0.04
  assert abs(_lying_fraction(poses["test"]) - 0.10) < 0.04
  knees = [body.JOINT_NAMES.index(f"{s}_knee") for s in ("left", "right")]
  for kind in ("broad", "test"):
    bend = np.linalg.norm(poses[kind].reshape(-1, 24, 3)[:, knees], axis=-1)
    assert np.mean(bend > np.deg2rad(45)) > 0.2, f"{kind}: knees hardly bend"


def test_held_out_source_is_not_the_training_source(poses):
  # A two-sample energy test on body poses (no root): the held-out source's distribution differs
  # from the training source's by more than any of 50 random relabellings of the pooled samples.
  n = 256
  pooled = np.concatenate([poses["broad"][:n, 3:], poses["test"][:n, 3:]]).reshape(2 * n, 23, 3)
  dist = np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1)).mean(-1)

  def energy(labels):
    a, b = labels, ~labels
    return 2 * dist[a][:, b].mean() - dist[a][:, a].mean() - dist[b][:, b].mean()

  labels = np.arange(2 * n) < n
  rng = np.random.default_rng(0)
  null = [energy(rng.permutation(labels)) for _ in range(50)]
  assert energy(labels) > 3 * max(null)
  # And the test source is tighter around its own poses than around the training ones.
  test_nn = np.sort(dist[n:, n:], 1)[:, 1]  # nearest other test pose
  train_nn = dist[n:, :n].min(1)
  assert np.median(test_nn) < np.median(train_nn)
  with pytest.raises(ValueError, match="poses"):
    pose_sources.sample("nope", jax.random.PRNGKey(0), 4)
