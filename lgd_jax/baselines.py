"""Classical baselines on the fitting objective: gradient descent with a backtracking line search,
and a SMPLify-style fit (SPIN's batched SMPLify), jitted and batched beside GD and Adam.

Both return an :class:`lgd_jax.lgd.Trajectory` over steps 0..M, like :func:`lgd.run_optimizer`,
whose ``loss`` and ``grad_norm`` are those of the official objective
(:func:`lgd_jax.objective.objective`, the un-regularised re-projection error), so metrics and plots
treat every method alike. Every sample is optimised independently.

    traj, info = baselines.gd_line_search(problem, theta0, kp2d, conf, num_steps=100)
    traj = baselines.smplify(problem, kp2d, conf, num_iters=(50, 50))
    metrics, theta = baselines.eval_method(problem, "smplify", {"prior_scale": 1.0}, batch, 20)

Line search, the choice: the batch runs one ``lax.while_loop`` of backtracking trials; each trial
evaluates the objective (forward only) for the whole batch and the loop stops once every sample has
accepted a step. A fixed-length alternative (``parallel=True``) evaluates all
``max_backtracks + 1`` candidate steps at once. On XLA (CPU) the while loop is the faster of the
two: with the initial step grown ×2 from the last accepted one, a sample needs 2-3 trials per
iteration on average, and the batched loop runs until its slowest sample accepts (measured: about
7 batched forward passes per iteration for a batch of 64, 15 for 256), where the parallel form
always does ``max_backtracks + 1`` = 21 (batch 64, 50 iterations, tiny model: 0.35 s vs 0.78 s).
The parallel form only wins where idle parallel hardware makes the extra passes free (a large
accelerator and a small batch).

SMPLify-style fit (SPIN's ``smplify/smplify.py`` and ``losses.py``, adapted to this objective):

* Units. SPIN fits pixels of a 224-pixel crop in which a person's longer side spans about 200
  pixels (its bounding boxes are ``scale * 200`` pixels); our objective's unit box scales the
  person's longer side to 1. So one unit is :data:`SPIN_PIXELS_PER_UNIT` = 200 pixels: the
  Geman-McClure sigma of 100 pixels becomes 0.5 units, and dividing SPIN's whole loss by 200²
  (Adam does not care about the loss's overall scale) leaves the data term in our units and divides
  the squared prior weights by 200². With a fitted camera translation the 2D units are focal-
  normalised (a 1.7 m person at 6 m spans about 0.28), and the pixels per unit scale accordingly.
* Stage 1: the global orientation (and the translation when the problem fits one) on the squared
  re-projection error of the shoulders and hips (SPIN's camera stage uses exactly these four
  joints), normalised over those joints so that the rest of the (still unposed) body does not bias
  the box. SPIN starts from a regressor's prediction; from the zero pose a body may face away from
  the camera, so the first stage starts from the best of ``yaw_candidates`` rotations about the
  vertical axis by this stage-1 objective (no ground truth involved; SMPLify's own fits try a
  flipped orientation the same way).
* Stage 2: every parameter, on SPIN's body-fitting loss: confidence² weighted Geman-McClure
  re-projection + pose prior (:class:`GMMPrior`, SMPLify's max-mixture negative log-likelihood of
  the 69 body-pose values) + angle prior on elbows and knees + shape prior ||β||². SPIN ignores the
  OpenPose hips in this stage because they sit elsewhere than SMPL's; our keypoints come from the
  same model, so they are kept.
* Angle prior: SPIN's ``exp(pose[[55, 58, 12, 15]] * [1, -1, -1, -1])²`` on the full 72-vector:
  the y axis-angle component of the left (55) and right (58) elbow and the x component of the left
  (12) and right (15) knee. In SMPL's frame (and in our free model's, see
  :mod:`lgd_jax.data.synthetic`) the left elbow flexes with y < 0 and the right one with y > 0,
  the knees flex with x > 0: each term grows exponentially with hyper-extension, as intended.
* Adam, learning rate 1e-2, a fresh optimiser per stage, as SPIN. Weights: SPIN's 4.78 (pose),
  5 (shape), 15.2 (angle) in the units above, times sqrt(``prior_scale``): the one global scale
  that may be tuned (on a separate tuning batch, like GD's step size).
* Pose prior: SMPLify's licence-bound ``gmm_08.pkl`` when the user has it
  (``GMMPrior.load(path)``); otherwise :func:`default_pose_prior` fits an 8-component mixture by EM
  to poses of the training pose source (the synthetic sampler, or AMASS arrays) at first use and
  caches it in memory and on disk.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from pathlib import Path
from typing import NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgd_jax import body, camera, lgd, objective, safe_pickle, training
from lgd_jax.lgd import Trajectory
from lgd_jax.numerics import full_precision
from lgd_jax.objective import Problem

METHODS = ("gd_ls", "smplify")

# Line search defaults.
GD_LS_INIT_STEP = 100.0  # first trial step; the gradient of the mean-L1 objective is small
GD_LS_SHRINK = 0.5
GD_LS_ARMIJO_C = 1e-4
GD_LS_MAX_BACKTRACKS = 20  # 2**-20 of the first trial at the smallest
GD_LS_GROW = 2.0  # the next iteration's first trial, relative to the last accepted step

# SMPLify (SPIN) defaults.
SPIN_LEARNING_RATE = 1e-2
SPIN_SIGMA_PX = 100.0
SPIN_POSE_PRIOR_WEIGHT = 4.78
SPIN_SHAPE_PRIOR_WEIGHT = 5.0
SPIN_ANGLE_PRIOR_WEIGHT = 15.2
SPIN_PIXELS_PER_UNIT = 200.0  # a person's longer side in SPIN's 224-pixel crops
BODY_HEIGHT_M = 1.7  # a person's extent, for the focal-normalised units of a fitted translation
STAGE1_JOINTS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
YAW_CANDIDATES = 8
# The full-pose indices of SPIN's angle prior and the sign that makes hyper-extension positive.
ANGLE_PRIOR_INDICES = (55, 58, 12, 15)
ANGLE_PRIOR_SIGNS = (1.0, -1.0, -1.0, -1.0)
PRIOR_SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)  # the global prior scale's tuning grid

# Default pose prior: EM on poses of the training source.
GMM_COMPONENTS = 8
GMM_SAMPLES = 10000
GMM_ITERS = 50
GMM_REG_COVAR = 0.05 ** 2  # rad²; the synthetic poses hold some values exactly fixed
GMM_SEED = 0
NUM_BODY_POSE = 69


class PriorFileError(ValueError):
  """A pose-prior file that cannot be used; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------------------------
# Gradient descent with a backtracking (Armijo) line search.


class LineSearchInfo(NamedTuple):
  """Per-iteration line-search statistics (leading axis: iteration 0..M-1).

  Attributes:
    step_size: (M, B) accepted step α (0 where no trial was accepted and Θ stayed).
    num_evals: (M, B) objective evaluations of the iteration for that sample: 1 value and
      gradient plus the trials it needed (the parallel form always does every trial).
    accepted: (M, B) whether the Armijo condition held for a trial.
    batch_trials: (M,) batched forward passes the iteration ran (the while loop runs until the
      slowest sample accepts).
  """

  step_size: jnp.ndarray
  num_evals: jnp.ndarray
  accepted: jnp.ndarray
  batch_trials: jnp.ndarray


def _values(problem: Problem, theta, kp2d, conf):
  """The objective of every sample, forward only: (B, P) -> (B,)."""
  return jax.vmap(lambda t, x, c: objective.objective(problem, t, x, c)[0])(theta, kp2d, conf)


def _backtrack_while(problem, theta, grad, f0, kp2d, conf, alpha0, shrink, c, max_backtracks):
  gg = jnp.sum(jnp.square(grad), -1)
  b = theta.shape[0]

  def cond(s):
    k, _, done, *_ = s
    return (k <= max_backtracks) & ~jnp.all(done)

  def body(s):
    k, alpha, done, theta_new, trials = s
    cand = theta - alpha[:, None] * grad
    ok = (_values(problem, cand, kp2d, conf) <= f0 - c * alpha * gg) & ~done
    theta_new = jnp.where(ok[:, None], cand, theta_new)
    trials = trials + (~done).astype(jnp.int32)
    done = done | ok
    alpha = jnp.where(done, alpha, alpha * shrink)
    return k + 1, alpha, done, theta_new, trials

  init = (jnp.int32(0), alpha0, jnp.zeros(b, bool), theta, jnp.zeros(b, jnp.int32))
  k, alpha, done, theta_new, trials = jax.lax.while_loop(cond, body, init)
  return theta_new, alpha, done, trials, k


def _backtrack_parallel(problem, theta, grad, f0, kp2d, conf, alpha0, shrink, c, max_backtracks):
  gg = jnp.sum(jnp.square(grad), -1)
  powers = shrink ** jnp.arange(max_backtracks + 1, dtype=theta.dtype)
  alphas = alpha0[None] * powers[:, None]  # (T, B)
  cands = theta[None] - alphas[..., None] * grad[None]
  f = jax.vmap(lambda t: _values(problem, t, kp2d, conf))(cands)
  ok = f <= f0[None] - c * alphas * gg[None]
  first = jnp.argmax(ok, axis=0)
  done = jnp.any(ok, axis=0)
  cols = jnp.arange(theta.shape[0])
  theta_new = jnp.where(done[:, None], cands[first, cols], theta)
  alpha = jnp.where(done, alphas[first, cols], alphas[-1] * shrink)
  trials = jnp.full(theta.shape[:1], max_backtracks + 1, jnp.int32)
  return theta_new, alpha, done, trials, jnp.int32(max_backtracks + 1)


@functools.partial(jax.jit, static_argnames=("num_steps", "max_backtracks", "parallel"))
def gd_line_search(problem: Problem, theta0: jnp.ndarray, kp2d: jnp.ndarray, conf: jnp.ndarray,
                   num_steps: int, init_step=GD_LS_INIT_STEP, shrink=GD_LS_SHRINK,
                   c=GD_LS_ARMIJO_C, max_backtracks: int = GD_LS_MAX_BACKTRACKS,
                   grow=GD_LS_GROW, parallel: bool = False):
  """Gradient descent with a backtracking Armijo line search, per sample.

  Iteration n tries α = α_n, α_n·shrink, α_n·shrink², ... (at most ``max_backtracks`` + 1 trials)
  and accepts the first with f(Θ - α g) ≤ f(Θ) - c α ||g||²; a sample with no accepted trial
  stays where it is, so the objective never increases. α_0 = ``init_step``,
  α_{n+1} = ``grow`` × (the accepted, or last tried, step).

  Args:
    problem: the objective's :class:`Problem`.
    theta0: (B, P) starting parameters.
    kp2d: (B, K, 2) normalised target keypoints.
    conf: (B, K) confidences.
    num_steps: M iterations (static).
    init_step: the first trial step.
    shrink: factor per backtrack, in (0, 1).
    c: Armijo's sufficient-decrease constant.
    max_backtracks: backtracks per iteration at most (static).
    grow: the next iteration's first trial relative to the last step.
    parallel: evaluate all trials at once instead of a while loop (static; see the module
      docstring for why the loop is the default).

  Returns:
    (:class:`Trajectory` over steps 0..M, :class:`LineSearchInfo`).
  """
  search = _backtrack_parallel if parallel else _backtrack_while
  alpha0 = jnp.full(theta0.shape[:1], init_step, theta0.dtype)

  def step(carry, _):
    theta, alpha = carry
    grad, out = lgd._evaluate(problem, theta, kp2d, conf)
    theta_new, alpha, done, trials, k = search(problem, theta, grad, out[1], kp2d, conf, alpha,
                                               shrink, c, max_backtracks)
    info = LineSearchInfo(jnp.where(done, alpha, 0.0), 1 + trials, done, k)
    return (theta_new, grow * alpha), (out, info)

  (theta, _), (hist, info) = jax.lax.scan(step, (theta0, alpha0), None, length=num_steps)
  return lgd._trajectory(problem, hist, theta, kp2d, conf), info


# ----------------------------------------------------------------------------------------------
# The pose prior: SMPLify's max-mixture of Gaussians.


@flax.struct.dataclass
class GMMPrior:
  """A Gaussian mixture over the 69 body-pose values, evaluated as SMPLify's max-mixture.

  nll(x) = min_k [½ (x - μ_k)ᵀ Σ_k⁻¹ (x - μ_k) - log(w_k / ((2π)^(D/2) |Σ_k|^½))], as
  SMPLify-X's ``MaxMixturePrior`` (the one SPIN uses) with ``use_merged``.

  Attributes:
    means: (C, D) component means.
    covars: (C, D, D) covariances.
    weights: (C,) mixture weights.
    precisions: (C, D, D) inverse covariances.
    log_coef: (C,) -log(w_k / ((2π)^(D/2) |Σ_k|^½)).
  """

  means: jnp.ndarray
  covars: jnp.ndarray
  weights: jnp.ndarray
  precisions: jnp.ndarray
  log_coef: jnp.ndarray

  @classmethod
  def from_arrays(cls, means, covars, weights) -> GMMPrior:
    """Builds the prior (precisions and normalisers in float64, stored as float32)."""
    means = np.asarray(means, np.float64)
    covars = np.asarray(covars, np.float64)
    weights = np.asarray(weights, np.float64)
    precisions = np.linalg.inv(covars)
    _, logdet = np.linalg.slogdet(covars)
    d = means.shape[-1]
    log_coef = -(np.log(weights) - 0.5 * d * np.log(2.0 * np.pi) - 0.5 * logdet)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return cls(f32(means), f32(covars), f32(weights), f32(precisions), f32(log_coef))

  @classmethod
  def load(cls, path: str | os.PathLike) -> GMMPrior:
    """Reads SMPLify's ``gmm_08.pkl`` (a latin1 pickle {means, covars, weights}) or an .npz with
    the same keys. Raises :class:`PriorFileError` with one clear line otherwise.

    The pickle is read by :mod:`lgd_jax.safe_pickle` (NumPy arrays and containers only: a file
    that names any other class is refused before anything of it runs); the .npz without pickles.
    """
    path = Path(path)
    if not path.is_file():
      raise PriorFileError(f"{path}: pose-prior file not found (SMPLify's gmm_08.pkl from "
                           "https://smplify.is.tue.mpg.de, or an .npz with means, covars, weights)")
    try:
      if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
          data = {k: z[k] for k in z.files}
      else:
        data = safe_pickle.load(path)
    except safe_pickle.ForbiddenGlobal as e:
      raise PriorFileError(f"{path}: {e} in a pose-prior file (expected a pickled dict of NumPy "
                           "arrays: means, covars, weights)") from None
    except Exception as e:  # noqa: BLE001  any unreadable file is the user's file problem
      raise PriorFileError(f"{path}: not a readable pose-prior pickle/npz "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    if not isinstance(data, dict):
      raise PriorFileError(f"{path}: expected a dict with means, covars, weights, got "
                           f"{type(data).__name__}")
    arrays = {}
    for key in ("means", "covars", "weights"):
      if key not in data:
        raise PriorFileError(f"{path}: missing field {key!r} (expected means (C, 69), covars "
                             "(C, 69, 69), weights (C,))")
      try:
        arrays[key] = np.asarray(data[key], np.float64)
      except (TypeError, ValueError):
        raise PriorFileError(f"{path}: field {key!r} is not a numeric array") from None
    m, cv, w = arrays["means"], arrays["covars"], arrays["weights"]
    if m.ndim != 2 or m.shape[1] != NUM_BODY_POSE:
      raise PriorFileError(f"{path}: field 'means' has shape {m.shape}, expected (C, 69)")
    cmp = m.shape[0]
    if cv.shape != (cmp, NUM_BODY_POSE, NUM_BODY_POSE):
      raise PriorFileError(f"{path}: field 'covars' has shape {cv.shape}, expected "
                           f"({cmp}, 69, 69)")
    if w.shape != (cmp,) or np.any(w <= 0):
      raise PriorFileError(f"{path}: field 'weights' must be {cmp} positive numbers, got shape "
                           f"{w.shape}")
    if not all(np.all(np.isfinite(a)) for a in (m, cv, w)):
      raise PriorFileError(f"{path}: non-finite values in means, covars or weights")
    if np.any(np.linalg.eigvalsh(0.5 * (cv + np.swapaxes(cv, 1, 2))) <= 0):
      raise PriorFileError(f"{path}: field 'covars' holds a matrix that is not positive definite")
    return cls.from_arrays(m, cv, w)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the prior: an ``.npz`` (means, covars, weights) when ``path`` ends in .npz, else
    ``gmm_08.pkl``'s format (a protocol-2 pickle of a dict of NumPy arrays)."""
    with open(path, "wb") as f:
      if Path(path).suffix.lower() == ".npz":
        self._write_npz(f)
      else:
        pickle.dump(self._arrays(), f, protocol=2)

  def _arrays(self) -> dict:
    return {"means": np.asarray(self.means), "covars": np.asarray(self.covars),
            "weights": np.asarray(self.weights)}

  def _write_npz(self, f) -> None:
    # To a file object: np.savez would append ".npz" to a temporary name.
    np.savez(f, **self._arrays())

  @full_precision
  def nll(self, x: jnp.ndarray) -> jnp.ndarray:
    """The max-mixture negative log-likelihood of (..., D) values -> (...)."""
    d = x[..., None, :] - self.means
    quad = jnp.einsum("...ki,kij,...kj->...k", d, self.precisions, d)
    return jnp.min(0.5 * quad + self.log_coef, axis=-1)


def fit_gmm(x: np.ndarray, num_components: int = GMM_COMPONENTS, num_iters: int = GMM_ITERS,
            reg_covar: float = GMM_REG_COVAR, seed: int = GMM_SEED) -> GMMPrior:
  """Fits a full-covariance Gaussian mixture by EM (jitted, ``num_iters`` iterations).

  Means start from k-means++ seeding (numpy), covariances from the data's, weights uniform;
  ``reg_covar`` is added to every covariance's diagonal (values that never vary in the data
  would otherwise make them singular).

  Args:
    x: (N, D) samples.
    num_components: C.
    num_iters: EM iterations.
    reg_covar: diagonal regulariser.
    seed: seeding's random seed.

  Returns:
    The fitted :class:`GMMPrior`.
  """
  x = np.asarray(x, np.float32)
  n, d = x.shape
  rng = np.random.default_rng(seed)
  means = [x[rng.integers(n)]]
  for _ in range(1, num_components):
    dist = np.min(((x[:, None] - np.asarray(means)[None]) ** 2).sum(-1), 1).astype(np.float64)
    means.append(x[rng.choice(n, p=dist / dist.sum())] if dist.sum() > 0 else x[rng.integers(n)])
  cov = np.cov(x.T.astype(np.float64)).reshape(d, d) + reg_covar * np.eye(d)
  init = (jnp.asarray(np.asarray(means), jnp.float32),
          jnp.asarray(np.repeat(cov[None], num_components, 0), jnp.float32),
          jnp.full((num_components,), 1.0 / num_components, jnp.float32))
  means, covars, weights = _em(jnp.asarray(x), init, num_iters, reg_covar)
  return GMMPrior.from_arrays(np.asarray(means), np.asarray(covars), np.asarray(weights))


@functools.partial(jax.jit, static_argnames=("num_iters",))
@full_precision
def _em(x, init, num_iters: int, reg_covar):
  n, d = x.shape
  eye = jnp.eye(d, dtype=x.dtype)

  def step(_, params):
    means, covars, weights = params
    chol = jnp.linalg.cholesky(covars)
    diff = x[None] - means[:, None]  # (C, N, D)
    z = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(diff, 1, 2), lower=True)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), -1)
    logp = (-0.5 * jnp.sum(z * z, 1) - 0.5 * logdet[:, None]
            - 0.5 * d * jnp.log(2.0 * jnp.pi) + jnp.log(weights)[:, None])  # (C, N)
    resp = jax.nn.softmax(logp, axis=0)
    nk = resp.sum(1) + 1e-6
    means = resp @ x / nk[:, None]
    diff = x[None] - means[:, None]
    covars = (jnp.swapaxes(resp[..., None] * diff, 1, 2) @ diff / nk[:, None, None]
              + reg_covar * eye)
    return means, covars, nk / n

  return jax.lax.fori_loop(0, num_iters, step, init)


_PRIOR_CACHE: dict[str, GMMPrior] = {}


def _cache_dir() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "lgd_jax"


def evenly_spaced(poses, num_samples: int = GMM_SAMPLES) -> np.ndarray:
  """At most ``num_samples`` evenly spaced rows of ``poses`` (host arrays: numpy, or a
  memory-mapped file), the pose prior's fit set."""
  if len(poses) > num_samples:
    poses = poses[np.linspace(0, len(poses) - 1, num_samples).astype(int)]
  return np.asarray(poses, np.float32)


def default_pose_prior(poses: np.ndarray | None = None, num_components: int = GMM_COMPONENTS,
                       num_samples: int = GMM_SAMPLES, cache_dir: str | os.PathLike | None = "",
                       log=None) -> GMMPrior:
  """The pose prior used when no ``gmm_08.pkl`` is given: a mixture fitted to training poses.

  Fitted once per distinct pose set and cached in memory and (unless ``cache_dir`` is None) as
  ``pose_gmm_<hash>.npz`` in ``cache_dir`` (default ``$XDG_CACHE_HOME/lgd_jax`` or
  ``~/.cache/lgd_jax``); the hash covers the poses and the settings, so a changed sampler or data
  set gets a new fit.

  Args:
    poses: (N, 72) training poses (e.g. AMASS arrays; at most ``num_samples`` are used, evenly
      spaced); None = ``num_samples`` poses of the synthetic sampler
      (:func:`lgd_jax.data.synthetic.sample_poses`, a fixed key).
    num_components: mixture components.
    num_samples: poses used for the fit.
    cache_dir: where to cache the fit; "" = the default; None = memory only.
    log: optional callable for a progress line when a fit is computed.

  Returns:
    A :class:`GMMPrior` over the 69 body-pose values.
  """
  if poses is None:
    from lgd_jax.data import synthetic
    # Concrete even when called while tracing (a jitted caller): the fit below is NumPy's.
    with jax.ensure_compile_time_eval():
      poses = np.asarray(synthetic.sample_poses(jax.random.PRNGKey(GMM_SEED), num_samples))
  poses = np.asarray(poses, np.float32)
  if poses.ndim != 2 or poses.shape[1] < 72:
    raise PriorFileError(f"pose prior: expected training poses (N, 72), got {poses.shape}")
  poses = evenly_spaced(poses, num_samples)
  body_pose = poses[:, 3:72]
  h = hashlib.sha1(body_pose.tobytes())
  h.update(repr((num_components, GMM_REG_COVAR, GMM_ITERS, GMM_SEED)).encode())
  key = h.hexdigest()[:16]
  if key in _PRIOR_CACHE:
    return _PRIOR_CACHE[key]
  path = None
  if cache_dir is not None:
    path = (Path(cache_dir) if cache_dir else _cache_dir()) / f"pose_gmm_{key}.npz"
    if path.is_file():
      try:
        _PRIOR_CACHE[key] = GMMPrior.load(path)
        return _PRIOR_CACHE[key]
      except PriorFileError:
        pass  # a damaged cache entry is refitted and overwritten
  if log:
    log(f"fitting the default pose prior ({num_components} Gaussians, {len(body_pose)} poses)")
  with jax.ensure_compile_time_eval():
    prior = fit_gmm(body_pose, num_components)
  _PRIOR_CACHE[key] = prior
  if path is not None:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      # Written beside the target and renamed: a reader never sees half a file.
      tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}")
      with open(tmp, "wb") as f:
        prior._write_npz(f)
      os.replace(tmp, path)
    except OSError:
      tmp.unlink(missing_ok=True)  # an unwritable cache only costs a refit next time
  return prior


# ----------------------------------------------------------------------------------------------
# The SMPLify-style fit.


class SmplifyWeights(NamedTuple):
  """SPIN's loss constants in the objective's 2D units (the loss uses the weights squared)."""

  sigma: float | jnp.ndarray
  pose: float | jnp.ndarray
  shape: float | jnp.ndarray
  angle: float | jnp.ndarray


def pixels_per_unit(problem: Problem) -> float:
  """SPIN's crop pixels per unit of the objective's 2D frame (see the module docstring)."""
  if not problem.fit_translation:
    return SPIN_PIXELS_PER_UNIT
  return SPIN_PIXELS_PER_UNIT * camera.OFFICIAL_DISTANCE / BODY_HEIGHT_M


def spin_weights(problem: Problem, prior_scale=1.0) -> SmplifyWeights:
  """SPIN's sigma and prior weights rescaled to ``problem``'s units; the priors times
  sqrt(``prior_scale``) (so their squared weights scale by ``prior_scale``)."""
  s = pixels_per_unit(problem)
  w = jnp.sqrt(jnp.asarray(prior_scale, jnp.float32)) / s
  return SmplifyWeights(SPIN_SIGMA_PX / s, SPIN_POSE_PRIOR_WEIGHT * w,
                        SPIN_SHAPE_PRIOR_WEIGHT * w, SPIN_ANGLE_PRIOR_WEIGHT * w)


def gmof(x: jnp.ndarray, sigma) -> jnp.ndarray:
  """The Geman-McClure robust error σ² x² / (σ² + x²)."""
  x2 = jnp.square(x)
  s2 = jnp.square(sigma)
  return s2 * x2 / (s2 + x2)


def angle_prior(pose: jnp.ndarray) -> jnp.ndarray:
  """SPIN's elbow and knee prior of (..., 72) poses -> (..., 4) terms (before its weight)."""
  vals = pose[..., jnp.asarray(ANGLE_PRIOR_INDICES)] * jnp.asarray(ANGLE_PRIOR_SIGNS, pose.dtype)
  return jnp.square(jnp.exp(vals))


def _joint_mask(problem: Problem, names: Sequence[str]) -> np.ndarray:
  kp_names = body.get_keypoint_set(problem.kpset).names
  mask = np.array([n in names for n in kp_names], np.float32)
  if mask.sum() < 2:  # a set without shoulders and hips: orient on every keypoint
    mask[:] = 1.0
  return mask


def stage1_objective(problem: Problem, theta, kp2d, conf, mask):
  """SPIN's camera-stage loss for one sample: the summed squared re-projection error of the
  shoulders and hips (``mask``), both sides normalised over those joints alone."""
  c = conf * mask
  pred = objective.to_2d(problem, objective.keypoints_3d(problem, theta), c)
  target = kp2d if problem.fit_translation else camera.normalize_unit_box(kp2d, c)
  return jnp.sum(c[:, None] * jnp.square(pred - target))


def smplify_objective(problem: Problem, theta, kp2d, conf, prior: GMMPrior,
                      weights: SmplifyWeights):
  """SPIN's body-fitting loss for one sample, in the objective's units.

  Args:
    problem: the :class:`Problem`.
    theta: (P,) parameters.
    kp2d: (K, 2) normalised target keypoints.
    conf: (K,) confidences.
    prior: the pose prior.
    weights: :class:`SmplifyWeights`.

  Returns:
    Σ_k conf_k² Σ_xy ρ_σ(pred - target) + w_pose² nll(body pose) + w_angle² Σ angle prior
    + w_shape² ||β||².
  """
  pred = objective.to_2d(problem, objective.keypoints_3d(problem, theta), conf)
  data = jnp.sum(jnp.square(conf) * jnp.sum(gmof(pred - kp2d, weights.sigma), -1))
  p = objective.split(problem, theta)
  return (data + jnp.square(weights.pose) * prior.nll(p.pose[3:])
          + jnp.square(weights.angle) * jnp.sum(angle_prior(p.pose))
          + jnp.square(weights.shape) * jnp.sum(jnp.square(p.betas)))


def _yaw_starts(problem: Problem, theta0, num: int):
  """(num, B, P): ``theta0`` with its root turned by 2πk/num about the vertical axis."""
  yaws = 2.0 * jnp.pi * jnp.arange(num, dtype=theta0.dtype) / num
  zero = jnp.zeros(theta0.shape[:1], theta0.dtype)
  turn = lambda y: theta0.at[:, :3].set(  # noqa: E731
      training.rotate_root(theta0[:, :3], zero + y, zero, zero))
  return jax.vmap(turn)(yaws).at[0].set(theta0)  # the start itself, not a round trip of it


def smplify(problem: Problem, kp2d: jnp.ndarray, conf: jnp.ndarray,
            num_iters: tuple[int, int] = (100, 100), pose_prior: GMMPrior | None = None,
            prior_scale=1.0, lr=SPIN_LEARNING_RATE, theta0: jnp.ndarray | None = None,
            yaw_candidates: int = YAW_CANDIDATES, weights: SmplifyWeights | None = None):
  """A SMPLify-style two-stage fit, SPIN's batched SMPLify on this objective.

  Args:
    problem: the objective's :class:`Problem`.
    kp2d: (B, K, 2) normalised target keypoints.
    conf: (B, K) confidences.
    num_iters: (stage 1, stage 2) Adam iterations (static).
    pose_prior: a :class:`GMMPrior` (e.g. ``GMMPrior.load("gmm_08.pkl")``); None =
      :func:`default_pose_prior` of the synthetic sampler (resolved before the jitted fit; not
      needed, and not fitted, when stage 2 has no iterations).
    prior_scale: one global factor on the squared prior weights.
    lr: Adam's learning rate (SPIN: 1e-2).
    theta0: (B, P) start; None = zeros (the zero pose and mean shape).
    yaw_candidates: stage 1 starts from the best of this many turns of ``theta0`` about the
      vertical axis (static; 1 = ``theta0`` itself).
    weights: explicit :class:`SmplifyWeights`; None = :func:`spin_weights` with ``prior_scale``.

  Returns:
    :class:`Trajectory` over steps 0..M (M = stage 1 + stage 2) with the official objective's
    loss and gradient norm; step 0 is ``theta0``.
  """
  if pose_prior is None and num_iters[1] > 0:
    # Outside the jitted fit: the default prior is fitted with NumPy from concrete poses.
    pose_prior = default_pose_prior()
  return _smplify(problem, kp2d, conf, tuple(num_iters), pose_prior, prior_scale, lr, theta0,
                  yaw_candidates, weights)


@functools.partial(jax.jit, static_argnames=("num_iters", "yaw_candidates"))
def _smplify(problem, kp2d, conf, num_iters, prior, prior_scale, lr, theta0, yaw_candidates,
             weights):
  s1, s2 = num_iters
  w = spin_weights(problem, prior_scale) if weights is None else weights
  if theta0 is None:
    theta0 = jnp.zeros(kp2d.shape[:1] + (problem.num_params,), kp2d.dtype)
  mask = jnp.asarray(_joint_mask(problem, STAGE1_JOINTS))
  s1_fn = lambda t, x, c: stage1_objective(problem, t, x, c, mask)  # noqa: E731
  s2_fn = lambda t, x, c: smplify_objective(problem, t, x, c, prior, w)  # noqa: E731

  # Stage 1 moves the global orientation (and translation) only.
  free = np.zeros(problem.num_params, np.float32)
  free[:3] = 1.0
  if problem.fit_translation:
    free[-3:] = 1.0
  free = jnp.asarray(free)

  start = theta0
  if yaw_candidates > 1:
    cands = _yaw_starts(problem, theta0, yaw_candidates)
    vals = jax.vmap(lambda t: jax.vmap(s1_fn)(t, kp2d, conf))(cands)  # (Y, B)
    start = cands[jnp.argmin(vals, 0), jnp.arange(theta0.shape[0])]

  def run_stage(theta, fn, length, grad_mask):
    tx = optax.adam(lr, b1=0.9, b2=0.999)
    # Each sample's loss depends on its own Θ only: the gradient of the sum is per sample.
    grad_fn = jax.grad(lambda t: jnp.sum(jax.vmap(fn)(t, kp2d, conf)))

    def step(carry, _):
      theta, state = carry
      g = grad_fn(theta) * grad_mask
      upd, state = tx.update(g, state, theta)
      theta = optax.apply_updates(theta, upd)
      return (theta, state), lgd._evaluate(problem, theta, kp2d, conf)[1]

    (theta, _), hist = jax.lax.scan(step, (theta, tx.init(theta)), None, length=length)
    return theta, hist

  _, first = lgd._evaluate(problem, theta0, kp2d, conf)
  theta, hist1 = run_stage(start, s1_fn, s1, free)
  parts = [jax.tree.map(lambda a: a[None], first), hist1]
  if s2 > 0:  # without stage 2 there may be no prior to trace
    parts.append(run_stage(theta, s2_fn, s2, jnp.ones_like(free))[1])
  return Trajectory(*jax.tree.map(lambda *h: jnp.concatenate(h, 0), *parts))


def smplify_stages(num_steps: int) -> tuple[int, int]:
  """How ``num_steps`` iterations are split between the stages: half and half (SPIN: 100 + 100)."""
  return num_steps // 2, num_steps - num_steps // 2


# ----------------------------------------------------------------------------------------------
# Evaluation, like evaluation.eval_baseline.


def run_method(problem: Problem, method: str, settings: dict, theta0: jnp.ndarray,
               kp2d: jnp.ndarray, conf: jnp.ndarray, num_steps: int) -> Trajectory:
  """The trajectory of "gd_ls" or "smplify" from ``theta0`` (each a jitted program).

  Args:
    problem: the :class:`Problem`.
    method: "gd_ls" or "smplify".
    settings: for "gd_ls" {"init_step"} (optional "shrink", "c", "grow"); for "smplify"
      {"prior_scale"} (optional "lr", and "pose_prior": a :class:`GMMPrior`, default
      :func:`default_pose_prior`). The numbers are traced: changing them never recompiles.
    theta0: (B, P) start.
    kp2d: (B, K, 2) normalised target keypoints.
    conf: (B, K) confidences.
    num_steps: M; "smplify" splits it by :func:`smplify_stages`.

  Returns:
    :class:`Trajectory` over steps 0..M.
  """
  if method == "gd_ls":
    extra = {k: float(settings[k]) for k in ("shrink", "c", "grow") if k in settings}
    return gd_line_search(problem, theta0, kp2d, conf, num_steps,
                          init_step=float(settings.get("init_step", GD_LS_INIT_STEP)), **extra)[0]
  if method == "smplify":
    prior = settings.get("pose_prior")
    return smplify(problem, kp2d, conf, smplify_stages(num_steps),
                   pose_prior=default_pose_prior() if prior is None else prior,
                   prior_scale=float(settings.get("prior_scale", 1.0)),
                   lr=float(settings.get("lr", SPIN_LEARNING_RATE)), theta0=theta0)
  raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


_trajectory_metrics = jax.jit(training.trajectory_metrics)


def eval_method(problem: Problem, method: str, settings: dict, batch: training.Batch,
                num_steps: int):
  """Per-step metrics of "gd_ls" or "smplify" from the zero start, and the parameters, like
  :func:`lgd_jax.evaluation.eval_baseline`.

  Both parts are jitted programs (compiled once per method, batch shape and ``num_steps``).

  Args:
    problem: the :class:`Problem`.
    method: "gd_ls" or "smplify".
    settings: see :func:`run_method`.
    batch: a :class:`training.Batch`.
    num_steps: M.

  Returns:
    (:func:`training.trajectory_metrics` dict of (M+1,) arrays, theta (M+1, B, P)).
  """
  theta0 = jnp.zeros_like(batch.theta)
  traj = run_method(problem, method, settings, theta0, batch.kp2d, batch.conf, num_steps)
  return _trajectory_metrics(problem, traj, batch.theta), traj.theta


def tune_smplify(problem: Problem, batch: training.Batch, num_steps: int, window: int,
                 candidates=PRIOR_SCALES, pose_prior: GMMPrior | None = None):
  """The global prior scale with the lowest mean PA-MPJPE at step ``window`` on a tuning batch
  (the one ground-truth-informed choice), and the scores."""
  prior = default_pose_prior() if pose_prior is None else pose_prior
  scores = {}
  for s in candidates:
    m, _ = eval_method(problem, "smplify", {"prior_scale": float(s), "pose_prior": prior}, batch,
                       num_steps)
    scores[float(s)] = float(m["pa_mpjpe_mm"][window])
  finite = {k: v for k, v in scores.items() if np.isfinite(v)}
  best = min(finite, key=finite.get) if finite else float(candidates[0])
  return best, scores


def config_pose_prior(config, log=None) -> GMMPrior:
  """:func:`default_pose_prior` of a config's training poses: its AMASS training split, or the
  synthetic sampler when it has no ``amass_dir``.

  The AMASS poses stay on the host: only the evenly spaced fit set (10 k poses) reaches the
  device, never the split (millions of frames).
  """
  if config.amass_dir:
    poses = evenly_spaced(training.load_amass(config)["train_poses"])
  else:
    from lgd_jax.data import pose_sources
    kind = training.synthetic_source(config, "train").kind
    poses = np.asarray(pose_sources.sample(kind, jax.random.PRNGKey(GMM_SEED), GMM_SAMPLES))
  return default_pose_prior(poses, log=log)


def protocol_methods(restored, prior_scale: float = 1.0) -> dict:
  """The classical anchor for benchmark tables (:func:`lgd_jax.protocols.evaluate_dataset`'s
  ``extra_methods``): the SMPLify-style fit from the zero pose with SPIN's weights (scaled by
  ``prior_scale``; ground truth is never used to tune it on a benchmark), its iterations split
  half and half between the two stages, and the pose prior fitted to the checkpoint's training
  poses (:func:`default_pose_prior`)."""
  settings = {"prior_scale": float(prior_scale), "pose_prior": config_pose_prior(restored.config)}

  def smplify_fit(problem, kp2d, conf, num_steps):
    theta0 = jnp.zeros(kp2d.shape[:1] + (problem.num_params,), kp2d.dtype)
    return run_method(problem, "smplify", settings, theta0, kp2d, conf, num_steps).theta

  return {"smplify": smplify_fit}
