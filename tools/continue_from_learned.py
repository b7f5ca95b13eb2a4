"""Where a learned fit's neighbourhood leads: from the learned update's state after K iterations,
continue with the learned update itself, and with gradient descent, Adam and the line search on
the same objective, to iteration 100, on the convergence analysis's held-out samples.

    python tools/continue_from_learned.py --ckpt runs/demo [--from-iter 10] [--json out.json]

The question it answers (docs/convergence_ablation.md): when the learned update drifts past its
training window, is the objective's nearby stationary point worse in 3D (then the drift is the
price of fitting 2D), or better (then the learned update, not the objective, walks away)? Every
classical continuation runs for 100 - K iterations from the same Θ_K, with several step sizes;
the table gives PA-MPJPE (mm, 24 joints) at K and 100, the objective (2D) and the true gradient
norm at 100.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import optax

from lgd_jax.data import augment
from lgd_jax.eval import convergence, heldout, restore
from lgd_jax.fitting import lgd, linesearch, scoring

GD_STEPS = (0.3, 1.0, 3.0)
ADAM_RATES = (0.001, 0.003, 0.01, 0.03)
LS_FIRST_STEPS = (1.0, 10.0)
NUM_ITERS = 100


def _row(problem, traj, gt, label, first):
  c = jax.device_get(scoring.trajectory_metrics(problem, traj, gt))
  g = np.asarray(traj.grad_norm.mean(-1))
  return {"method": label, f"pa@{first}": float(c["pa_mpjpe_mm"][0]),
          "pa@100": float(c["pa_mpjpe_mm"][-1]), "2d@100": float(c["reproj"][-1]),
          "grad@100": float(g[-1])}


def run(ckpt: str, first: int = 10, num_samples: int = 256) -> list[dict]:
  r = restore.restore(ckpt)
  _, source = heldout.held_out_source(r.config, None)
  held, _ = convergence._held_out_batches(r, source, num_samples, num_samples,
                                          augment.DetectorSettings())
  b, p = held[0], r.problem
  full, _ = lgd.fit(r.learner, r.variables, p, b.kp2d, b.conf, NUM_ITERS)
  learned = jax.tree.map(lambda a: a[first:], full)
  rows = [_row(p, learned, b.theta, "learned update (continued)", first)]
  theta, m = full.theta[first], NUM_ITERS - first
  for s in GD_STEPS:
    rows.append(_row(p, lgd.run_optimizer(p, optax.sgd(s), theta, b.kp2d, b.conf, m), b.theta,
                     f"gradient descent, step {s:g}", first))
  for lr in ADAM_RATES:
    rows.append(_row(p, lgd.run_optimizer(p, optax.adam(lr), theta, b.kp2d, b.conf, m),
                     b.theta, f"Adam, rate {lr:g}", first))
  for s in LS_FIRST_STEPS:
    traj, _ = linesearch.gd_line_search(p, theta, b.kp2d, b.conf, m, init_step=s)
    rows.append(_row(p, traj, b.theta, f"GD + line search, first step {s:g}", first))
  return rows


def table(rows: list[dict], first: int) -> str:
  lines = [f"| from Θ_{first}, continued by | PA@{first} | PA@100 | 2D@100 | grad@100 |",
           "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r[f'pa@{first}']:.1f} | {r['pa@100']:.1f} | "
                 f"{r['2d@100']:.4f} | {r['grad@100']:.4f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--ckpt", required=True)
  ap.add_argument("--from-iter", type=int, default=10)
  ap.add_argument("--num-samples", type=int, default=256)
  ap.add_argument("--json", default=None)
  args = ap.parse_args(argv)
  from lgd_jax.commands import cli
  cli.quiet_logs()
  rows = run(args.ckpt, args.from_iter, args.num_samples)
  print(table(rows, args.from_iter))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"checkpoint": args.ckpt, "from_iter": args.from_iter, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
