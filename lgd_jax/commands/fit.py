"""Fit a body to every person of 2D detections with a trained learned optimiser.

    lgd-fit --keypoints openpose_json/ --out-dir fits/ [--images frames/]
    python fit.py --keypoints PATH --out-dir DIR [--ckpt runs/demo]   # the same, from a checkout

--keypoints takes OpenPose JSON (a file or a directory of per-frame files, BODY_25 or COCO-18) or a
COCO keypoint results or annotation file; --out-dir gets, per person, the body's parameters (.npz),
its mesh (.obj) and a drawing of the fit (.png), and summary.json (see
:mod:`lgd_jax.eval.detections`). --ckpt is a training workdir (its latest checkpoint), one
checkpoint's directory or a pretrained .npz; without it, the packaged pretrained model is used.
``evaluate.py --keypoints`` is the same command (the same flags and code).
"""

import argparse
import sys

from lgd_jax.commands import cli
from lgd_jax.eval import detection_inputs, detections, restore

MAX_BATCH = 64  # persons per compiled batch at most, whatever --batch-size says


def add_flags(parser: argparse.ArgumentParser, prefix: str = "", helps: dict | None = None,
              required: bool = False) -> None:
  """Adds the flags that fitting detections reads (:func:`fit_keypoints`) to ``parser``.

  Args:
    parser: fit.py's, or evaluate.py's (its --keypoints mode).
    prefix: the start of the help texts of the flags read by fitting alone.
    helps: help texts replacing these defaults, by flag (evaluate.py's for the flags its other
      modes read too).
    required: --keypoints and --out-dir must be given.
  """
  helps = helps or {}

  def add(flag, text, **kwargs):
    parser.add_argument(flag, help=helps.get(flag, text), **kwargs)

  add("--ckpt", "training workdir, checkpoint directory or pretrained .npz (default: the "
      "packaged pretrained model)", default=None)
  add("--steps", "learned update steps (default: the checkpoint's training window N; with "
      "--until-converged the most, default 10 N)", type=int, default=None)
  add("--batch-size", f"persons per compiled batch, at most {MAX_BATCH} (the last is padded)",
      type=int, default=512)
  add("--keypoints", "2D detections to fit (OpenPose/COCO)", default=None, required=required)
  add("--images", f"{prefix}the frames' images", default=None)
  add("--focal-length", f"{prefix}focal length in pixels (default sqrt(W^2 + H^2))", type=float,
      default=None)
  add("--min-joints", f"{prefix}skip persons with fewer confident joints", type=int, default=None)
  add("--no-png", f"{prefix}no PNG per person", action="store_true")
  add("--refine-steps", f"{prefix}iterations of the classical refinement in the image's camera "
      "after the learned steps (default 100; 0 = none)", type=int, default=None)
  add("--refine-keypoints", f"{prefix}keypoints the refinement fits: 'detections' (every joint "
      "of the file's format the body model has, BODY_25's feet included; default) or "
      "'checkpoint' (the checkpoint's keypoint set, as the learned steps)",
      choices=detection_inputs.REFINE_KEYPOINTS, default="detections")
  add("--no-relabel", f"{prefix}fit the limbs as labelled (default: also with the left and right "
      "of the arms, and of the legs, exchanged, keeping each person's most plausible fit)",
      action="store_true")
  add("--until-converged", "iterate the learned update until each sample's objective changes by "
      "less than --tol (relative), at most --steps (default 10 N)", action="store_true")
  add("--tol", "--until-converged: relative change of the objective (default 1e-4)", type=float,
      default=detections.DEFAULT_TOL)
  add("--confidence", "detector scores: 'binary' (the official rule: >= 0.01 -> 1, else 0; "
      "default) or 'raw' (scores weigh the objective)", choices=("binary", "raw"),
      default="binary")
  add("--out-dir", "output directory (created): .npz, .obj and .png per person, summary.json",
      default=None, required=required)
  add("--overwrite", "replace the results of an earlier run in --out-dir", action="store_true")
  add("--debug", "show tracebacks of errors", action="store_true")


def check_positive(**values) -> None:
  """A :class:`lgd_jax.errors.ConfigError` naming the first flag (``name=value``) below 1."""
  from lgd_jax.errors import ConfigError
  for name, v in values.items():
    if v is not None and v < 1:
      raise ConfigError(f"--{name.replace('_', '-')}: expected a positive integer, got {v}")


def fit_keypoints(args: argparse.Namespace, log) -> None:
  """Fits the detections of ``args`` (:func:`add_flags`'s flags) and prints the table of fits:
  fit.py, and evaluate.py --keypoints."""
  check_positive(batch_size=args.batch_size, steps=args.steps)
  restored = restore.restore(args.ckpt)
  kwargs = {} if args.min_joints is None else {"min_joints": args.min_joints}
  summary = detections.fit_file(restored, args.keypoints, args.out_dir, images=args.images,
                                num_steps=args.steps, batch_size=min(args.batch_size, MAX_BATCH),
                                focal_length=args.focal_length, overwrite=args.overwrite,
                                log=log, draw=not args.no_png, confidence=args.confidence,
                                until_converged=args.until_converged, tol=args.tol,
                                refine_steps=args.refine_steps, relabel=not args.no_relabel,
                                refine_keypoints=args.refine_keypoints,
                                **kwargs)
  print(detections.table(summary))


def _err(message) -> None:
  print(message, file=sys.stderr)


def main(argv=None) -> int:
  """The command line (``lgd-fit``, ``python fit.py``): 0 when done, 2 for a mistake."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  add_flags(parser, required=True)
  args = parser.parse_args(argv)
  return cli.run(lambda: fit_keypoints(args, _err), args.debug)


if __name__ == "__main__":
  sys.exit(main())
