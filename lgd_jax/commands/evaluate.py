"""Evaluate a trained learned optimiser, fit detections with it, or analyse its convergence.

    lgd-evaluate --ckpt runs/demo                              # held-out samples vs baselines
    python evaluate.py --ckpt runs/demo                        # the same, from a checkout
    python evaluate.py --ckpt DIR --data 3dpw:/data/3DPW       # a benchmark's protocol
    python evaluate.py --ckpt DIR --data h36m-p2:h36m_valid_protocol2.npz
    python evaluate.py --ckpt DIR --data mpi-inf-3dhp:mpi_inf_3dhp_valid.npz
    python evaluate.py --ckpt DIR --convergence --out-dir DIR2  # supplementary Figs 1-4
    python evaluate.py --ckpt DIR --keypoints PATH --out-dir DIR2 [--images DIR]  # = fit.py

--ckpt is a training workdir (its latest checkpoint), one checkpoint's directory or a pretrained
.npz; without it, the packaged pretrained model (trained on the free body model) is used. --data is
'synthetic', 'amass:DIR', '3dpw:PATH' (also 3dpw-validation:, 3dpw-train:), 'h36m-p1:NPZ',
'h36m-p2:NPZ' or 'mpi-inf-3dhp:NPZ'; SMPL files and J_regressor_h36m.npy are read from
third_party/smpl (or --smpl-dir / $LGD_JAX_SMPL_DIR). --keypoints takes OpenPose JSON (a file or a
directory of per-frame files, BODY_25 or COCO-18) or a COCO keypoint results file; it is the
command ``lgd-fit`` (``python fit.py``, :mod:`lgd_jax.commands.fit`) with the same flags.
"""

import argparse
import os
import sys

from lgd_jax.commands import cli, fit
from lgd_jax.eval import heldout, methods, reports, restore

# Help texts of the flags of fitting detections that the other modes read too.
_SHARED_HELP = {
    "--steps": "iterations M (default max(20, 2N): past the training window; --keypoints: N; "
               "--convergence: 100)",
    "--batch-size": None,
    "--out-dir": "output directory of --convergence and --keypoints",
}


def build_parser() -> argparse.ArgumentParser:
  """evaluate.py's flags: its own and, shared with fit.py, those of fitting detections."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  fit.add_flags(parser, prefix="--keypoints: ", helps=_SHARED_HELP)
  parser.add_argument("--data", default=None,
                      help="'synthetic', 'amass:DIR', '3dpw:PATH', 'h36m-p1:NPZ', 'h36m-p2:NPZ' "
                           "or 'mpi-inf-3dhp:NPZ' (default: the checkpoint's own data)")
  parser.add_argument("--num-samples", type=int, default=None,
                      help="held-out samples (default 1024; --convergence 256); for a benchmark, "
                           "an evenly spaced subset (default: all)")
  parser.add_argument("--smpl-dir", default=None, help="SMPL files for 3DPW / Human3.6M / MPI")
  parser.add_argument("--no-baselines", action="store_true",
                      help="benchmarks: skip the classical baselines (SMPLify-style fit)")
  parser.add_argument("--out", default=None, help="results JSON (default: CKPT/results.json)")
  parser.add_argument("--convergence", action="store_true",
                      help="the convergence analysis of the supplementary (Figs 1-4)")
  parser.add_argument("--inputs", choices=("exact", "detector"), default="exact",
                      help="held-out samples and --convergence: exact 2D keypoints (default) or "
                           "detector-like ones (noise, score jitter, swaps, truncation, outliers)")
  parser.add_argument("--detector", action="append", default=None, metavar="KEY=VALUE",
                      help="--inputs detector: override a knob (noise, score_jitter, swap_prob, "
                           "truncate_prob, outlier_prob); repeatable")
  return parser


def main(argv=None) -> int:
  """The command line (``lgd-evaluate``, ``python evaluate.py``): 0 when done, 2 for a mistake."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.convergence and args.keypoints:
    parser.error("--convergence and --keypoints: choose one")
  if (args.convergence or args.keypoints) and not args.out_dir:
    parser.error("--out-dir: required with --convergence and --keypoints")
  return cli.run(lambda: _run(args), args.debug)


def _run(args) -> None:
  """The mode that the flags choose."""
  fit.check_positive(num_samples=args.num_samples, batch_size=args.batch_size, steps=args.steps)
  if args.keypoints:
    return fit.fit_keypoints(args, _err)
  if args.convergence:
    return _convergence(args)
  from lgd_jax.eval import protocols
  name, _ = protocols.parse_spec(args.data)
  if name in protocols.PASS_THROUGH:
    return _held_out(args)
  return _benchmark(args)


def _err(message) -> None:
  print(message, file=sys.stderr)


def _detector(args):
  """--inputs and --detector: None (exact keypoints) or the detector-like corruption's settings."""
  from lgd_jax.data import augment
  from lgd_jax.errors import ConfigError
  if args.inputs == "exact":
    if args.detector:
      raise ConfigError("--detector: only with --inputs detector")
    return None
  try:
    return augment.parse_overrides(args.detector)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _held_out(args) -> None:
  """Held-out samples of the checkpoint's (or --data's) poses against the baselines."""
  out = args.out or (os.path.join(args.ckpt, "results.json") if args.ckpt and os.path.isdir(
      args.ckpt) else "results.json")
  fits = os.path.splitext(out)[0] + "_fits.png"
  results = heldout.evaluate(args.ckpt, args.steps, args.data, args.num_samples or 1024,
                             args.batch_size, log=_err, fits_png=fits, detector=_detector(args),
                             until_converged=args.until_converged, tol=args.tol)
  print(reports.table(results))
  for path in reports.write_results(results, out) + [fits]:
    _err(f"wrote {path}")


def _benchmark(args) -> None:
  """A benchmark's protocol (--data 3dpw:..., h36m-p1:..., ...)."""
  from lgd_jax.eval import protocols
  restored = restore.restore(args.ckpt)
  extra = None if args.no_baselines else methods.protocol_methods(restored)
  results = protocols.evaluate_dataset(restored, args.data, args.steps, args.batch_size,
                                       args.num_samples, log=_err, extra_methods=extra,
                                       smpl_dir=args.smpl_dir, confidence=args.confidence)
  print(protocols.table(results))
  name = f"results_{results['dataset']}.json"
  out = args.out or (os.path.join(args.ckpt, name) if args.ckpt and os.path.isdir(args.ckpt)
                     else name)
  for path in reports.write_results(results, out):
    _err(f"wrote {path}")


def _convergence(args) -> None:
  """The convergence analysis of the supplementary (--convergence)."""
  from lgd_jax.eval import convergence as conv
  restored = restore.restore(args.ckpt)
  summary = conv.run(restored, args.out_dir, num_iters=args.steps or 100,
                     num_samples=args.num_samples or 256, batch_size=args.batch_size, log=_err,
                     data=args.data, overwrite=args.overwrite, detector=_detector(args))
  print(conv.table(summary))


if __name__ == "__main__":
  sys.exit(main())
