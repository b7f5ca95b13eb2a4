"""Pose priors and the robustifier: the Gaussian-mixture pose prior (SMPLify's gmm_08.pkl, or one
fitted by EM to training poses and cached as .npz), the elbow/knee angle prior and Geman-McClure.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lgd_jax import safe_pickle
from lgd_jax.errors import UserError, one_line
from lgd_jax.geometry.numerics import full_precision

# The full-pose indices of SPIN's angle prior and the sign that makes hyper-extension positive.
ANGLE_PRIOR_INDICES = (55, 58, 12, 15)
ANGLE_PRIOR_SIGNS = (1.0, -1.0, -1.0, -1.0)

# Default pose prior: EM on poses of the training source.
GMM_COMPONENTS = 8
GMM_SAMPLES = 10000
GMM_ITERS = 50
GMM_REG_COVAR = 0.05 ** 2  # rad²; the synthetic poses hold some values exactly fixed
GMM_SEED = 0
NUM_BODY_POSE = 69


class PriorFileError(UserError):
  """A pose-prior file that cannot be used; the message names the file and what is wrong."""


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
                           f"({type(e).__name__}: {one_line(str(e))[:120]})") from None
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


def default_pose_prior(poses: np.ndarray, num_components: int = GMM_COMPONENTS,
                       num_samples: int = GMM_SAMPLES, cache_dir: str | os.PathLike | None = "",
                       log=None) -> GMMPrior:
  """The pose prior used when no ``gmm_08.pkl`` is given: a mixture fitted to training poses.

  Fitted once per distinct pose set and cached in memory and (unless ``cache_dir`` is None) as
  ``pose_gmm_<hash>.npz`` in ``cache_dir`` (default ``$XDG_CACHE_HOME/lgd_jax`` or
  ``~/.cache/lgd_jax``); the hash covers the poses and the settings, so a changed sampler or data
  set gets a new fit. :func:`lgd_jax.build.config_pose_prior` gives it a config's training poses,
  :func:`lgd_jax.build.synthetic_pose_prior` the synthetic sampler's.

  Args:
    poses: (N, 72) training poses (e.g. AMASS arrays; at most ``num_samples`` are used, evenly
      spaced).
    num_components: mixture components.
    num_samples: poses used for the fit.
    cache_dir: where to cache the fit; "" = the default; None = memory only.
    log: optional callable for a progress line when a fit is computed.

  Returns:
    A :class:`GMMPrior` over the 69 body-pose values.
  """
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


def gmof(x: jnp.ndarray, sigma) -> jnp.ndarray:
  """The Geman-McClure robust error σ² x² / (σ² + x²)."""
  x2 = jnp.square(x)
  s2 = jnp.square(sigma)
  return s2 * x2 / (s2 + x2)


def angle_prior(pose: jnp.ndarray) -> jnp.ndarray:
  """SPIN's elbow and knee prior of (..., 72) poses -> (..., 4) terms (before its weight)."""
  vals = pose[..., jnp.asarray(ANGLE_PRIOR_INDICES)] * jnp.asarray(ANGLE_PRIOR_SIGNS, pose.dtype)
  return jnp.square(jnp.exp(vals))
