"""Variants of the demo for the convergence ablation (``tools/convergence_ablation.py``).

Each variant is the demo's budget (free body model, synthetic poses, batch 256, 1000 steps,
512-wide paper network) with the published training scheme (``configs/demo.py``'s
``published_config``) and one or more switches of the convergence work turned on:

    python train.py --config configs/ablation.py:late --workdir runs/ablation/late

``VARIANTS`` maps a name to its overrides (dotted config keys); the script trains every variant
with the same budget and evaluates all of them on the same held-out samples.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_demo_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)

ROBUST = {"objective_loss": "robust"}
LATE = {"unroll.late_fraction": 0.25, "unroll.buffer_rounds": 8, "unroll.max_age": 100}
FIXED_POINT = {"unroll.fixed_point_fraction": 0.1, "loss.update": 1.0}
CHOSEN_1204 = {**LATE, **ROBUST, **FIXED_POINT, "model.gd_rate": 0.1, "model.damping": 10.0}
DEMO_1204 = {**CHOSEN_1204, **_demo.DEMO_DETECTOR}
ADAM = {"model.nominal": "adam", "model.gd_rate": 0.01}

# name -> (what it tests, overrides)
VARIANTS = {
    "published": ("the paper's scheme: L1, fixed N = 10, shared BatchNorm", {}),
    "l2": ("L2 objective", {"objective_loss": "l2"}),
    "robust": ("robust (pseudo-Huber) objective", ROBUST),
    "uniform_len": ("random unroll length, uniform in 1..20",
                    {"unroll.length": "uniform", "unroll.max_steps": 20}),
    "log_uniform_len": ("random unroll length, log-uniform in 1..20",
                        {"unroll.length": "log_uniform", "unroll.max_steps": 20}),
    "late": ("late-iteration starts: 25 % of each batch continues stored fits (ages to 100)",
             LATE),
    "fixed_point": ("fixed-point samples: 10 % start near the truth, loss on |ΔΘ|", FIXED_POINT),
    "bn_per_step": ("BatchNorm statistics per step", {"model.norm": "batch_per_step"}),
    "layernorm": ("LayerNorm instead of BatchNorm", {"model.norm": "layer"}),
    "damping": ("harmonic step-size damping, τ = 10", {"model.damping": 10.0}),
    "gd_term": ("learned preconditioned gradient term (rate 0.1)", {"model.gd_rate": 0.1}),
    "gate": ("update gated by the gradient norm (robust objective)",
             {**ROBUST, "model.gate": 0.01}),
    # Combinations.
    "late+robust": ("late starts, robust objective", {**LATE, **ROBUST}),
    "late+robust+layer": ("late starts, robust objective, LayerNorm",
                          {**LATE, **ROBUST, "model.norm": "layer"}),
    "late+robust+fp": ("late starts, robust objective, fixed points",
                       {**LATE, **ROBUST, **FIXED_POINT}),
    "late+robust+fp+gd": ("late starts, robust objective, fixed points, gradient term",
                          {**LATE, **ROBUST, **FIXED_POINT, "model.gd_rate": 0.1}),
    "late+robust+fp+len": ("late starts, robust objective, fixed points, length 1..20",
                           {**LATE, **ROBUST, **FIXED_POINT, "unroll.length": "uniform",
                            "unroll.max_steps": 20}),
    "late+robust+fp+gd+damp": ("late starts, robust objective, fixed points, gradient term, "
                               "network damped (τ = 10)",
                               {**LATE, **ROBUST, **FIXED_POINT, "model.gd_rate": 0.1,
                                "model.damping": 10.0}),
    "chosen+age200": ("the chosen scheme with stored fits continued to age 200 (not 100), so that "
                      "iteration 100 lies inside the trained range",
                      {**LATE, **ROBUST, **FIXED_POINT, "model.gd_rate": 0.1,
                       "model.damping": 10.0, "unroll.max_age": 200}),
    "chosen+late50": ("the chosen scheme with half of each batch continuing stored fits",
                      {**LATE, **ROBUST, **FIXED_POINT, "model.gd_rate": 0.1,
                       "model.damping": 10.0, "unroll.late_fraction": 0.5}),
    "late50+robust+fp": ("half of each batch continued, robust objective, fixed points",
                         {**LATE, "unroll.late_fraction": 0.5, **ROBUST, **FIXED_POINT}),
    # The demo (the chosen scheme with detector-like training inputs) and the nominal Adam term.
    "demo": ("the demo of 2026-12-04: the chosen scheme with detector-like training inputs",
             DEMO_1204),
    "demo+adam": ("the demo with an Adam-normalised nominal term (rate 0.01) instead of the "
                  "gradient term", {**DEMO_1204, **ADAM}),
    "demo+damp2": ("the demo with the network's steps damped by (τ/(τ+n))², summable",
                   {**DEMO_1204, "model.damping_power": 2.0}),
    "demo+adam+damp2": ("the demo with the Adam nominal term and the network damped by "
                        "(τ/(τ+n))²", {**DEMO_1204, **ADAM, "model.damping_power": 2.0}),
    "demo+adam+damp2+decay": ("as demo+adam+damp2 with the learning rate × 0.7 per epoch (of "
                              "250 steps)", {**DEMO_1204, **ADAM, "model.damping_power": 2.0,
                                             "lr_decay": 0.7}),
    "demo+adam+damp2+tau20": ("as demo+adam+damp2 with τ = 20",
                              {**DEMO_1204, **ADAM, "model.damping_power": 2.0,
                               "model.damping": 20.0}),
}


def get_config(name: str = "published"):
  """The variant ``name``; ``name@sK`` is the same variant trained with seed K (the default
  seed is the base config's, 0), to tell a scheme's effect from a seed's."""
  base, _, seed = name.partition("@s")
  if base not in VARIANTS or (seed and not seed.isdigit()):
    raise ValueError(f"configs/ablation.py:{name}: unknown variant, expected one of "
                     f"{sorted(VARIANTS)}, optionally followed by @s<seed>")
  from lgd_jax.config import apply_overrides
  c = apply_overrides(_demo.published_config(), VARIANTS[base][1])
  if seed:
    c.seed = int(seed)
  return c
