#!/usr/bin/env python
"""What dropout's masks cost in the paper train step: ``model.dropout_impl`` "hash" against
"threefry" (Flax's ``nn.Dropout``), side by side in one run.

    python benchmarks/bench_dropout.py [--batch 1024] [--steps 10] [--json out.json]

Times, interleaved (``bench_body_model.measure``) so that background load hits both alike:

  net      the paper network's forward + backward in train mode on one batch of features
           (one of the N applications of a train step);
  train    the whole paper train step (configs/paper.py on a random full-size SMPL-layout model,
           synthetic poses), as ``benchmarks/bench_train.py`` times it;
  dropout  the masks alone: drawing a (batch, 1024) keep mask and applying it, forward only.

and reports each impl's median ms and the ratio threefry / hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench_body_model import machine_info, measure  # noqa: E402
from bench_train import JaxSide, load_config, write_model_file  # noqa: E402

from lgd_jax.fitting import (
  lgd,  # noqa: E402
  networks,  # noqa: E402
)

IMPLS = ("threefry", "hash")


def net_fn(jside: JaxSide):
  b = jside.batch
  theta = jnp.zeros_like(b.theta)
  feats = lgd._features(jside.learner, b.kp2d, b.conf, theta, theta)
  net = jside.learner.update_net
  params = jside.state.params["update"]
  stats = jside.state.batch_stats["update"]

  def loss(params, x, key):
    out, _ = net.apply({"params": params, "batch_stats": stats}, x, train=True,
                       rngs={"dropout": key}, mutable=["batch_stats"])
    return jnp.sum(out * out)

  vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  key = jax.random.PRNGKey(0)
  return lambda: jax.block_until_ready(vg(params, feats, key))


def mask_fn(impl: str, batch: int):
  layer = networks.dropout(0.2, False, impl)
  x = jnp.ones((batch, 1024), jnp.float32)
  f = jax.jit(lambda x, key: layer.apply({}, x, rngs={"dropout": key}))
  key = jax.random.PRNGKey(0)
  return lambda: jax.block_until_ready(f(x, key))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--budget-s", type=float, default=20.0)
  parser.add_argument("--json", type=Path, default=None)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    model_path = write_model_file(Path(tmp))
    sides = {}
    for impl in IMPLS:
      c = load_config("paper", model_path, args.batch, args.steps)
      c.model.dropout_impl = impl
      sides[impl] = JaxSide(c)
      sides[impl].compile_train()
    results = {"machine": machine_info(os.cpu_count() or 1), "batch": args.batch,
               "steps": args.steps}
    for what, make in (("dropout", lambda impl: mask_fn(impl, args.batch)),
                       ("net", lambda impl: net_fn(sides[impl])),
                       ("train", lambda impl: sides[impl].train)):
      t = measure({impl: make(impl) for impl in IMPLS}, 5, 0.2, args.budget_s)
      row = {impl: t[impl]["median_s"] * 1e3 for impl in IMPLS}
      row["threefry_over_hash"] = row["threefry"] / row["hash"]
      results[what] = row
      print(f"{what:8s} threefry {row['threefry']:9.1f} ms   hash {row['hash']:9.1f} ms   "
            f"ratio {row['threefry_over_hash']:.2f}", flush=True)
  if args.json:
    args.json.write_text(json.dumps(results, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
