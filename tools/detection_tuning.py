"""Where the detection fit's error comes from, and the refinement constants that lower it.

    python tools/detection_tuning.py --seeds 0,1,2,3,4 --out docs/detection_tuning.md

Experiments on :mod:`detection_benchmark`'s rendered frames (48 people a seed, the packaged
model unless ``--ckpt``):

* the noisy input taken apart: exact keypoints, then each corruption alone (3 px noise,
  U(0.3, 1) scores, 10 % of the joints missing) and all three, each fitted by the learned steps
  alone and by the default pipeline;
* the refinement's prior weights, one at a time (:data:`SWEEPS`: the elbow/knee angle prior
  ``RefineWeights.angle`` and the GMM pose prior ``RefineWeights.pose``) over every seed's
  exact, noisy and swapped sets, the other constants at their defaults;
* the keypoints the refinement fits (:data:`KEYPOINT_SETTINGS`): the detections' own BODY_25
  joints (the default, feet included) or the checkpoint's COCO-18, on every input and on a
  swapped set whose legs are exchanged with their feet;
* the limb relabelling with the default constants: exchanged limbs found on the swapped sets,
  people relabelled on the exact and noisy ones.

Writes a markdown report (the tables, with the machine) and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detection_benchmark as db  # noqa: E402
from convergence_ablation import machine  # noqa: E402

PARTS = {
    "exact": dict(noise_px=0.0, conf_range=(1.0, 1.0), missing=0.0, swap=False),
    "3 px noise only": dict(noise_px=3.0, conf_range=(1.0, 1.0), missing=0.0, swap=False),
    "U(0.3, 1) scores only": dict(noise_px=0.0, conf_range=(0.3, 1.0), missing=0.0, swap=False),
    "10 % missing only": dict(noise_px=0.0, conf_range=(1.0, 1.0), missing=0.1, swap=False),
    "noisy (all three)": db.VARIANTS["noisy"],
}
SWEEPS = {"angle": (1e-4, 5e-4, 1e-3, 2e-3), "pose": (1e-4, 1e-3, 3e-3, 1e-2)}
KEYPOINT_SETTINGS = {"the detections' (BODY_25, default)": dict(),
                     "the checkpoint's (COCO-18)": dict(refine_keypoints="checkpoint")}
KEYPOINT_VARIANTS = dict(db.VARIANTS, **{"swapped, feet too": dict(
    db.VARIANTS["swapped"], swap_limbs=db.SWAP_LIMBS_WITH_FEET)})


def _slug(name: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in name)


def _run_named(ckpt, out: Path, num_people: int, seed: int, settings: dict,
               variants: dict) -> list[dict]:
  """:func:`detection_benchmark.run` on ``variants`` (display name -> make_frames arguments),
  the rows' inputs under their display names."""
  slugs = {_slug(k): k for k in variants}
  res = db.run(ckpt, str(out), num_people, seed, settings=settings, smplify=False,
               log=lambda *a: None, variants={k: variants[v] for k, v in slugs.items()})
  return [dict(r, input=slugs[r["input"]]) for r in res["rows"]]


def decomposition(ckpt, out: Path, num_people: int, seed: int) -> list[dict]:
  settings = {"learned (10 steps)": dict(refine_steps=0), "default": dict()}
  return _run_named(ckpt, out / f"parts_s{seed}", num_people, seed, settings, PARTS)


def _label(name: str, w: float) -> str:
  return f"{name} {w:g}"


def sweep(ckpt, out: Path, num_people: int, seed: int, name: str) -> list[dict]:
  """Every input fitted with each weight of ``SWEEPS[name]`` (the rest at their defaults)."""
  from lgd_jax.fitting import refine
  settings = {_label(name, w): dict(refine_weights=refine.DEFAULT_WEIGHTS._replace(**{name: w}))
              for w in SWEEPS[name]}
  return _run_named(ckpt, out / f"{name}_s{seed}", num_people, seed, settings, db.VARIANTS)


def keypoint_sets(ckpt, out: Path, num_people: int, seed: int) -> list[dict]:
  """Every input of :data:`KEYPOINT_VARIANTS` refined on each keypoint set."""
  return _run_named(ckpt, out / f"keypoints_s{seed}", num_people, seed, KEYPOINT_SETTINGS,
                    KEYPOINT_VARIANTS)


def relabelling(rows: list[dict]) -> dict:
  """Per input: (people relabelled, or on the swapped set exchanged limbs found, people). The
  labelling is chosen before the refinement, so every setting's row counts the same; the first
  one's are taken."""
  counts = {}
  for r in rows:
    if r["input"] not in counts:
      n = r["swaps_found"] if r["input"] == "swapped" else r["relabelled"]
      counts[r["input"]] = (n, r["num_fitted"])
  return counts


def _mean_table(head: str, rows: dict, results: dict, columns: list) -> list[str]:
  """A markdown table: a row per ``rows`` item (row label -> method), a PA-MPJPE column per
  (input, seed) of ``columns`` from ``results[seed]``'s rows, and their mean."""
  lines = [f"| {head} | " + " | ".join(f"{v}, seed {s}" for v, s in columns) + " | mean |",
           "|---|" + "---:|" * (len(columns) + 1)]
  for label, method in rows.items():
    vals = [next(r for r in results[s] if r["input"] == v and r["method"] == method)
            ["pa_mpjpe_mm"] for v, s in columns]
    lines.append(f"| {label} | " + " | ".join(f"{x:.1f}" for x in vals)
                 + f" | {sum(vals) / len(vals):.1f} |")
  return lines


def report(parts: dict, sweeps: dict, relabels: dict, seeds, num_people: int,
           wall_s: float, keypoints: dict | None = None) -> str:
  lines = [
      "# Detection fitting: where the error comes from, the refinement's keypoints and prior "
      "weights",
      "",
      f"`python tools/detection_tuning.py --seeds {','.join(map(str, seeds))}` "
      f"({num_people} people a seed; {machine()}; {wall_s / 60:.1f} min). PA-MPJPE (mm) on the "
      "24 SMPL joints, "
      "median re-projection (px).",
      "",
      "## The noisy input taken apart",
      "",
      "| input | " + " | ".join(f"learned, seed {s} | default, seed {s}" for s in seeds) + " |",
      "|---|" + "---:|---:|" * len(seeds),
  ]
  for name in PARTS:
    cells = []
    for s in seeds:
      for method in ("learned (10 steps)", "default"):
        r = next(r for r in parts[s] if r["input"] == name and r["method"] == method)
        cells.append(f"{r['pa_mpjpe_mm']:.1f}, {r['median_reproj_px']:.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  if keypoints:
    lines += ["", "## The keypoints the refinement fits (PA-MPJPE, mm)", ""]
    lines += _mean_table("keypoints", {m: m for m in KEYPOINT_SETTINGS}, keypoints,
                         [(v, s) for v in KEYPOINT_VARIANTS for s in seeds])
  for name, weights in SWEEPS.items():
    lines += ["", f"## The refinement's {name}-prior weight (the others at their defaults)", ""]
    lines += _mean_table("weight", {f"{w:g}": _label(name, w) for w in weights}, sweeps[name],
                         [(v, s) for s in seeds for v in db.VARIANTS])
  lines += ["", "## The limb relabelling (default constants)", "",
            "| seed | exchanged limbs found (swapped) | relabelled, exact | relabelled, noisy |",
            "|---|---:|---:|---:|"]
  for s in seeds:
    c = relabels[s]
    lines.append(f"| {s} | {c['swapped'][0]} of {c['swapped'][1]} | {c['exact'][0]} of "
                 f"{c['exact'][1]} | {c['noisy'][0]} of {c['noisy'][1]} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ckpt", default=None, help="checkpoint (default: the packaged model)")
  p.add_argument("--seeds", default="0,1,2,3,4")
  p.add_argument("--num-people", type=int, default=48)
  p.add_argument("--work-dir", default="runs/detection_tuning")
  p.add_argument("--out", default=None, help="write the markdown report here")
  args = p.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  t0 = time.perf_counter()
  work = Path(args.work_dir)
  parts, sweeps, relabels, keypoints = {}, {name: {} for name in SWEEPS}, {}, {}
  for s in seeds:
    print(f"seed {s}: the noisy input taken apart ...", flush=True)
    parts[s] = decomposition(args.ckpt, work, args.num_people, s)
    print(f"seed {s}: the refinement's keypoints ...", flush=True)
    keypoints[s] = keypoint_sets(args.ckpt, work, args.num_people, s)
    for name in SWEEPS:
      print(f"seed {s}: the {name} prior's weight ...", flush=True)
      sweeps[name][s] = sweep(args.ckpt, work, args.num_people, s, name)
    relabels[s] = relabelling(sweeps[next(iter(SWEEPS))][s])
  text = report(parts, sweeps, relabels, seeds, args.num_people, time.perf_counter() - t0,
                keypoints)
  if args.out:
    Path(args.out).write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
