#!/usr/bin/env python
"""What the paper train step keeps for its backward: ``model.remat`` "none", "dots" and "full"
side by side in one run (and, with ``--unroll``, the scan's unroll factor).

    python benchmarks/bench_remat.py [--batch 1024] [--steps 10] [--variants none,dots,full]
                                     [--json out.json]

For each variant, on configs/paper.py with a random full-size SMPL-layout model and synthetic
poses, as ``benchmarks/bench_train.py`` sets it up:

  compile   seconds of ``lower`` + ``compile`` of the train step;
  temp MB   XLA's ``memory_analysis().temp_size_in_bytes`` of the compiled step: the buffers the
            program allocates besides its arguments and outputs (what remat shrinks);
  peak MB   a child process's peak resident memory during steady steps (bench_train's probe);
  ms        the median train step, variants timed interleaved (``bench_body_model.measure``) so
            that background load hits all alike.

Every variant computes the same step (the tests check that remat leaves the loss and gradient
unchanged, and that the fused BatchNorm-PReLU-dropout tail is the three layers); only memory and
time differ. ``--variants dots,dots+unfused`` compares the fused tail with autodiff's chain.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
from bench_body_model import machine_info, measure  # noqa: E402
from bench_train import JaxSide, load_config, probe_memory, write_model_file  # noqa: E402

from lgd_jax.fitting import lgd, networks  # noqa: E402

UNFUSED = "+unfused"  # variant suffix: autodiff's chain of BatchNorm, PReLU and dropout


def _parse(variant: str) -> tuple[str, str, bool]:
  """"dots@2+unfused" -> ("dots", "2", False): remat, unroll, fused tail."""
  fused = not variant.endswith(UNFUSED)
  remat, _, unroll = variant.removesuffix(UNFUSED).partition("@")
  return remat, unroll, fused


def variant_config(model_path, batch, steps, variant: str):
  c = load_config("paper", model_path, batch, steps)
  remat, unroll, _ = _parse(variant)
  c.model.remat = remat
  if unroll:
    c.model.unroll = int(unroll)
  return c


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--variants", default=",".join(lgd.REMATS),
                 help="remat values, each optionally with @unroll (e.g. dots@2) and "
                      f"{UNFUSED} (the network's BatchNorm-PReLU-dropout tail as autodiff's "
                      "chain of the three layers instead of networks.bn_prelu_dropout)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--budget-s", type=float, default=15.0)
  p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--json", type=Path, default=None)
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  for v in variants:
    if _parse(v)[0] not in lgd.REMATS:
      p.error(f"--variants: {v!r}: expected one of {lgd.REMATS}, optionally @unroll and "
              f"{UNFUSED}")
  machine = machine_info(None)
  print(f"machine: {machine['cpu']}, {machine['cores']} cores; jax {machine['jax']} "
        f"{machine['jax_devices']}; paper train step, batch {args.batch}, N = {args.steps}")
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    model_path = write_model_file(Path(tmp))
    sides = {}
    for v in variants:
      networks.FUSED_TAIL = _parse(v)[2]
      jax.clear_caches()  # the tail is chosen at trace time
      side = JaxSide(variant_config(model_path, args.batch, args.steps, v))
      side.compile_train()
      mem = side._compiled.memory_analysis()
      temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
      rows[v] = {"compile_s": side.compile_s,
                 "temp_mb": None if temp is None else temp / 2 ** 20}
      print(f"  {v}: compiled in {side.compile_s:.1f} s, temp "
            f"{rows[v]['temp_mb'] or float('nan'):.0f} MB", flush=True)
      sides[v] = side
    timings = measure({v: s.train for v, s in sides.items()}, args.repeats, 0.2, args.budget_s)
    for v, st in timings.items():
      rows[v]["median_ms"] = st["median_s"] * 1e3
      rows[v]["spread_ms"] = st["spread_s"] * 1e3
    del sides
    if args.memory:
      for v in variants:
        remat, unroll, fused = _parse(v)
        spec = {"framework": "jax", "workload": "paper", "batch": args.batch, "fused_tail": fused,
                "steps": args.steps, "model": str(model_path), "threads": 1,  # unused by JAX
                "model_overrides": {"remat": remat, **({"unroll": int(unroll)} if unroll else {})}}
        res = probe_memory(spec, timeout_s=900)
        rows[v]["peak_mem_mb"] = res.get("peak_mem_mb")
        rows[v]["step_mem_mb"] = res.get("step_mem_mb")
        if "error" in res:
          print(f"  memory probe {v}: {res['error']}")
  print()
  print("| remat | median ms | IQR ms | compile s | XLA temp MB | peak MB | above setup MB |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
  for v, r in rows.items():
    print(f"| {v} | {r['median_ms']:.0f} | {r['spread_ms']:.0f} | {r['compile_s']:.1f} | "
          f"{fmt(r['temp_mb'], '.0f')} | {fmt(r.get('peak_mem_mb'), '.0f')} | "
          f"{fmt(r.get('step_mem_mb'), '.0f')} |")
  if args.json is not None:
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2,
                                    default=float) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
