"""A trained learner back from a checkpoint directory or the packaged pretrained file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgd_jax import build, checkpoints, parallel, train_state
from lgd_jax.fitting import lgd
from lgd_jax.fitting.objective import Problem


@dataclass
class Restored:
  config: ml_collections.ConfigDict
  problem: Problem
  learner: lgd.Learner
  variables: dict
  step: int
  path: str


def restore(ckpt: str | os.PathLike | None = None) -> Restored:
  """Rebuilds the body model, the problem and the learner from a checkpoint alone.

  ``ckpt``: a training workdir, one checkpoint's directory, or a pretrained ``.npz``; None (or
  "pretrained") is the packaged pretrained model (:mod:`lgd_jax.pretrained`).
  """
  from lgd_jax import pretrained
  if pretrained.is_pretrained(ckpt):
    return _restore_pretrained(ckpt)
  directory, step = checkpoints.locate(ckpt)
  config = checkpoints.read_config(directory, step)
  model = build.load_body_model(config)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  tx = build.make_optimizer(config, 1)
  template = train_state.new_state(config, learner, problem, tx)
  state = checkpoints.restore_verified(checkpoints.manager_at(directory), step, template)
  # Replicated over every device: evaluation, benchmarks and detection fitting split their
  # batches over the same mesh (parallel.shard_batch).
  mesh = parallel.make_mesh()
  variables = parallel.replicate({"params": state.params, "batch_stats": state.batch_stats}, mesh)
  problem = parallel.replicate(problem, mesh)
  return Restored(config, problem, learner, variables, step, str(directory / str(step)))


def _restore_pretrained(ckpt) -> Restored:
  from lgd_jax import pretrained
  config, flat_vars, meta, path = pretrained.load(ckpt)
  model = build.load_body_model(config)
  problem = build.problem_from_config(config, model)
  learner = build.make_learner(config, problem)
  template = learner.init(jax.random.PRNGKey(0), problem)
  loaded = {}

  def take(key_path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in key_path)
    node = flat_vars
    for part in name.split("/"):
      if not isinstance(node, dict) or part not in node:
        raise pretrained.PretrainedError(f"{path}: no variable {name!r} for its config's network")
      node = node[part]
    if np.shape(node) != np.shape(leaf):
      raise pretrained.PretrainedError(f"{path}: variable {name!r} has shape {np.shape(node)}, "
                                       f"expected {np.shape(leaf)}")
    loaded[name] = True
    return jnp.asarray(node, leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(take, template)
  mesh = parallel.make_mesh()
  variables = parallel.replicate(variables, mesh)
  problem = parallel.replicate(problem, mesh)
  return Restored(config, problem, learner, variables, int(meta.get("step", 0)), str(path))
