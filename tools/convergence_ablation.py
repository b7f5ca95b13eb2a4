"""The convergence ablation: every variant of ``configs/ablation.py`` trained with the same budget
and iterated 100 times on the same held-out samples, from the zero pose and from one learned step.

    python tools/convergence_ablation.py --variants published,robust,late --workdir runs/ablation
    python tools/convergence_ablation.py --table docs/convergence_ablation.md \
        --workdir runs/ablation

Each variant trains in ``WORKDIR/<name>`` (a finished run is not retrained; an interrupted one
resumes) and its learned curves are written to ``WORKDIR/<name>/ablation.json``: PA-MPJPE at
10 / 20 / 50 / 100 iterations, the 2D error (the objective) at 10 and 100 and the true gradient
norm at 100, for both starts, with the training wall time and the machine. ``--classical`` adds
the classical methods (GD, GD + line search, Adam, SMPLify-style; tuned as in the convergence
analysis) on the variant's objective. ``--table`` gathers every ``ablation.json`` into one
Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

from lgd_jax.eval import restore
from lgd_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

PA_ITERS = (10, 20, 50, 100)


def _ablation_module():
  spec = importlib.util.spec_from_file_location("ablation_config",
                                                os.path.join(ROOT, "configs", "ablation.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def machine() -> str:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return (f"{cpu}, {os.cpu_count()} cores, {jax.devices()[0].platform}; jax {jax.__version__}")


def train(name: str, workdir: str, config) -> float | None:
  """Trains (or resumes) a variant; the wall time of a complete run from scratch, else None."""
  from lgd_jax import checkpoints
  total = int(config.steps_per_epoch) * int(config.num_epochs)
  try:
    _, step = checkpoints.locate(workdir)
  except checkpoints.CheckpointError:
    step = 0
  if step >= total:
    return None
  t0 = time.perf_counter()
  loop.train_and_evaluate(config, workdir, show_progress=False)
  return time.perf_counter() - t0 if step == 0 else None


def evaluate(name: str, workdir: str, classical: bool, num_iters: int = 100) -> dict:
  from lgd_jax.eval import convergence
  restored = restore.restore(workdir)
  methods = ("lgd", "gd", "gd_ls", "adam", "smplify") if classical else ("lgd",)
  summary = convergence.run(restored, os.path.join(workdir, "convergence"), num_iters=num_iters,
                            methods=methods, write_files=classical, overwrite=True,
                            log=lambda m: print(m, file=sys.stderr))
  rows = {}
  for start, per_method in summary["curves"].items():
    rows[start] = {}
    for method, c in per_method.items():
      rows[start][method] = {
          **{f"pa@{i}": c["pa_mpjpe_mm"][i] for i in PA_ITERS if i <= num_iters},
          "2d@10": c["reproj"][10], f"2d@{num_iters}": c["reproj"][num_iters],
          f"grad@{num_iters}": c["grad_norm"][num_iters]}
  return {"variant": name, "objective": restored.config.objective_loss, "rows": rows,
          "num_samples": summary["num_samples"], "num_iters": num_iters}


def table(workdir: str, names) -> str:
  variants = _ablation_module().VARIANTS
  head = ("| variant | what | start | PA@10 | PA@20 | PA@50 | PA@100 | PA@100 / PA@10 | 2D@10 | "
          "2D@100 | grad@100 | train (s) |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  meta = None
  for name in names:
    path = os.path.join(workdir, name, "ablation.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      res = json.load(f)
    meta = meta or res
    for start in ("zero", "one_step"):
      r = res["rows"][start]["lgd"]
      what = variants.get(name.partition("@s")[0], ("", {}))[0]
      if "@s" in name:
        what = f"seed {name.partition('@s')[2]}"
      lines.append(
          f"| {name} | {what if start == 'zero' else ''} | {start.replace('_', ' ')} | "
          + " | ".join(f"{r[f'pa@{i}']:.1f}" for i in PA_ITERS)
          + f" | {r['pa@100'] / r['pa@10']:.2f} | {r['2d@10']:.4f} | {r['2d@100']:.4f} | "
          f"{r['grad@100']:.2e} | {res.get('train_s') or '-'} |")
  if meta:
    lines += ["", f"{meta['num_samples']} held-out synthetic samples, {meta['num_iters']} "
              f"iterations of the learned update; PA-MPJPE in mm on the 24 joints; 2D = the "
              f"variant's own objective (not comparable across objectives); grad = ||∂L/∂Θ||. "
              f"Machine: {meta.get('machine', '?')}."]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variants", default=None, help="comma-separated names (default: all)")
  p.add_argument("--workdir", default="runs/ablation")
  p.add_argument("--classical", action="store_true", help="also the classical methods")
  p.add_argument("--table", default=None, help="write the Markdown table here and stop")
  args = p.parse_args(argv)
  from lgd_jax.commands import cli
  cli.quiet_logs()
  mod = _ablation_module()
  names = args.variants.split(",") if args.variants else list(mod.VARIANTS)
  if args.table:
    text = table(args.workdir, names)
    with open(args.table, "w") as f:
      f.write(text + "\n")
    print(text)
    return 0
  for name in names:
    config = mod.get_config(name)
    wd = os.path.join(args.workdir, name)
    print(f"== {name}: {mod.VARIANTS[name.partition('@s')[0]][0]}", file=sys.stderr, flush=True)
    seconds = train(name, wd, config)
    res = evaluate(name, wd, args.classical)
    res["machine"] = machine()
    out = os.path.join(wd, "ablation.json")
    if seconds is None and os.path.exists(out):
      with open(out) as f:
        res["train_s"] = json.load(f).get("train_s")
    else:
      res["train_s"] = None if seconds is None else round(seconds)
    with open(out, "w") as f:
      json.dump(res, f, indent=1)
    z, o = res["rows"]["zero"]["lgd"], res["rows"]["one_step"]["lgd"]
    print(f"{name}: zero PA@10 {z['pa@10']:.1f} @100 {z['pa@100']:.1f} 2D {z['2d@10']:.4f} -> "
          f"{z['2d@100']:.4f} grad {z['grad@100']:.2e} | one-step PA@10 {o['pa@10']:.1f} "
          f"@100 {o['pa@100']:.1f} | train {res['train_s']} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
