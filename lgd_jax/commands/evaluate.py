"""Evaluate a trained learned optimiser, fit detections with it, or analyse its convergence.

    lgd-evaluate --ckpt runs/demo                              # held-out samples vs baselines
    python evaluate.py --ckpt runs/demo                        # the same, from a checkout
    python evaluate.py --ckpt DIR --data 3dpw:/data/3DPW       # a benchmark's protocol
    python evaluate.py --ckpt DIR --data h36m-p2:h36m_valid_protocol2.npz
    python evaluate.py --ckpt DIR --data mpi-inf-3dhp:mpi_inf_3dhp_valid.npz
    python evaluate.py --ckpt DIR --convergence --out-dir DIR2  # supplementary Figs 1-4
    python evaluate.py --ckpt DIR --keypoints PATH --out-dir DIR2 [--images DIR]

--ckpt is a training workdir (its latest checkpoint), one checkpoint's directory or a pretrained
.npz; without it, the packaged pretrained model (trained on the free body model) is used. --data is
'synthetic', 'amass:DIR', '3dpw:PATH' (also 3dpw-validation:, 3dpw-train:), 'h36m-p1:NPZ',
'h36m-p2:NPZ' or 'mpi-inf-3dhp:NPZ'; SMPL files and J_regressor_h36m.npy are read from
third_party/smpl (or --smpl-dir / $LGD_JAX_SMPL_DIR). --keypoints takes OpenPose JSON (a file or a
directory of per-frame files, BODY_25 or COCO-18) or a COCO keypoint results file.
"""

import argparse
import os
import sys


def main(argv=None) -> int:
  """The command line (``lgd-evaluate``, ``python evaluate.py``): 0 when done, 2 for a mistake."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ckpt", default=None,
                      help="training workdir, checkpoint directory or pretrained .npz (default: "
                           "the packaged pretrained model)")
  parser.add_argument("--steps", type=int, default=None,
                      help="iterations M (default max(20, 2N): past the training window; "
                           "--keypoints: N; --convergence: 100)")
  parser.add_argument("--data", default=None,
                      help="'synthetic', 'amass:DIR', '3dpw:PATH', 'h36m-p1:NPZ', 'h36m-p2:NPZ' "
                           "or 'mpi-inf-3dhp:NPZ' (default: the checkpoint's own data)")
  parser.add_argument("--num-samples", type=int, default=None,
                      help="held-out samples (default 1024; --convergence 256); for a benchmark, "
                           "an evenly spaced subset (default: all)")
  parser.add_argument("--batch-size", type=int, default=512)
  parser.add_argument("--smpl-dir", default=None, help="SMPL files for 3DPW / Human3.6M / MPI")
  parser.add_argument("--no-baselines", action="store_true",
                      help="benchmarks: skip the classical baselines (SMPLify-style fit)")
  parser.add_argument("--out", default=None, help="results JSON (default: CKPT/results.json)")
  parser.add_argument("--convergence", action="store_true",
                      help="the convergence analysis of the supplementary (Figs 1-4)")
  parser.add_argument("--keypoints", default=None, help="2D detections to fit (OpenPose/COCO)")
  parser.add_argument("--images", default=None, help="--keypoints: the frames' images")
  parser.add_argument("--focal-length", type=float, default=None,
                      help="--keypoints: focal length in pixels (default sqrt(W^2 + H^2))")
  parser.add_argument("--min-joints", type=int, default=None,
                      help="--keypoints: skip persons with fewer confident joints")
  parser.add_argument("--no-png", action="store_true", help="--keypoints: no PNG per person")
  parser.add_argument("--refine-steps", type=int, default=None,
                      help="--keypoints: iterations of the classical refinement in the image's "
                           "camera after the learned steps (default 100; 0 = none)")
  parser.add_argument("--until-converged", action="store_true",
                      help="iterate the learned update until each sample's objective changes by "
                           "less than --tol (relative), at most --steps (default 10 N)")
  parser.add_argument("--tol", type=float, default=1e-4,
                      help="--until-converged: relative change of the objective (default 1e-4)")
  parser.add_argument("--confidence", choices=("binary", "raw"), default="binary",
                      help="detector scores: 'binary' (the official rule: >= 0.01 -> 1, else 0; "
                           "default) or 'raw' (scores weigh the objective)")
  parser.add_argument("--out-dir", default=None,
                      help="output directory of --convergence and --keypoints")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the results of an earlier run in --out-dir")
  parser.add_argument("--inputs", choices=("exact", "detector"), default="exact",
                      help="held-out samples and --convergence: exact 2D keypoints (default) or "
                           "detector-like ones (noise, score jitter, swaps, truncation, outliers)")
  parser.add_argument("--detector", action="append", default=None, metavar="KEY=VALUE",
                      help="--inputs detector: override a knob (noise, score_jitter, swap_prob, "
                           "truncate_prob, outlier_prob); repeatable")
  parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
  args = parser.parse_args(argv)
  if args.convergence and args.keypoints:
    parser.error("--convergence and --keypoints: choose one")
  if (args.convergence or args.keypoints) and not args.out_dir:
    parser.error("--out-dir: required with --convergence and --keypoints")

  from lgd_jax import cli

  def err(message):
    print(message, file=sys.stderr)

  def positive(**values):
    from lgd_jax.training import ConfigError
    for name, v in values.items():
      if v is not None and v < 1:
        raise ConfigError(f"--{name.replace('_', '-')}: expected a positive integer, got {v}")

  def detector():
    from lgd_jax.data import augment
    from lgd_jax.training import ConfigError
    if args.inputs == "exact":
      if args.detector:
        raise ConfigError("--detector: only with --inputs detector")
      return None
    try:
      return augment.parse_overrides(args.detector)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  def run():
    positive(num_samples=args.num_samples, batch_size=args.batch_size, steps=args.steps)
    if args.keypoints:
      return fit_keypoints()
    if args.convergence:
      return convergence()
    from lgd_jax import protocols
    name, _ = protocols.parse_spec(args.data)
    if name in protocols.PASS_THROUGH:
      return held_out()
    return benchmark()

  def held_out():
    from lgd_jax import evaluation
    out = args.out or (os.path.join(args.ckpt, "results.json") if args.ckpt and os.path.isdir(
        args.ckpt) else "results.json")
    fits = os.path.splitext(out)[0] + "_fits.png"
    results = evaluation.evaluate(args.ckpt, args.steps, args.data, args.num_samples or 1024,
                                  args.batch_size, log=err, fits_png=fits, detector=detector(),
                                  until_converged=args.until_converged, tol=args.tol)
    print(evaluation.table(results))
    for path in evaluation.write_results(results, out) + [fits]:
      err(f"wrote {path}")

  def benchmark():
    from lgd_jax import baselines, evaluation, protocols
    restored = evaluation.restore(args.ckpt)
    extra = None if args.no_baselines else baselines.protocol_methods(restored)
    results = protocols.evaluate_dataset(restored, args.data, args.steps, args.batch_size,
                                         args.num_samples, log=err, extra_methods=extra,
                                         smpl_dir=args.smpl_dir, confidence=args.confidence)
    print(protocols.table(results))
    name = f"results_{results['dataset']}.json"
    out = args.out or (os.path.join(args.ckpt, name) if args.ckpt and os.path.isdir(args.ckpt)
                       else name)
    for path in evaluation.write_results(results, out):
      err(f"wrote {path}")

  def convergence():
    from lgd_jax import convergence as conv
    from lgd_jax import evaluation
    restored = evaluation.restore(args.ckpt)
    summary = conv.run(restored, args.out_dir, num_iters=args.steps or 100,
                       num_samples=args.num_samples or 256, batch_size=args.batch_size, log=err,
                       data=args.data, overwrite=args.overwrite, detector=detector())
    print(conv.table(summary))

  def fit_keypoints():
    from lgd_jax import detections, evaluation
    restored = evaluation.restore(args.ckpt)
    kwargs = {} if args.min_joints is None else {"min_joints": args.min_joints}
    summary = detections.fit_file(restored, args.keypoints, args.out_dir, images=args.images,
                                  num_steps=args.steps, batch_size=min(args.batch_size, 64),
                                  focal_length=args.focal_length, overwrite=args.overwrite,
                                  log=err, draw=not args.no_png, confidence=args.confidence,
                                  until_converged=args.until_converged, tol=args.tol,
                                  refine_steps=args.refine_steps, **kwargs)
    print(detections.table(summary))

  return cli.run(run, args.debug)


if __name__ == "__main__":
  sys.exit(main())
