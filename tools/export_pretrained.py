"""Exports a training checkpoint as the packaged pretrained model (``lgd_jax/pretrained``).

    python tools/export_pretrained.py --ckpt runs/pretrained --out lgd_jax/pretrained/lgd_free.npz

Keeps the network variables (not the optimiser state or the training buffer), the config and a
record of how the checkpoint was made: the training command, its steps, its metrics' last
validation line and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from lgd_jax.eval import restore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ckpt", required=True)
  p.add_argument("--out", default=os.path.join(ROOT, "lgd_jax", "pretrained", "lgd_free.npz"))
  p.add_argument("--command", default="python train.py --config configs/pretrained.py "
                                      "--workdir runs/pretrained")
  p.add_argument("--note", default="", help="how long it trained and on what (free text)")
  args = p.parse_args(argv)
  import jax

  from lgd_jax import parallel, pretrained
  r = restore.restore(args.ckpt)
  variables = jax.tree.map(lambda a: parallel.to_host(a), r.variables)
  workdir = args.ckpt if os.path.isdir(os.path.join(args.ckpt, "checkpoints")) else None
  last_val = None
  if workdir and os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.readlines()
    for line in lines:
      rec = json.loads(line)
      if "val_pa_mpjpe_mm" in rec:
        last_val = {k: v for k, v in rec.items() if k.startswith("val_") or k == "step"}
  meta = {"step": r.step, "command": args.command, "note": args.note, "validation": last_val,
          "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
          "jax": jax.__version__}
  out = pretrained.export(r.config, variables, args.out, meta)
  print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB) from {r.path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
