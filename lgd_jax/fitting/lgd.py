"""Learned gradient descent: Θ_{n+1} = Θ_n + s · N_w(∂L/∂Θ_n, Θ_n, x, c), unrolled with lax.scan.

A :class:`Learner` holds the static choices (networks, inputs, output scale, how the first guess is
made); :func:`fit` runs it for a static number of steps on a batch and returns the whole
trajectory. Classical optimisers on the same objective (:func:`run_optimizer`) return the same
:class:`Trajectory`, so every method is evaluated and plotted alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lgd_jax.body.model import NUM_POSE
from lgd_jax.fitting import objective
from lgd_jax.fitting.objective import Problem

# Inputs the update network can be given, by name.
FEATURES = ("kp2d", "conf", "theta", "pose", "grad", "grad_pose")


class Trajectory(NamedTuple):
  """Per-step states of a fit; the leading axis is the step 0..M (0 = the starting point).

  Attributes:
    theta: (M+1, B, P) parameters.
    loss: (M+1, B) objective values.
    grad_norm: (M+1, B) norms of the true gradient ∂L/∂Θ_n.
    kp3d: (M+1, B, K, 3) 3D keypoints.
    kp2d: (M+1, B, K, 2) normalised 2D keypoints.
  """

  theta: jnp.ndarray
  loss: jnp.ndarray
  grad_norm: jnp.ndarray
  kp3d: jnp.ndarray
  kp2d: jnp.ndarray


class Learner(flax.struct.PyTreeNode):
  """The learned optimiser's static structure.

  One step is Θ_{n+1} = Θ_n + s_n · g(∂L/∂Θ_n) · N_w(features_n) - α ⊙ d_n, where

  * s_n = ``output_scale`` · (τ / (τ + n))^p with τ = ``damping`` (no damping when 0) and
    p = ``damping_power``: a scheduled step size that shrinks with the iteration n (learned
    optimisers scale their outputs by small multipliers, google/learned_optimization
    ``mlp_lopt.py``). p = 1, a harmonic schedule, keeps the sum of the network's steps unbounded:
    the network can still take the fit anywhere. p = 2 makes that sum finite, so past the
    training window the network's share fades and the nominal term below decides where the fit
    converges;
  * g(·) = tanh(||∂L/∂Θ_n|| / ``gate``) when ``gate`` > 0, else 1: the network's update is
    switched off where the gradient vanishes, so an exact fit is a fixed point by construction
    (as LVD's field is zero at its solution; with the robust or L2 objective only);
  * α = exp(learned log-rates) per parameter when ``gd_rate`` > 0 (initialised at ``gd_rate``),
    else 0: the rates of a "nominal" descent term beside the network, which keeps a learned
    optimiser descending where its network is unsure (Metz et al. 2022, "Practical tradeoffs
    between memory, compute, and performance in learned optimizers"; Heaton et al. 2020,
    "Safeguarded learned convex optimization"). Its direction d_n is ``nominal``: "gd", the
    gradient ∂L/∂Θ_n itself (a diagonally preconditioned gradient step), or "adam", Adam's
    bias-corrected m̂_n / (√v̂_n + ε) from moments of the per-sample gradients that the fit
    carries (:class:`NominalState`; Kingma & Ba 2015). The robust objective's curvature grows
    sharply near a good fit, where a fixed gradient step oscillates; Adam's per-parameter
    normalisation, with its second moment remembering the larger gradients of earlier
    iterations, takes steps that shrink as the fit settles, so the iterates approach a stationary
    point of the objective.

  Attributes:
    update_net: the network N_w; maps features (B, F) to updates (B, P).
    init_net: None to start from Θ_0 = 0 (the zero pose and mean shape), or a network that
      predicts Θ_0 from the flattened 2D keypoints (the official code's learned initial guess).
    features: names from :data:`FEATURES`, concatenated in this order.
    output_scale: s in Θ_{n+1} = Θ_n + s · N_w(...) (official code: 0.1).
    stop_gradient: feed the gradient as a constant (official code) rather than differentiating
      through it (second-order terms) when the training loss is differentiated.
    grad_scale: multiplies the gradient feature.
    unroll: lax.scan's unroll factor.
    damping: τ of the step-size schedule (0: constant).
    gate: gradient-norm scale of the update's gate (0: no gate).
    gd_rate: initial rate α of the learned nominal term (0: no such term).
    step_input: the update network takes the step index (per-step BatchNorm).
    remat: what the training backward keeps of the update network's activations: "none"
      (everything autodiff saves), "dots" (only the matmul outputs; the elementwise layers,
      BatchNorm, PReLU and dropout, are recomputed in the backward: ``jax.checkpoint`` with the
      ``dots_with_no_batch_dims_saveable`` policy), "full" (nothing: the whole network is
      recomputed), "step" (the whole scan step, the objective's gradient and the body model
      included, keeps only its matmul outputs). Same values, less memory; inference is
      unaffected.
    nominal: the nominal term's direction, "gd" or "adam" (see above).
    damping_power: p of the step-size schedule.
  """

  update_net: nn.Module = flax.struct.field(pytree_node=False)
  init_net: nn.Module | None = flax.struct.field(pytree_node=False, default=None)
  features: Sequence[str] = flax.struct.field(pytree_node=False, default=("kp2d", "conf", "theta",
                                                                          "grad"))
  output_scale: float = flax.struct.field(pytree_node=False, default=1.0)
  stop_gradient: bool = flax.struct.field(pytree_node=False, default=True)
  grad_scale: float = flax.struct.field(pytree_node=False, default=1.0)
  unroll: int = flax.struct.field(pytree_node=False, default=1)
  damping: float = flax.struct.field(pytree_node=False, default=0.0)
  gate: float = flax.struct.field(pytree_node=False, default=0.0)
  gd_rate: float = flax.struct.field(pytree_node=False, default=0.0)
  step_input: bool = flax.struct.field(pytree_node=False, default=False)
  remat: str = flax.struct.field(pytree_node=False, default="none")  # configs: "dots"
  nominal: str = flax.struct.field(pytree_node=False, default="gd")
  damping_power: float = flax.struct.field(pytree_node=False, default=1.0)

  def init(self, rng, problem: Problem, batch: int = 2):
    """Network variables {"params", "batch_stats"} for ``problem``."""
    k = problem.num_keypoints
    r_upd, r_init = jax.random.split(rng)
    kp2d = jnp.zeros((batch, k, 2))
    conf = jnp.ones((batch, k))
    theta = jnp.zeros((batch, problem.num_params))
    feats = _features(self, kp2d, conf, theta, theta)
    upd = self.update_net.init({"params": r_upd, "dropout": r_upd}, feats, train=False,
                               **self._step_kwargs(0))
    params = {"update": upd["params"]}
    stats = {"update": upd.get("batch_stats", {})}
    if self.init_net is not None:
      ini = self.init_net.init({"params": r_init, "dropout": r_init}, kp2d.reshape(batch, -1),
                               train=False)
      params["init"] = ini["params"]
      stats["init"] = ini.get("batch_stats", {})
    if self.gd_rate > 0:
      params["gd"] = {"log_rate": jnp.full((problem.num_params,), math.log(self.gd_rate),
                                           jnp.float32)}
    return {"params": params, "batch_stats": stats}

  def _step_kwargs(self, step):
    return {"step": step} if self.step_input else {}


def _features(learner: Learner, kp2d, conf, theta, grad):
  b = theta.shape[0]
  parts = {"kp2d": lambda: kp2d.reshape(b, -1), "conf": lambda: conf,
           "theta": lambda: theta, "pose": lambda: theta[:, :NUM_POSE],
           "grad": lambda: grad * learner.grad_scale,
           "grad_pose": lambda: grad[:, :NUM_POSE] * learner.grad_scale}
  return jnp.concatenate([parts[name]() for name in learner.features], -1)


REMATS = ("none", "dots", "full", "step")
_REMAT_POLICIES = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                   "full": jax.checkpoint_policies.nothing_saveable}


def _apply(net, params, stats, x, train, rng, remat="none", **kwargs):
  """The network on ``x``: (output, batch stats, updated when ``train``). In training, ``remat``
  "dots"/"full" checkpoints it with that policy; "step" is checkpointed by :func:`fit` around
  the whole scan step, "none" not at all."""
  if remat not in REMATS:
    raise ValueError(f"remat: expected one of {REMATS}, got {remat!r}")
  if not train:
    return net.apply({"params": params, "batch_stats": stats}, x, train=False, **kwargs), stats

  def run(params, stats, x, rng):
    out, updated = net.apply({"params": params, "batch_stats": stats}, x, train=True,
                             rngs={"dropout": rng}, mutable=["batch_stats"], **kwargs)
    return out, updated["batch_stats"]

  if remat in _REMAT_POLICIES:
    run = jax.checkpoint(run, policy=_REMAT_POLICIES[remat])
  return run(params, stats, x, rng)


def initial_guess(learner: Learner, variables, problem: Problem, kp2d, conf, train=False,
                  rng=None):
  """Θ_0 (B, P) and the init network's updated batch statistics."""
  stats = variables["batch_stats"]
  if learner.init_net is None:
    return jnp.zeros(kp2d.shape[:1] + (problem.num_params,), kp2d.dtype), stats
  rng = jax.random.PRNGKey(0) if rng is None else rng
  theta0, init_stats = _apply(learner.init_net, variables["params"]["init"], stats["init"],
                              kp2d.reshape(kp2d.shape[0], -1), train, rng)
  return theta0, {**stats, "init": init_stats}


def grad_and_record(problem, theta, kp2d, conf):
  """The objective's gradient at Θ_n and the trajectory record of that state (its value, the
  gradient's norm, the 3D and projected keypoints).

  Returns:
    (grad (B, P), (theta, loss (B,), |grad| (B,), kp3d (B, K, 3), pred2d (B, K, 2))): the
    objective's value and gradient and the record of step n, in :class:`Trajectory`'s order.
  """
  loss, (kp3d, pred2d), grad = objective.value_and_grad(problem, theta, kp2d, conf)
  return grad, (theta, loss, jnp.linalg.norm(grad, axis=-1), kp3d, pred2d)


def finish_trajectory(problem, hist, theta, kp2d, conf) -> Trajectory:
  """The scanned records of steps 0..M-1 followed by the final state M's."""
  _, last = grad_and_record(problem, theta, kp2d, conf)
  return Trajectory(*jax.tree.map(lambda h, x: jnp.concatenate([h, x[None]], 0), hist, last))



NOMINALS = ("gd", "adam")
# Adam's constants for the "adam" nominal term (Kingma & Ba 2015; optax.adam's defaults), and
# optax's eps_root inside the square root, so that a parameter whose gradient is always zero
# (SMPL's hands for a body keypoint set) has a finite derivative there too.
ADAM_B1, ADAM_B2, ADAM_EPS, ADAM_EPS_ROOT = 0.9, 0.999, 1e-8, 1e-30


class NominalState(NamedTuple):
  """Adam's moments of one fit's gradients, per sample (the "adam" nominal term).

  Attributes:
    mu: (B, P) first moment.
    nu: (B, P) second moment.
    count: (B,) int32 gradients folded in (the bias correction's t).
  """

  mu: jnp.ndarray
  nu: jnp.ndarray
  count: jnp.ndarray


def nominal_init(learner: Learner, theta) -> NominalState | None:
  """The nominal term's state at the start of a fit (None when it keeps none)."""
  if learner.nominal != "adam" or learner.gd_rate <= 0:
    return None
  # Two arrays, not one used twice: a train state's buffers are donated one by one.
  return NominalState(jnp.zeros_like(theta), jnp.zeros_like(theta),
                      jnp.zeros(theta.shape[:1], jnp.int32))


def _adam_direction(state: NominalState, g):
  """Adam's bias-corrected m̂ / (sqrt(v̂) + ε) after folding in ``g``, and the new state."""
  count = state.count + 1
  mu = ADAM_B1 * state.mu + (1.0 - ADAM_B1) * g
  nu = ADAM_B2 * state.nu + (1.0 - ADAM_B2) * jnp.square(g)
  t = count.astype(g.dtype)[:, None]
  m_hat = mu / (1.0 - ADAM_B1 ** t)
  v_hat = nu / (1.0 - ADAM_B2 ** t)
  return m_hat / (jnp.sqrt(v_hat + ADAM_EPS_ROOT) + ADAM_EPS), NominalState(mu, nu, count)


def learned_step(learner: Learner, params, stats, problem: Problem, theta, grad, kp2d, conf,
                 iteration, train: bool, rng, scan_step=0, nominal: NominalState | None = None):
  """One learned update from Θ_n with gradient ``grad``.

  Args:
    iteration: (B,) or scalar iteration index n of each sample (the step-size schedule's n).
    scan_step: the step index within this call's unroll (per-step BatchNorm's row).
    nominal: the nominal term's state (:func:`nominal_init`; None when it keeps none).

  Returns:
    (Θ_{n+1}, updated batch stats, the nominal term's new state).
  """
  g = jax.lax.stop_gradient(grad) if learner.stop_gradient else grad
  feats = _features(learner, kp2d, conf, theta, g)
  delta, stats = _apply(learner.update_net, params["update"], stats, feats, train, rng,
                        learner.remat, **learner._step_kwargs(scan_step))
  scale = jnp.full(theta.shape[:1], learner.output_scale, theta.dtype)
  if learner.damping > 0:
    n = jnp.broadcast_to(jnp.asarray(iteration, theta.dtype), theta.shape[:1])
    scale = scale * jnp.power(learner.damping / (learner.damping + n), learner.damping_power)
  if learner.gate > 0:
    scale = scale * jnp.tanh(jnp.linalg.norm(g, axis=-1) / learner.gate)
  new = theta + scale[:, None] * delta
  if learner.gd_rate > 0:
    direction = g
    if learner.nominal == "adam":
      direction, nominal = _adam_direction(nominal, g)
    new = new - jnp.exp(params["gd"]["log_rate"]) * direction
  return new, stats, nominal


def fit(learner: Learner, variables, problem: Problem, kp2d: jnp.ndarray, conf: jnp.ndarray,
        num_steps: int, train: bool = False, rng=None, theta0: jnp.ndarray | None = None,
        active_steps=None, start_iteration=None, nominal0: NominalState | None = None,
        return_nominal: bool = False):
  """Runs ``num_steps`` learned updates on a batch.

  Args:
    learner: the :class:`Learner`.
    variables: its {"params", "batch_stats"}.
    problem: the objective's :class:`Problem`.
    kp2d: (B, K, 2) normalised target keypoints.
    conf: (B, K) confidences.
    num_steps: M (static); may exceed the training window N.
    train: batch statistics from the batch (and updated), dropout on.
    rng: dropout key when ``train``.
    theta0: optional (B, P) starting point instead of the learner's initial guess.
    active_steps: optional scalar or (B,) number of steps actually taken (traced, <= M): step n
      is applied only where n < active_steps, later states repeat the last one, and batch
      statistics are not updated by the masked steps. A varying unroll length therefore never
      changes the compiled program.
    start_iteration: optional (B,) iteration index of Θ_0 (a fit continued from a stored state
      starts at its age), for the step-size schedule; default 0.
    nominal0: the nominal term's state at Θ_0 (a continued fit's); default a fresh one.
    return_nominal: also return the nominal term's final state.

  Returns:
    (:class:`Trajectory` over steps 0..M, updated batch_stats), and the nominal term's final
    state (:class:`NominalState` or None) with ``return_nominal``.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  r_init, r_steps = jax.random.split(rng)
  stats = variables["batch_stats"]
  if theta0 is None:
    theta0, stats = initial_guess(learner, variables, problem, kp2d, conf, train, r_init)
  params = variables["params"]
  b = kp2d.shape[0]
  first = jnp.zeros((b,), jnp.int32) if start_iteration is None else start_iteration

  nominal = nominal_init(learner, theta0) if nominal0 is None else nominal0

  def step(carry, i):
    theta, nom, upd_stats = carry
    grad, out = grad_and_record(problem, theta, kp2d, conf)
    new, new_stats, new_nom = learned_step(learner, params, upd_stats, problem, theta, grad,
                                           kp2d, conf, first + i, train,
                                           jax.random.fold_in(r_steps, i), i, nom)
    if active_steps is not None:
      on = jnp.broadcast_to(i < active_steps, (b,))
      new = jnp.where(on[:, None], new, theta)
      new_nom = jax.tree.map(lambda a, o: jnp.where(on.reshape((b,) + (1,) * (a.ndim - 1)),
                                                    a, o), new_nom, nom)
      any_on = jnp.any(on)
      new_stats = jax.tree.map(lambda a, o: jnp.where(any_on, a, o), new_stats, upd_stats)
    return (new, new_nom, new_stats), out

  if train and learner.remat == "step":
    step = jax.checkpoint(step, policy=_REMAT_POLICIES["dots"])
  (theta, nominal, upd_stats), hist = jax.lax.scan(
      step, (theta0, nominal, stats["update"]), jnp.arange(num_steps),
      unroll=max(1, min(learner.unroll, num_steps)))
  out = finish_trajectory(problem, hist, theta, kp2d, conf), {**stats, "update": upd_stats}
  return (*out, nominal) if return_nominal else out


class StopRecord(NamedTuple):
  """Where :func:`fit_until_converged` stopped each sample.

  Attributes:
    steps: (B,) the iteration at which the sample stopped (its final state is Θ_steps).
    converged: (B,) whether the stopping rule fired (False: it ran the M steps).
    num_iterations: () iterations the batch ran (the slowest sample's stop).
  """

  steps: jnp.ndarray
  converged: jnp.ndarray
  num_iterations: jnp.ndarray


def fit_until_converged(learner: Learner, variables, problem: Problem, kp2d, conf,
                        max_steps: int, tol: float = 1e-4, min_steps: int = 1,
                        theta0: jnp.ndarray | None = None, abs_tol: float = 1e-7):
  """Learned updates until each sample's objective stops changing (inference mode).

  Sample b stops at the first iteration n >= ``min_steps`` with
  |L(Θ_n) - L(Θ_{n-1})| <= ``tol`` · L(Θ_{n-1}) (or L(Θ_n) <= ``abs_tol``), or at ``max_steps``;
  from then on its state is frozen. The loop (a ``lax.while_loop``) ends when every sample has
  stopped, so a converging batch costs only the iterations it needs.

  Returns:
    (:class:`Trajectory` over steps 0..max_steps — a stopped sample's later entries repeat its
    final state —, :class:`StopRecord`).
  """
  if max_steps < 1:
    raise ValueError(f"max_steps: expected a positive integer, got {max_steps}")
  stats = variables["batch_stats"]
  if theta0 is None:
    theta0, stats = initial_guess(learner, variables, problem, kp2d, conf)
  params = variables["params"]
  b = kp2d.shape[0]
  grad0, rec0 = grad_and_record(problem, theta0, kp2d, conf)
  hist = jax.tree.map(lambda r: jnp.zeros((max_steps + 1,) + r.shape, r.dtype).at[0].set(r),
                      rec0)

  def cond(s):
    n, _, _, done, *_ = s
    return (n < max_steps) & ~jnp.all(done)

  def body(s):
    n, theta, grad, done, stop, hist, nom = s
    new, _, new_nom = learned_step(learner, params, stats["update"], problem, theta, grad, kp2d,
                                   conf, n, False, None, n, nom)
    new = jnp.where(done[:, None], theta, new)
    new_nom = jax.tree.map(lambda a, o: jnp.where(done.reshape((b,) + (1,) * (a.ndim - 1)), o, a),
                           new_nom, nom)
    new_grad, rec = grad_and_record(problem, new, kp2d, conf)
    prev_loss = hist[1][n]
    rel = jnp.abs(rec[1] - prev_loss) <= tol * prev_loss
    now = ~done & (n + 1 >= min_steps) & (rel | (rec[1] <= abs_tol))
    stop = jnp.where(now, n + 1, stop)
    hist = jax.tree.map(lambda h, r: h.at[n + 1].set(r), hist, rec)
    return n + 1, new, new_grad, done | now, stop, hist, new_nom

  init = (jnp.int32(0), theta0, grad0, jnp.zeros((b,), bool), jnp.full((b,), max_steps, jnp.int32),
          hist, nominal_init(learner, theta0))
  n, theta, _, done, stop, hist, _ = jax.lax.while_loop(cond, body, init)
  # Steps after the loop ended repeat the final state.
  idx = jnp.minimum(jnp.arange(max_steps + 1), n)
  hist = jax.tree.map(lambda h: h[idx], hist)
  return Trajectory(*hist), StopRecord(stop, done, n)


def run_optimizer(problem: Problem, tx: optax.GradientTransformation, theta0: jnp.ndarray,
                  kp2d: jnp.ndarray, conf: jnp.ndarray, num_steps: int, unroll: int = 1):
  """A classical optimiser (an optax transformation on per-sample gradients) on the same objective.

  Every sample is optimised independently: the gradient of sample b only moves Θ_b, and optax's
  element-wise state (Adam's moments) is per sample.

  Returns:
    A :class:`Trajectory` over steps 0..M.
  """

  def step(carry, _):
    theta, state = carry
    grad, out = grad_and_record(problem, theta, kp2d, conf)
    updates, state = tx.update(grad, state, theta)
    return (optax.apply_updates(theta, updates), state), out

  (theta, _), hist = jax.lax.scan(step, (theta0, tx.init(theta0)), None, length=num_steps,
                                  unroll=max(1, min(unroll, num_steps)))
  return finish_trajectory(problem, hist, theta, kp2d, conf)
