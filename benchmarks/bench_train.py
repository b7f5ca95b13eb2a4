#!/usr/bin/env python
"""The LGD training step and inference: lgd_jax (JAX, one jitted program) against its PyTorch twin.

    python benchmarks/bench_train.py [--json out.json] [--quick] [--no-sweep] [--no-memory]

Workloads, both on a full-size random SMPL-layout model (6890 vertices, 10 betas, written by
``lgd_jax.body.synthetic_smpl_arrays`` to a temporary .npz) with synthetic poses:

  paper     configs/paper.py: batch 1024, N = 10, 4 blocks of [Dense 1024, BatchNorm, PReLU,
            Dropout 0.2], coco18 keypoints, zero initial guess.
  official  configs/official.py: separate pose and shape residual heads, learned initial guess,
            N = 3, batch 512.

Frameworks:

  jax            ``lgd_jax.train.steps.train_step`` as ``train_and_evaluate`` runs it (batch
                 sampling and
                 augmentation inside the step), compiled ahead of time; inference is
                 ``lgd.fit(..., train=False)`` jitted, returning Θ_N.
  torch          benchmarks/torch_twin.py eager (same network, keypoint algorithm, objective,
                 stopped gradient, training loss, Adam; tested against JAX in
                 tests/test_torch_twin.py), on a batch made once by lgd_jax (so its data
                 generation is not timed: this favours PyTorch by the JAX ``make_batch`` time,
                 printed separately).
  torch_compile  the same with ``torch.compile`` on the networks and the objective (the step loop
                 and ``autograd.grad`` stay eager); a failure is caught and reported.
  torch_official the twin with the official code's body model path (smplx-style: every vertex
                 skinned and the joints regressed from the mesh at every step), official workload,
                 train step only, few repeats (skip with --no-official-ref).

Each entry is warmed up and timed in repeats that alternate between the frameworks
(``bench_body_model.measure``), so that background load on a shared machine hits all alike; the
other processes' CPU use is recorded per entry. Reported: median ms and interquartile spread,
samples/s, speed-up of JAX over each PyTorch variant, compile time (JAX: ``lower`` + ``compile``
of the step; torch.compile: first call less a steady call), peak memory, and MFU: FLOP/s over the
float32 matmul peak that the benchmark measures itself (best of a 2048^3 ``jnp.dot`` and
``torch.mm``). FLOPs are counted analytically from the network's matmuls (forward 2·B·Σ in·out per
application, training 3× that: forward, input and weight gradients; the body model, objective and
optimiser are not counted, so MFU is a lower bound); XLA's ``cost_analysis`` figure is recorded
too but counts a ``lax.scan`` body once, not N times.

Peak memory: each train entry is rerun in a child process (``--probe``) that reads its own
``VmHWM`` from /proc: ``peak_mem_mb`` is the process's peak resident memory during steady steps
(after a warm-up, the heap's freed pages returned to the system with glibc's ``malloc_trim`` in
every framework alike, as lgd_jax's training loop does after compiling its step, and the
high-water mark reset through /proc/self/clear_refs), including the libraries, model and
parameters; ``step_mem_mb`` is that less the resident memory after setup;
``first_call_mem_mb`` is the peak of the first call (JAX: compilation included). On a GPU JAX
reports ``memory_stats()['peak_bytes_in_use']`` as ``device_peak_mem_mb``.

The sweep (paper workload, JAX and torch eager) varies the batch at N = 10 and N at batch 256 and
plots samples/s to docs/bench_train_sweep.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:
  import lgd_jax  # noqa: F401
except ImportError:  # run from a checkout without installing
  sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import ml_collections
from bench_body_model import BackgroundCpu, _version, machine_info, measure, usable_cores

from lgd_jax import body, build, train_state
from lgd_jax.data import batches
from lgd_jax.fitting import lgd, networks
from lgd_jax.train import steps
from lgd_jax.train.loop import release_freed_memory

NUM_VERTS = 6890
NUM_BETAS = 10
WORKLOADS = ("paper", "official")
# The speed issue's targets (2-core CPU); the official-code factor is an earlier issue's.
TARGET_SPEEDUP_EAGER = 1.3
TARGET_SPEEDUP_COMPILE = 1.2
TARGET_MFU = 0.60
TARGET_INFER_MFU = 0.85
OFFICIAL_CODE_S_PER_STEP = 14.8  # the official code, batch 1024, N = 3, on the development CPU
OFFICIAL_CODE_BATCH = 1024
TARGET_OFFICIAL_FACTOR = 8.0
TARGET_INFER_STEPS = 10
TARGET_COMPILE_S = 30.0
PEAK_MATMUL_N = 2048
PEAK_REPEATS = 10  # best of: the peak is what the machine can do when nothing interferes
SWEEP_BATCHES = (64, 256, 1024)  # at N = 10
SWEEP_STEPS = (1, 3, 10)  # at batch 256
SWEEP_STEPS_BATCH = 256
DOCS = REPO / "docs"


# ----------------------------------------------------------------------------------------------
# Setup.


def write_model_file(directory: Path) -> Path:
  """A random full-size SMPL-layout model (SMPL's landmark ids) as an .npz the loader reads."""
  path = directory / "smpl_layout_6890.npz"
  body.save_npz(path, body.synthetic_smpl_arrays(num_verts=NUM_VERTS, num_betas=NUM_BETAS, seed=0))
  return path


def load_config(workload: str, model_path: Path, batch: int | None = None,
                num_steps: int | None = None) -> ml_collections.ConfigDict:
  """configs/<workload>.py on ``model_path`` and synthetic poses (requires_data off)."""
  spec = importlib.util.spec_from_file_location(f"_lgd_config_{workload}",
                                                REPO / "configs" / f"{workload}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.requires_data = False
  c.body_model = str(model_path)
  c.amass_dir = ""
  if batch:
    c.batch_size = int(batch)
  if num_steps:
    c.num_steps = int(num_steps)
  return c


@jax.jit
def _peak_dot(a, b):
  return a @ b


def matmul_peak(torch) -> dict:
  """Best-of float32 matmul FLOP/s of JAX and torch on this machine (2 n^3 per product)."""
  n = PEAK_MATMUL_N
  flops = 2.0 * n ** 3
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  jax.block_until_ready(_peak_dot(a, a))
  times = []
  for _ in range(PEAK_REPEATS):
    t0 = time.perf_counter()
    jax.block_until_ready(_peak_dot(a, a))
    times.append(time.perf_counter() - t0)
  out = {"jax_gflops": flops / min(times) / 1e9}
  if torch is not None:
    ta = torch.from_numpy(np.array(a))
    torch.mm(ta, ta)
    times = []
    for _ in range(PEAK_REPEATS):
      t0 = time.perf_counter()
      torch.mm(ta, ta)
      times.append(time.perf_counter() - t0)
    out["torch_gflops"] = flops / min(times) / 1e9
  out["peak_gflops"] = max(v for k, v in out.items() if k.endswith("_gflops"))
  out["n"] = n
  return out


class JaxSide:
  """The project's train step and inference for one config, compiled ahead of time."""

  def __init__(self, config, infer_batches=()):
    self.config = config
    model = build.load_body_model(config)
    self.problem = build.problem_from_config(config, model)
    self.learner = build.make_learner(config, self.problem)
    steps_per_epoch = int(config.steps_per_epoch)
    tx = build.make_optimizer(config, steps_per_epoch)
    self.state = train_state.init_state(self.learner, self.problem, tx, int(config.seed))
    self.initial_variables = jax.device_get({"params": self.state.params,
                                             "batch_stats": self.state.batch_stats})
    step_fn = steps.make_train_step(self.learner, config, steps_per_epoch)
    self.source = batches.PoseSource()
    self.key = jax.random.PRNGKey(0)
    self.calls = 0
    self.num_steps = int(config.num_steps)
    self.batch_size = int(config.batch_size)
    aug = ml_collections.FrozenConfigDict(config.augment)
    self._aug = aug
    self.batch = jax.block_until_ready(build._make_batch_jit(
        self.problem, self.source, jax.random.PRNGKey(1), n=self.batch_size, aug=aug))
    self._make_batch = lambda: jax.block_until_ready(build._make_batch_jit(
        self.problem, self.source, self.key, n=self.batch_size, aug=aug))
    self._compiled = None
    self._step_fn = step_fn
    self.compile_s = None
    self.xla_flops = None
    self._infer = {}

  def compile_train(self):
    settings = self._step_fn.keywords["settings"]
    t0 = time.perf_counter()
    lowered = steps.train_step.lower(self.state, self.problem, self.source, self.key,
                                        learner=self.learner, settings=settings)
    self._compiled = lowered.compile()
    self.compile_s = time.perf_counter() - t0
    try:
      cost = self._compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      self.xla_flops = float(cost.get("flops")) if cost and "flops" in cost else None
    except Exception:  # cost analysis is best effort
      self.xla_flops = None

  def train(self):
    self.calls += 1
    # The step folds its own step count into the key, as in train_and_evaluate.
    self.state, out = self._compiled(self.state, self.problem, self.source, self.key)
    return jax.block_until_ready(out["loss"])

  def infer_batch(self, batch_size: int):
    """A held-out batch of ``batch_size`` samples for inference (the train batch's first ones
    when it is large enough)."""
    if batch_size <= self.batch_size:
      return jax.tree.map(lambda x: x[:batch_size], self.batch)
    return jax.block_until_ready(build._make_batch_jit(
        self.problem, self.source, jax.random.PRNGKey(2), n=batch_size, aug=self._aug))

  def infer_fn(self, batch_size: int):
    """(compile_s, a blocking call) of the jitted N-step inference fit at ``batch_size``."""
    b = self.infer_batch(batch_size)
    kp2d, conf = b.kp2d, b.conf
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    t0 = time.perf_counter()
    compiled = _infer.lower(self.learner, variables, self.problem, kp2d, conf,
                            num_steps=self.num_steps).compile()
    compile_s = time.perf_counter() - t0
    return compile_s, lambda: jax.block_until_ready(compiled(variables, self.problem, kp2d, conf))


def _infer_impl(learner, variables, problem, kp2d, conf, num_steps):
  traj, _ = lgd.fit(learner, variables, problem, kp2d, conf, num_steps, train=False)
  return traj.theta[-1]


_infer = jax.jit(_infer_impl, static_argnames=("learner", "num_steps"))


class TorchSide:
  """The PyTorch twin of a :class:`JaxSide`, same initial weights and batch."""

  def __init__(self, torch, jside: JaxSide, compiled: bool = False, full_body: bool = False):
    import torch_twin
    self.torch = torch
    self.twin = torch_twin.TorchTwin.from_config(jside.config, jside.problem, full_body)
    self.twin.load_flax(jside.initial_variables)
    self.opt = torch.optim.Adam(self.twin.parameters(), lr=float(jside.config.learning_rate))
    self.batch = torch_twin.batch_from_jax(jside.batch)
    self.jside = jside
    self.num_steps = jside.num_steps
    if compiled:
      self.twin.compile_parts()

  def train(self):
    return float(self.twin.train_step(self.opt, self.batch, self.num_steps))

  def infer_fn(self, batch_size: int):
    import torch_twin
    b = torch_twin.batch_from_jax(self.jside.infer_batch(batch_size))
    kp2d, conf = b.kp2d, b.conf
    return lambda: self.twin.infer(kp2d, conf, self.num_steps)


def network_flops(twin, batch: int, num_steps: int, mode: str) -> float:
  """Analytic matmul FLOPs of the networks in one train step or one N-step inference."""
  from torch import nn
  macs = lambda net: sum(m.in_features * m.out_features for m in net.modules()
                         if isinstance(m, nn.Linear))
  forward = 2.0 * batch * (num_steps * macs(twin.update_net)
                           + (macs(twin.init_net) if twin.init_net is not None else 0))
  return 3.0 * forward if mode == "train" else forward


# ----------------------------------------------------------------------------------------------
# Memory probes (child processes).


def _proc_status_mb(field: str) -> float | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return None


def _reset_hwm() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def run_probe(spec: dict) -> dict:
  """In a child: set one entry up, run it, and report its memory (MB)."""
  torch = None
  if spec["framework"] != "jax":
    import torch
    torch.set_num_threads(spec["threads"])
  config = load_config(spec["workload"], Path(spec["model"]), spec["batch"], spec["steps"])
  for k, v in spec.get("model_overrides", {}).items():
    config.model[k] = v
  networks.FUSED_TAIL = spec.get("fused_tail", True)
  jside = JaxSide(config)
  if spec["framework"] == "jax":
    fn = jside.train
  else:
    side = TorchSide(torch, jside, compiled=spec["framework"] == "torch_compile",
                     full_body=spec["framework"] == "torch_official")
    fn = side.train
  base = _proc_status_mb("VmRSS")
  if spec["framework"] == "jax":
    jside.compile_train()
  fn()
  first = _proc_status_mb("VmHWM")
  fn()
  # Every framework alike: the heap's freed pages go back to the system before the steady steps
  # (lgd_jax's training loop does the same after compiling its step), so the peak counts what a
  # step holds, not what the allocator kept from the set-up or the compilation.
  trimmed = release_freed_memory()
  reset = _reset_hwm()
  base_steady = _proc_status_mb("VmRSS")
  fn()
  fn()
  steady = _proc_status_mb("VmHWM") if reset else None
  out = {"setup_rss_mb": base, "first_call_mem_mb": first, "peak_mem_mb": steady,
         "steady_rss_before_mb": base_steady, "heap_trimmed": trimmed,
         "step_mem_mb": None if steady is None or base is None else steady - base,
         "method": "VmHWM of a child process after warm-up (clear_refs reset)" if reset else
                   "VmHWM of a child process, first call included (clear_refs not writable)"}
  if not reset:
    out["peak_mem_mb"] = first
  try:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats and spec["framework"] == "jax":
      out["device_peak_mem_mb"] = stats["peak_bytes_in_use"] / 2 ** 20
  except Exception:
    pass
  return out


def probe_memory(spec: dict, timeout_s: float) -> dict:
  cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(spec)]
  try:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout_s:.0f} s"}
  lines = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")]
  if res.returncode != 0 or not lines:
    tail = (res.stderr.strip().splitlines() or ["?"])[-1]
    return {"error": f"exit {res.returncode}: {tail}"}
  return json.loads(lines[-1][len("PROBE "):])


# ----------------------------------------------------------------------------------------------
# Measuring.


def _entry(framework, workload, mode, batch, steps, stats, flops, peak, background, **extra):
  median = stats["median_s"]
  return {
      "framework": framework, "workload": workload, "mode": mode, "batch": batch,
      "steps": steps, "median_ms": median * 1e3, "spread_ms": stats["spread_s"] * 1e3,
      "min_ms": stats["min_s"] * 1e3, "max_ms": stats["max_s"] * 1e3,
      "repeats": stats["repeats"], "calls_per_repeat": stats["number"],
      "samples_per_s": batch / median,
      "flops": flops, "gflops_per_s": flops / median / 1e9,
      "mfu": flops / median / (peak["peak_gflops"] * 1e9),
      "peak_mem_mb": None, "compile_s": None, "background_cores": background, **extra,
  }


def _try_first_call(fn, label: str):
  """(first-call seconds, None) or (None, error line) for a call that may fail (torch.compile)."""
  t0 = time.perf_counter()
  try:
    fn()
  except Exception as e:  # torch.compile raises many types
    traceback.print_exc(limit=3, file=sys.stderr)
    return None, f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return time.perf_counter() - t0, None


def bench_workload(workload, model_path, torch, args, peak, log) -> tuple[list, list]:
  """Entries (train and inference, every framework) and notes of one workload."""
  entries, notes = [], []
  config = load_config(workload, model_path, args.batch_override, None)
  batch, steps = int(config.batch_size), int(config.num_steps)
  log(f"[{workload}] batch {batch}, N = {steps}: compiling the JAX train step ...")
  jside = JaxSide(config)
  jside.compile_train()
  log(f"[{workload}] JAX compile {jside.compile_s:.1f} s; XLA flops {jside.xla_flops}")
  fns, compile_s = {"jax": jside.train}, {"jax": jside.compile_s}
  sides = {}
  if torch is not None:
    sides["torch"] = TorchSide(torch, jside)
    fns["torch"] = sides["torch"].train
    if args.compile:
      sides["torch_compile"] = TorchSide(torch, jside, compiled=True)
      log(f"[{workload}] torch.compile: first call ...")
      first, err = _try_first_call(sides["torch_compile"].train, "torch.compile train step")
      if err:
        notes.append(err)
        del sides["torch_compile"]
      else:
        fns["torch_compile"] = sides["torch_compile"].train
        compile_s["torch_compile"] = first
  flops = network_flops(sides["torch"].twin if sides else None, batch, steps, "train") \
      if sides else float("nan")
  # JAX's data generation, inside its step (the torch entries reuse one pre-made batch).
  jside._make_batch()
  t0 = time.perf_counter()
  for _ in range(3):
    jside._make_batch()
  make_batch_ms = (time.perf_counter() - t0) / 3 * 1e3
  probe = BackgroundCpu()
  log(f"[{workload}] timing train steps: {', '.join(fns)} ...")
  timings = measure(fns, args.repeats, args.min_repeat_s, args.budget_s)
  bg = probe.cores()
  for fw, st in timings.items():
    c = compile_s.get(fw)
    if fw == "torch_compile" and c is not None:
      c = max(c - st["median_s"], 0.0)
    entries.append(_entry(fw, workload, "train", batch, steps, st, flops, peak, bg, compile_s=c,
                          xla_flops=jside.xla_flops if fw == "jax" else None,
                          make_batch_ms=make_batch_ms if fw == "jax" else None))
  # The official code's approach: every vertex skinned at every step (official workload only).
  if workload == "official" and torch is not None and args.official_ref:
    log(f"[{workload}] timing torch_official (full-mesh skinning) ...")
    ref = TorchSide(torch, jside, full_body=True)
    probe = BackgroundCpu()
    st = measure({"torch_official": ref.train}, 2, 0.0, 0.0)["torch_official"]
    entries.append(_entry("torch_official", workload, "train", batch, steps, st, flops, peak,
                          probe.cores()))
    sides["torch_official"] = ref
  # Inference.
  for ib in (args.infer_batch, 1):
    ifns, icompile = {}, {}
    c, ifns["jax"] = jside.infer_fn(ib)
    icompile["jax"] = c
    for fw in ("torch", "torch_compile"):
      if fw in sides:
        fn = sides[fw].infer_fn(ib)
        first, err = _try_first_call(fn, f"{fw} inference batch {ib}")
        if err:
          notes.append(err)
          continue
        ifns[fw], icompile[fw] = fn, first
    probe = BackgroundCpu()
    log(f"[{workload}] timing inference, batch {ib} ...")
    timings = measure(ifns, args.repeats, args.min_repeat_s, args.budget_s)
    bg = probe.cores()
    iflops = network_flops(sides["torch"].twin, ib, steps, "infer") if sides else float("nan")
    for fw, st in timings.items():
      c = icompile.get(fw)
      if fw == "torch_compile" and c is not None:
        c = max(c - st["median_s"], 0.0)
      elif fw == "torch":
        c = None
      entries.append(_entry(fw, workload, "infer", ib, steps, st, iflops, peak, bg, compile_s=c))
  return entries, notes


def sweep(model_path, torch, args, peak, log) -> list:
  points = [(b, 10) for b in SWEEP_BATCHES] + [(SWEEP_STEPS_BATCH, n) for n in SWEEP_STEPS
                                               if n != 10]
  out = []
  for b, n in points:
    config = load_config("paper", model_path, b, n)
    jside = JaxSide(config)
    jside.compile_train()
    fns = {"jax": jside.train}
    if torch is not None:
      fns["torch"] = TorchSide(torch, jside).train
    log(f"[sweep] batch {b}, N = {n} ...")
    probe = BackgroundCpu()
    timings = measure(fns, 3, 0.0, args.budget_s / 2)
    bg = probe.cores()
    flops = network_flops(TorchSide(torch, jside).twin, b, n, "train") if torch else float("nan")
    for fw, st in timings.items():
      out.append(_entry(fw, "paper", "train", b, n, st, flops, peak, bg, sweep=True,
                        compile_s=jside.compile_s if fw == "jax" else None))
  return out


def plot_sweep(entries: list, path: Path, machine: dict) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for fw, style in (("jax", "o-"), ("torch", "s--")):
    by_b = sorted((e["batch"], e["samples_per_s"]) for e in entries
                  if e["framework"] == fw and e["steps"] == 10)
    by_n = sorted((e["steps"], e["samples_per_s"]) for e in entries
                  if e["framework"] == fw and e["batch"] == SWEEP_STEPS_BATCH)
    label = {"jax": "JAX (lgd_jax)", "torch": "PyTorch eager (twin)"}[fw]
    if by_b:
      axes[0].plot(*zip(*by_b), style, label=label)
    if by_n:
      axes[1].plot(*zip(*by_n), style, label=label)
  axes[0].set_xscale("log", base=2)
  axes[0].set_xlabel("batch size (N = 10)")
  axes[1].set_xlabel(f"learned steps N (batch {SWEEP_STEPS_BATCH})")
  for ax in axes:
    ax.set_ylabel("training samples / s")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(f"LGD train step, paper network, 6890-vertex model; {machine['cpu']}, "
               f"{machine['usable_cores']} cores", fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def profile_paper(jside: JaxSide, torch_side, log) -> dict:
  """Where the JAX paper step's time goes: data, the objective with its gradient (N + 1 times),
  the network forward and backward in train mode (N times), against the whole step."""
  from lgd_jax.fitting import objective
  problem, b = jside.problem, jside.batch
  n = jside.num_steps
  vg = jax.jit(lambda p, t, x, c: objective.value_and_grad(p, t, x, c))
  theta = jnp.zeros_like(b.theta)
  net = jside.learner.update_net
  feats = lgd._features(jside.learner, b.kp2d, b.conf, theta, theta)
  params = jside.state.params["update"]
  stats = jside.state.batch_stats["update"]

  def net_loss(params, x):
    out, _ = net.apply({"params": params, "batch_stats": stats}, x, train=True,
                       rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"])
    return jnp.sum(out * out)

  net_vg = jax.jit(jax.value_and_grad(net_loss, argnums=(0, 1)))
  fns = {"objective+grad": lambda: jax.block_until_ready(vg(problem, theta, b.kp2d, b.conf)),
         "net fwd+bwd": lambda: jax.block_until_ready(net_vg(params, feats)),
         "make_batch": jside._make_batch}
  t = measure(fns, 5, 0.2, 4.0)
  return {"objective_grad_ms_x_N+1": t["objective+grad"]["median_s"] * 1e3 * (n + 1),
          "net_fwd_bwd_ms_x_N": t["net fwd+bwd"]["median_s"] * 1e3 * n,
          "make_batch_ms": t["make_batch"]["median_s"] * 1e3}


# ----------------------------------------------------------------------------------------------
# Report.


def print_table(entries: list) -> None:
  header = (f"{'framework':14s} {'workload':8s} {'mode':5s} {'batch':>5s} {'N':>3s} "
            f"{'median ms':>10s} {'IQR ms':>8s} {'samples/s':>10s} {'MFU':>6s} "
            f"{'peak MB':>8s} {'compile s':>9s} {'bg cores':>8s}")
  print(header)
  print("-" * len(header))
  for e in entries:
    mem = "-" if e["peak_mem_mb"] is None else f"{e['peak_mem_mb']:.0f}"
    comp = "-" if e["compile_s"] is None else f"{e['compile_s']:.1f}"
    bg = "-" if e["background_cores"] is None else f"{e['background_cores']:.2f}"
    print(f"{e['framework']:14s} {e['workload']:8s} {e['mode']:5s} {e['batch']:5d} "
          f"{e['steps']:3d} {e['median_ms']:10.1f} {e['spread_ms']:8.1f} "
          f"{e['samples_per_s']:10.1f} {100 * e['mfu']:5.1f}% {mem:>8s} {comp:>9s} {bg:>8s}")


def add_ratios(entries: list) -> None:
  by = {(e["framework"], e["workload"], e["mode"], e["batch"], e["steps"]): e for e in entries
        if not e.get("sweep")}
  for e in entries:
    if e["framework"] != "jax":
      continue
    for fw in ("torch", "torch_compile", "torch_official"):
      other = by.get((fw, e["workload"], e["mode"], e["batch"], e["steps"]))
      if other is not None:
        e[f"speedup_vs_{fw}"] = other["median_ms"] / e["median_ms"]
  for e in entries:
    if e.get("sweep") and e["framework"] == "jax":
      other = [o for o in entries if o.get("sweep") and o["framework"] == "torch"
               and o["batch"] == e["batch"] and o["steps"] == e["steps"]]
      if other:
        e["speedup_vs_torch"] = other[0]["median_ms"] / e["median_ms"]


def check_targets(entries: list, quick: bool) -> list[str]:
  """The speed issue's targets, each met or MISSED with its figure (paper workload, batch 1024),
  then the official workload's comparison with the official code."""
  by = {(e["framework"], e["workload"], e["mode"], e["batch"]): e for e in entries
        if not e.get("sweep")}
  lines = []
  verdict = lambda ok: "met" if ok else "MISSED"
  jp = by.get(("jax", "paper", "train", 1024))
  if jp is None:
    lines.append("targets are defined at the paper batch 1024 (not run: --quick or --batch)")
  else:
    for fw, target in (("torch", TARGET_SPEEDUP_EAGER), ("torch_compile", TARGET_SPEEDUP_COMPILE)):
      s = jp.get(f"speedup_vs_{fw}")
      if s is not None:
        lines.append(f"paper train step JAX >= {target}x {fw}: {verdict(s >= target)} ({s:.2f}x)")
      else:
        lines.append(f"paper train step JAX >= {target}x {fw}: not measured")
    lines.append(f"paper train step >= {TARGET_MFU:.0%} of the matmul peak: "
                 f"{verdict(jp['mfu'] >= TARGET_MFU)} ({jp['mfu']:.1%}, network matmuls only)")
    eager = by.get(("torch", "paper", "train", 1024))
    if jp["peak_mem_mb"] is None or eager is None or eager.get("peak_mem_mb") is None:
      lines.append("paper train step peak memory <= PyTorch eager's: not measured")
    else:
      lines.append(f"paper train step peak memory <= PyTorch eager's: "
                   f"{verdict(jp['peak_mem_mb'] <= eager['peak_mem_mb'])} "
                   f"({jp['peak_mem_mb']:.0f} MB vs {eager['peak_mem_mb']:.0f} MB process peak; "
                   f"{jp.get('step_mem_mb') or 0:.0f} vs {eager.get('step_mem_mb') or 0:.0f} MB "
                   "above setup)")
    lines.append(f"paper train step compile <= {TARGET_COMPILE_S:.0f} s: "
                 f"{verdict(jp['compile_s'] <= TARGET_COMPILE_S)} ({jp['compile_s']:.1f} s)")
  ji = by.get(("jax", "paper", "infer", 1024))
  if ji is not None and ji["steps"] == TARGET_INFER_STEPS:
    lines.append(f"paper inference {ji['steps']} steps x 1024 >= {TARGET_INFER_MFU:.0%} of the "
                 f"matmul peak: {verdict(ji['mfu'] >= TARGET_INFER_MFU)} ({ji['mfu']:.1%}, "
                 f"{ji['median_ms']:.0f} ms)")
  if not quick:
    oc = next((e for e in entries if e["framework"] == "torch_compile" and not e.get("sweep")
               and e["workload"] == "official" and e["mode"] == "train"), None)
    if any(e["workload"] == "official" for e in entries):
      lines.append("torch.compile of the official train step runs: "
                   + (f"met ({oc['median_ms']:.0f} ms)" if oc is not None else "MISSED"))
  official_code = OFFICIAL_CODE_BATCH / OFFICIAL_CODE_S_PER_STEP
  for e in entries:
    if e["framework"] == "jax" and e["workload"] == "official" and e["mode"] == "train" \
        and not e.get("sweep"):
      ref = by.get(("torch_official", "official", "train", e["batch"]))
      line = (f"official workload >= {TARGET_OFFICIAL_FACTOR:g}x the official code "
              f"({official_code:.0f} samples/s, an earlier issue's figure): "
              f"{verdict(e['samples_per_s'] >= TARGET_OFFICIAL_FACTOR * official_code)} "
              f"({e['samples_per_s']:.0f} samples/s = {e['samples_per_s'] / official_code:.1f}x)")
      if ref is not None:
        line += (f"; against the full-mesh twin measured here ({ref['samples_per_s']:.0f} "
                 f"samples/s): {e['samples_per_s'] / ref['samples_per_s']:.1f}x")
      lines.append(line)
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--json", type=Path, default=None, help="write the results here")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: batch 256, 3 short repeats, no torch.compile, no sweep, "
                      "memory "
                           "of the JAX paper step only, no official-code reference")
  parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                      help="batch/N sweep and its plot (default on, off with --quick)")
  parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                      help="peak memory of the train steps in child processes (default on)")
  parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="torch.compile entries (default on, off with --quick: its first call "
                           "compiles for minutes on a 2-core CPU)")
  parser.add_argument("--official-ref", action=argparse.BooleanOptionalAction, default=None,
                      help="time the full-mesh (official code's) body model path (default on, "
                           "off with --quick)")
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--batch", dest="batch_override", type=int, default=None,
                      help="train batch for every workload (default: the configs'; 256 with "
                           "--quick)")
  parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7, 3)")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="seconds of timed repeats per framework and entry (default 20, 3)")
  parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
  parser.add_argument("--no-torch", action="store_true", help="JAX only")
  parser.add_argument("--plot", type=Path, default=DOCS / "bench_train_sweep.png")
  parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.probe is not None:
    print("PROBE " + json.dumps(run_probe(json.loads(args.probe))), flush=True)
    return 0

  q = args.quick
  args.sweep = (not q) if args.sweep is None else args.sweep
  args.memory = True if args.memory is None else args.memory
  args.compile = (not q) if args.compile is None else args.compile
  args.official_ref = (not q) if args.official_ref is None else args.official_ref
  args.repeats = args.repeats or (3 if q else 7)
  args.budget_s = args.budget_s or (3.0 if q else 20.0)
  args.min_repeat_s = 0.05 if q else 0.2
  if q and args.batch_override is None:
    args.batch_override = 256
  args.infer_batch = 1024
  workloads = [w for w in args.workloads.split(",") if w]
  bad = [w for w in workloads if w not in WORKLOADS]
  if bad:
    parser.error(f"--workloads: unknown {bad}, expected names from {WORKLOADS}")

  torch = None
  if not args.no_torch:
    try:
      import torch
    except ImportError as e:
      print(f"note: {e}; timing JAX only")
  threads = args.threads or usable_cores()
  if torch is not None:
    torch.set_num_threads(threads)
  machine = machine_info(threads)
  if torch is not None:
    machine.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  machine.update(flax=_version("flax"), optax=_version("optax"))
  idle = BackgroundCpu()
  time.sleep(1.0)
  machine["background_cores_before"] = idle.cores()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  print(f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['platform']}; jax {machine['jax']} {machine['jax_devices']}"
        + (f"; torch {machine['torch']}, {threads} threads" if torch is not None else ""))
  peak = matmul_peak(torch)
  machine["matmul_peak"] = peak
  print(f"float32 matmul peak ({peak['n']}^3): JAX {peak['jax_gflops']:.1f} GFLOP/s"
        + (f", torch {peak['torch_gflops']:.1f} GFLOP/s" if "torch_gflops" in peak else "")
        + f"; MFU is relative to {peak['peak_gflops']:.1f} GFLOP/s")

  entries, notes = [], []
  run_probe_cpu = BackgroundCpu()
  with tempfile.TemporaryDirectory() as tmp:
    model_path = write_model_file(Path(tmp))
    for w in workloads:
      e, n = bench_workload(w, model_path, torch, args, peak, log)
      entries += e
      notes += n
    profile = None
    if "paper" in workloads and not q:
      log("[profile] paper step pieces ...")
      config = load_config("paper", model_path, args.batch_override, None)
      profile = profile_paper(JaxSide(config), None, log)
    if args.memory:
      for e in entries:
        if e["mode"] != "train" or (q and not (e["framework"] == "jax"
                                               and e["workload"] == "paper")):
          continue
        log(f"[memory] {e['framework']} {e['workload']} in a child process ...")
        spec = {"framework": e["framework"], "workload": e["workload"], "batch": e["batch"],
                "steps": e["steps"], "model": str(model_path), "threads": threads}
        res = probe_memory(spec, timeout_s=900)
        if "error" in res:
          notes.append(f"memory probe {e['framework']} {e['workload']}: {res['error']}")
          continue
        e.update({k: v for k, v in res.items() if k != "method"}, peak_mem_method=res["method"])
    sweep_entries = sweep(model_path, torch, args, peak, log) if args.sweep else []
  machine["background_cores"] = run_probe_cpu.cores()
  entries += sweep_entries
  add_ratios(entries)

  print()
  print_table([e for e in entries if not e.get("sweep")])
  print("(median ms per call over repeats after warm-up; IQR: interquartile range; MFU: analytic "
        "network-matmul FLOP/s over the measured matmul peak; peak MB: child-process peak RSS "
        "during "
        "steady train steps; compile: JAX lower+compile, torch.compile first call less a steady "
        "call; bg cores: other processes' CPU use while timing)")
  print()
  for e in entries:
    if e["framework"] == "jax" and not e.get("sweep"):
      parts = [f"{fw} {e[f'speedup_vs_{fw}']:.2f}x" for fw in ("torch", "torch_compile",
                                                               "torch_official")
               if f"speedup_vs_{fw}" in e]
      if parts:
        print(f"speed-up of JAX, {e['workload']} {e['mode']} batch {e['batch']}: "
              + ", ".join(parts))
  jt = [e for e in entries if e["framework"] == "jax" and e["mode"] == "train"
        and not e.get("sweep")]
  for e in jt:
    print(f"JAX {e['workload']} step: make_batch {e['make_batch_ms']:.1f} ms inside the step "
          f"(not in the torch entries); XLA cost_analysis {e['xla_flops'] or 0:.3g} FLOPs "
          f"(scan body once) vs analytic network {e['flops']:.3g}")
  if profile:
    step = next(e for e in jt if e["workload"] == "paper")["median_ms"]
    print(f"profile, JAX paper step {step:.0f} ms: objective+gradient x (N+1) "
          f"{profile['objective_grad_ms_x_N+1']:.0f} ms, network fwd+bwd x N "
          f"{profile['net_fwd_bwd_ms_x_N']:.0f} ms, make_batch {profile['make_batch_ms']:.0f} ms "
          "(pieces timed alone; the step also differentiates the objective's forward again for "
          "the 2D/3D losses and runs Adam)")
  if sweep_entries:
    plot_sweep(sweep_entries, args.plot, machine)
    print(f"sweep plot: {args.plot}")
    for e in sweep_entries:
      if e["framework"] == "jax":
        print(f"  sweep batch {e['batch']:5d} N {e['steps']:2d}: JAX {e['samples_per_s']:8.0f} "
              f"samples/s" + (f", {e['speedup_vs_torch']:.2f}x torch" if "speedup_vs_torch" in e
                              else ""))
  print()
  for line in check_targets(entries, q):
    print("target " + line)
  for n in notes:
    print("note: " + n)
  bg = machine["background_cores"]
  if bg is not None:
    busy = bg > 0.1 * machine["usable_cores"]
    print(f"{'warning: ' if busy else ''}other processes used {bg:.2f} of "
          f"{machine['usable_cores']} cores on average during the run"
          + ("; the timings are pessimistic and the ratios noisy" if busy else ""))
  if args.json is not None:
    result = {"machine": machine, "notes": notes, "profile": profile,
              "targets": check_targets(entries, q), "entries": entries}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
