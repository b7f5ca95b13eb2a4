"""Learned gradient descent: Θ_{n+1} = Θ_n + s · N_w(∂L/∂Θ_n, Θ_n, x, c), unrolled with lax.scan.

A :class:`Learner` holds the static choices (networks, inputs, output scale, how the first guess is
made); :func:`fit` runs it for a static number of steps on a batch and returns the whole
trajectory. Classical optimisers on the same objective (:func:`run_optimizer`) return the same
:class:`Trajectory`, so every method is evaluated and plotted alike.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lgd_jax import objective
from lgd_jax.body.model import NUM_POSE
from lgd_jax.objective import Problem

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
  """

  update_net: nn.Module = flax.struct.field(pytree_node=False)
  init_net: nn.Module | None = flax.struct.field(pytree_node=False, default=None)
  features: Sequence[str] = flax.struct.field(pytree_node=False, default=("kp2d", "conf", "theta",
                                                                          "grad"))
  output_scale: float = flax.struct.field(pytree_node=False, default=1.0)
  stop_gradient: bool = flax.struct.field(pytree_node=False, default=True)
  grad_scale: float = flax.struct.field(pytree_node=False, default=1.0)
  unroll: int = flax.struct.field(pytree_node=False, default=1)

  def init(self, rng, problem: Problem, batch: int = 2):
    """Network variables {"params", "batch_stats"} for ``problem``."""
    k = problem.num_keypoints
    r_upd, r_init = jax.random.split(rng)
    kp2d = jnp.zeros((batch, k, 2))
    conf = jnp.ones((batch, k))
    theta = jnp.zeros((batch, problem.num_params))
    feats = _features(self, kp2d, conf, theta, theta)
    upd = self.update_net.init({"params": r_upd, "dropout": r_upd}, feats, train=False)
    params = {"update": upd["params"]}
    stats = {"update": upd.get("batch_stats", {})}
    if self.init_net is not None:
      ini = self.init_net.init({"params": r_init, "dropout": r_init}, kp2d.reshape(batch, -1),
                               train=False)
      params["init"] = ini["params"]
      stats["init"] = ini.get("batch_stats", {})
    return {"params": params, "batch_stats": stats}


def _features(learner: Learner, kp2d, conf, theta, grad):
  b = theta.shape[0]
  parts = {"kp2d": lambda: kp2d.reshape(b, -1), "conf": lambda: conf,
           "theta": lambda: theta, "pose": lambda: theta[:, :NUM_POSE],
           "grad": lambda: grad * learner.grad_scale,
           "grad_pose": lambda: grad[:, :NUM_POSE] * learner.grad_scale}
  return jnp.concatenate([parts[name]() for name in learner.features], -1)


def _apply(net, params, stats, x, train, rng):
  variables = {"params": params, "batch_stats": stats}
  if not train:
    return net.apply(variables, x, train=False), stats
  out, updated = net.apply(variables, x, train=True, rngs={"dropout": rng},
                           mutable=["batch_stats"])
  return out, updated["batch_stats"]


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


def _evaluate(problem, theta, kp2d, conf):
  """The gradient at Θ_n and the trajectory entry of step n (theta, loss, |grad|, kp3d, kp2d)."""
  loss, (kp3d, pred2d), grad = objective.value_and_grad(problem, theta, kp2d, conf)
  return grad, (theta, loss, jnp.linalg.norm(grad, axis=-1), kp3d, pred2d)


def _trajectory(problem, hist, theta, kp2d, conf) -> Trajectory:
  """The scanned steps 0..M-1 followed by the final state M."""
  _, last = _evaluate(problem, theta, kp2d, conf)
  return Trajectory(*jax.tree.map(lambda h, l: jnp.concatenate([h, l[None]], 0), hist, last))


def fit(learner: Learner, variables, problem: Problem, kp2d: jnp.ndarray, conf: jnp.ndarray,
        num_steps: int, train: bool = False, rng=None, theta0: jnp.ndarray | None = None):
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

  Returns:
    (:class:`Trajectory` over steps 0..M, updated batch_stats).
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  r_init, r_steps = jax.random.split(rng)
  stats = variables["batch_stats"]
  if theta0 is None:
    theta0, stats = initial_guess(learner, variables, problem, kp2d, conf, train, r_init)
  params = variables["params"]["update"]

  def step(carry, i):
    theta, upd_stats = carry
    grad, out = _evaluate(problem, theta, kp2d, conf)
    g = jax.lax.stop_gradient(grad) if learner.stop_gradient else grad
    feats = _features(learner, kp2d, conf, theta, g)
    delta, upd_stats = _apply(learner.update_net, params, upd_stats, feats, train,
                              jax.random.fold_in(r_steps, i))
    return (theta + learner.output_scale * delta, upd_stats), out

  (theta, upd_stats), hist = jax.lax.scan(step, (theta0, stats["update"]), jnp.arange(num_steps),
                                          unroll=max(1, min(learner.unroll, num_steps)))
  return _trajectory(problem, hist, theta, kp2d, conf), {**stats, "update": upd_stats}


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
    grad, out = _evaluate(problem, theta, kp2d, conf)
    updates, state = tx.update(grad, state, theta)
    return (optax.apply_updates(theta, updates), state), out

  (theta, _), hist = jax.lax.scan(step, (theta0, tx.init(theta0)), None, length=num_steps,
                                  unroll=max(1, min(unroll, num_steps)))
  return _trajectory(problem, hist, theta, kp2d, conf)
