#!/usr/bin/env python
"""Throughput of the SMPL body model: lgd_jax (JAX, jitted) against smplx (PyTorch, eager).

    python benchmarks/bench_body_model.py [--batch 1024] [--repeats N] [--quick] [--json out.json]

Both frameworks load the same random full-size model file (6890 vertices, 10 betas, SMPL's keys,
from ``lgd_jax.body.synthetic_smpl_arrays``) and run the same float32 batch. Workloads:

  mesh       full forward (vertices and the 24 joints); smplx under ``torch.no_grad()``.
  mesh+grad  full forward, value and gradient w.r.t. pose and betas of the vertices' sum of squares.
  kp         "coco18" keypoints, value only; JAX's keypoint fast path, smplx's full forward and
             an index into its 45 joints (it has no keypoint-only path).
  kp+grad    "coco18" keypoints, value and gradient w.r.t. pose and betas of the squared error to
             a fixed target; ``jax.jit(jax.value_and_grad(...))`` against torch autograd.

Each workload is warmed up, then timed in ``--repeats`` repeats of ``n`` calls each (``n`` chosen
so that a repeat takes at least ``--min-repeat-s``; the repeats of a slow workload are capped by
``--budget-s``, never below 3), the repeats of JAX and smplx alternating so that background load
on a shared machine hits both alike. Reported: the median ms per call over the repeats; the
spread, as the interquartile range of the repeats' ms per call; batched calls per second from the
median (``per_s``; ``bodies_per_s`` multiplies it by the batch); and for JAX the compile time (the
first call less the median call). JAX calls end with ``jax.block_until_ready``.

Targets: the full mesh forward faster than smplx; coco18 keypoints with gradient at batch 1024 in
at most 15 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
  import lgd_jax  # noqa: F401
except ImportError:  # run from a checkout without installing
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

from lgd_jax import body

NUM_VERTS = 6890
NUM_BETAS = 10
KPSET = "coco18"
# Rows of smplx's 45 SMPL joints (24 skeleton joints, then vertex joints) in COCO-18 order.
SMPLX_COCO18 = [24, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28]
TARGET_BATCH = 1024
TARGET_KP_GRAD_MS = 15.0


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "?"


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def machine_info(threads: int) -> dict:
  cpu = None
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {
      "cpu": cpu or platform.processor() or platform.machine(),
      "cores": os.cpu_count(),
      "usable_cores": usable_cores(),
      "threads": threads,
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jax_devices": [str(d) for d in jax.devices()],
  }


class BackgroundCpu:
  """CPU time that other processes used since ``start()``, in cores (Linux ``/proc/stat``)."""

  def __init__(self):
    self.start()

  @staticmethod
  def _busy_s():
    try:
      with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

  def start(self):
    t = os.times()
    self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_s(), t.user + t.system

  def cores(self):
    """Mean number of cores busy with other processes; None where /proc/stat is unreadable."""
    busy = self._busy_s()
    if busy is None or self._busy0 is None:
      return None
    t = os.times()
    other = (busy - self._busy0) - (t.user + t.system - self._own0)
    return max(other, 0.0) / max(time.perf_counter() - self._t0, 1e-9)


def measure(fns: dict, repeats: int, min_repeat_s: float, budget_s: float) -> dict:
  """Times one workload in every framework, interleaving their repeats.

  Args:
    fns: framework -> a function making one blocking call.
    repeats: timed repeats per framework (fewer for slow calls, see ``budget_s``).
    min_repeat_s: each repeat runs ``n`` calls, ``n`` chosen to take at least this long.
    budget_s: seconds of timed repeats per framework; the repeat count is capped to fit, but is
      never below 3.

  Returns:
    framework -> per-call statistics in seconds. Repeats alternate between the frameworks, so
    that a change of background load on a shared machine hits all of them alike.
  """
  plan = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    fn()  # warm-up; for JAX this traces and compiles
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    estimate = time.perf_counter() - t0
    number = max(1, math.ceil(min_repeat_s / max(estimate, 1e-9)))
    reps = max(3, min(repeats, int(budget_s // (estimate * number))))
    plan[name] = (first, number, reps, [])
  for r in range(max(reps for _, _, reps, _ in plan.values())):
    for name, (_, number, reps, per_call) in plan.items():
      if r < reps:
        fn = fns[name]
        t0 = time.perf_counter()
        for _ in range(number):
          fn()
        per_call.append((time.perf_counter() - t0) / number)
  stats = {}
  for name, (first, number, reps, per_call) in plan.items():
    per_call = np.asarray(per_call)
    median = float(np.median(per_call))
    q25, q75 = np.percentile(per_call, [25, 75])
    stats[name] = {
        "median_s": median,
        "spread_s": float(q75 - q25),
        "min_s": float(per_call.min()),
        "max_s": float(per_call.max()),
        "repeats": reps,
        "number": number,
        "first_s": first,
    }
  return stats


def write_model_file(directory: Path) -> Path:
  arrays = body.synthetic_smpl_arrays(num_verts=NUM_VERTS, num_betas=NUM_BETAS, seed=0)
  arrays.pop("landmarks")  # the default SMPL landmark ids, the same as smplx's
  path = directory / "SMPL_NEUTRAL.npz"
  np.savez(path, **arrays)
  return path


def make_inputs(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  pose = rng.normal(0.0, 0.5, (batch, 72)).astype(np.float32)
  betas = rng.normal(0.0, 1.0, (batch, NUM_BETAS)).astype(np.float32)
  transl = rng.normal(0.0, 0.5, (batch, 3)).astype(np.float32)
  target = rng.normal(0.0, 0.5, (batch, len(SMPLX_COCO18), 3)).astype(np.float32)
  return pose, betas, transl, target


def jax_workloads(model_path: Path, inputs):
  model = body.load_model(model_path, num_betas=NUM_BETAS, dtype=jnp.float32)
  pose, betas, transl, target = (jnp.asarray(x) for x in inputs)

  @jax.jit
  def mesh(model, pose, betas, transl):
    out = body.forward(model, pose, betas, transl)
    return out.vertices, out.joints

  @jax.jit
  def kp(model, pose, betas, transl):
    return body.keypoints(model, pose, betas, transl, KPSET)

  def loss(pose, betas, model, transl, target):
    return jnp.sum(jnp.square(body.keypoints(model, pose, betas, transl, KPSET) - target))

  kp_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

  def mesh_loss(pose, betas, model, transl):
    return jnp.sum(jnp.square(body.forward(model, pose, betas, transl).vertices))

  mesh_grad = jax.jit(jax.value_and_grad(mesh_loss, argnums=(0, 1)))

  return {
      "mesh": lambda: jax.block_until_ready(mesh(model, pose, betas, transl)),
      "mesh+grad": lambda: jax.block_until_ready(mesh_grad(pose, betas, model, transl)),
      "kp": lambda: jax.block_until_ready(kp(model, pose, betas, transl)),
      "kp+grad": lambda: jax.block_until_ready(kp_grad(pose, betas, model, transl, target)),
  }


def torch_workloads(torch, smplx, arrays: dict, model_path: Path, inputs):
  from smplx.utils import Struct
  # smplx's SMPL class unpickles ``model_path`` itself; an .npz goes in through ``data_struct``.
  with contextlib.redirect_stdout(io.StringIO()):  # "WARNING: ... only 10 shape coefficients"
    model = smplx.SMPL(model_path=str(model_path), data_struct=Struct(**arrays),
                       num_betas=NUM_BETAS, dtype=torch.float32)
  model.eval()
  pose, betas, transl, target = (torch.from_numpy(x) for x in inputs)
  index = torch.tensor(SMPLX_COCO18)

  def run(pose, betas):
    return model(global_orient=pose[:, :3], body_pose=pose[:, 3:], betas=betas, transl=transl)

  def mesh():
    with torch.no_grad():
      out = run(pose, betas)
    return out.vertices, out.joints[:, :24]

  def kp():
    with torch.no_grad():
      return run(pose, betas).joints[:, index]

  def kp_grad():
    p = pose.detach().clone().requires_grad_(True)
    b = betas.detach().clone().requires_grad_(True)
    value = torch.sum(torch.square(run(p, b).joints[:, index] - target))
    grads = torch.autograd.grad(value, (p, b))
    return value.detach(), grads

  def mesh_grad():
    p = pose.detach().clone().requires_grad_(True)
    b = betas.detach().clone().requires_grad_(True)
    value = torch.sum(torch.square(run(p, b).vertices))
    return value.detach(), torch.autograd.grad(value, (p, b))

  return {"mesh": mesh, "mesh+grad": mesh_grad, "kp": kp, "kp+grad": kp_grad}


def check_agreement(jax_fns, torch_fns) -> list[str]:
  """Max |difference| between the frameworks on the benchmarked batch, as printable lines."""
  lines = []
  jv, jj = jax_fns["mesh"]()
  tv, tj = torch_fns["mesh"]()
  lines.append(f"mesh vertices max |dJAX-smplx| = {np.abs(np.asarray(jv) - tv.numpy()).max():.2e} m"
               f", joints {np.abs(np.asarray(jj) - tj.numpy()).max():.2e} m")
  jk = np.asarray(jax_fns["kp"]())
  tk = torch_fns["kp"]().numpy()
  lines.append(f"{KPSET} keypoints max |d| = {np.abs(jk - tk).max():.2e} m")
  jl, (jgp, jgb) = jax_fns["kp+grad"]()
  tl, (tgp, tgb) = torch_fns["kp+grad"]()
  rel = lambda a, b: np.abs(np.asarray(a) - b.numpy()).max() / max(np.abs(b.numpy()).max(), 1e-30)
  lines.append(f"{KPSET} loss rel. |d| = {abs(float(jl) - float(tl)) / abs(float(tl)):.2e}, "
               f"grad pose max rel. |d| = {rel(jgp, tgp):.2e}, grad betas {rel(jgb, tgb):.2e}")
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=TARGET_BATCH)
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed repeats per entry (default 10, 3 with --quick)")
  parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
  parser.add_argument("--min-repeat-s", type=float, default=None,
                      help="minimum seconds per repeat (default 0.2, 0.05 with --quick)")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="seconds of timed repeats per entry before capping the repeat count "
                           "(default 12, 4 with --quick); at least 3 repeats always run")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: the usable core count)")
  parser.add_argument("--no-torch", action="store_true", help="JAX only")
  parser.add_argument("--json", type=Path, default=None, help="write the results here")
  args = parser.parse_args(argv)
  repeats = args.repeats or (3 if args.quick else 10)
  min_repeat_s = args.min_repeat_s or (0.05 if args.quick else 0.2)
  budget_s = args.budget_s or (4.0 if args.quick else 12.0)

  torch = smplx = None
  if not args.no_torch:
    try:
      import smplx
      import torch
    except ImportError as e:
      print(f"note: {e}; timing JAX only (install the torch extra for the smplx comparison)")
  threads = args.threads or usable_cores()
  if torch is not None:
    torch.set_num_threads(threads)

  machine = machine_info(threads)
  if torch is not None:
    machine.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   smplx=_version("smplx"))
  idle_probe = BackgroundCpu()
  time.sleep(1.0)
  background_start = idle_probe.cores()
  machine["background_cores_before"] = background_start
  print(f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['platform']}")
  print(f"jax {machine['jax']} devices {machine['jax_devices']}"
        + (f"; torch {machine['torch']} threads {machine['torch_threads']}, "
           f"smplx {machine['smplx']}" if torch is not None else ""))
  print(f"model: random SMPL layout, {NUM_VERTS} vertices, {NUM_BETAS} betas, float32; "
        f"batch {args.batch}")
  if background_start is not None:
    print(f"other processes' CPU use before starting: {background_start:.2f} of "
          f"{machine['usable_cores']} cores")

  inputs = make_inputs(args.batch)
  with tempfile.TemporaryDirectory() as tmp:
    model_path = write_model_file(Path(tmp))
    with np.load(model_path) as f:
      arrays = dict(f)
    fns = {"jax": jax_workloads(model_path, inputs)}
    if torch is not None:
      fns["smplx"] = torch_workloads(torch, smplx, arrays, model_path, inputs)

  entries = []
  run_probe = BackgroundCpu()
  for workload in ("mesh", "mesh+grad", "kp", "kp+grad"):
    probe = BackgroundCpu()
    timings = measure({name: table[workload] for name, table in fns.items()}, repeats,
                      min_repeat_s, budget_s)
    for framework, stats in timings.items():
      entries.append({
          "framework": framework,
          "workload": {"mesh": "mesh", "mesh+grad": "mesh+grad", "kp": f"{KPSET}",
                       "kp+grad": f"{KPSET}+grad"}[workload],
          "batch": args.batch,
          "median_ms": stats["median_s"] * 1e3,
          "spread_ms": stats["spread_s"] * 1e3,
          "per_s": 1.0 / stats["median_s"],
          "bodies_per_s": args.batch / stats["median_s"],
          # JAX: the first call (trace, compile, run) less a steady call; smplx is eager.
          "compile_s": (max(stats["first_s"] - stats["median_s"], 0.0)
                        if framework == "jax" else None),
          "min_ms": stats["min_s"] * 1e3,
          "max_ms": stats["max_s"] * 1e3,
          "repeats": stats["repeats"],
          "calls_per_repeat": stats["number"],
          "background_cores": probe.cores(),
      })
      e = entries[-1]
      print(f"  timed {framework:5s} {e['workload']:11s} {e['median_ms']:10.2f} ms", flush=True)

  agreement = check_agreement(fns["jax"], fns["smplx"]) if "smplx" in fns else []
  background = run_probe.cores()
  machine["background_cores"] = background

  print()
  header = (f"{'framework':9s} {'workload':11s} {'batch':>5s} {'calls/s':>8s} {'bodies/s':>9s} "
            f"{'median ms':>10s} {'IQR ms':>8s} {'min ms':>9s} {'max ms':>9s} "
            f"{'reps x n':>9s} {'compile s':>9s}")
  print(header)
  print("-" * len(header))
  for e in entries:
    compile_s = "-" if e["compile_s"] is None else f"{e['compile_s']:.2f}"
    print(f"{e['framework']:9s} {e['workload']:11s} {e['batch']:5d} {e['per_s']:8.2f} "
          f"{e['bodies_per_s']:9.0f} {e['median_ms']:10.2f} {e['spread_ms']:8.2f} "
          f"{e['min_ms']:9.2f} {e['max_ms']:9.2f} "
          f"{e['repeats']:>3d} x {e['calls_per_repeat']:<3d} {compile_s:>9s}")
  print("(calls/s: batched forwards per second, 1000 / median ms; bodies/s: calls/s x batch; "
        "IQR: interquartile range of the repeats' ms per call)")
  if "smplx" in fns:
    by = {(e["framework"], e["workload"]): e for e in entries}
    print()
    for w in ("mesh", "mesh+grad", KPSET, f"{KPSET}+grad"):
      ratio = by["smplx", w]["median_ms"] / by["jax", w]["median_ms"]
      print(f"speed-up JAX/smplx {w:11s} {ratio:6.2f}x")
    print("agreement on this batch: " + "; ".join(agreement))

  print()
  by = {(e["framework"], e["workload"]): e for e in entries}
  if "smplx" in fns:
    jm, tm = by["jax", "mesh"]["median_ms"], by["smplx", "mesh"]["median_ms"]
    print(f"target full mesh faster than smplx: {'met' if jm < tm else 'missed'} "
          f"(JAX {jm:.1f} ms vs smplx {tm:.1f} ms per batch of {args.batch})")
  else:
    print("target full mesh faster than smplx: not measured (no torch/smplx)")
  kg = by["jax", f"{KPSET}+grad"]["median_ms"]
  if args.batch == TARGET_BATCH:
    print(f"target {KPSET} keypoints + gradient at batch {TARGET_BATCH} <= "
          f"{TARGET_KP_GRAD_MS:g} ms: {'met' if kg <= TARGET_KP_GRAD_MS else 'missed'} "
          f"(JAX median {kg:.2f} ms)")
  else:
    print(f"target {KPSET} keypoints + gradient: defined at batch {TARGET_BATCH}, not {args.batch} "
          f"(JAX median {kg:.2f} ms)")
  if background is not None:
    busy = background > 0.1 * machine["usable_cores"]
    print(f"{'warning: ' if busy else ''}other processes used {background:.2f} of "
          f"{machine['usable_cores']} cores on average while timing"
          + (" (per workload: " + ", ".join(
              f"{w} {by['jax', w]['background_cores']:.2f}"
              for w in ("mesh", KPSET, f"{KPSET}+grad")) + ")" if busy else "")
          + ("; the timings are pessimistic" if busy else ""))

  if args.json is not None:
    keep = ("framework", "workload", "batch", "median_ms", "spread_ms", "per_s", "bodies_per_s",
            "compile_s", "min_ms", "max_ms", "repeats", "calls_per_repeat", "background_cores")
    result = {"machine": machine, "agreement": agreement,
              "entries": [{k: e[k] for k in keep} for e in entries]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
