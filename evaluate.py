"""Evaluate a trained learned optimiser on held-out samples, beside tuned gradient descent and Adam.

    python evaluate.py --ckpt runs/demo [--steps 20] [--data synthetic|amass:DIR] \
        [--out runs/demo/results.json]

--ckpt is a training workdir (its latest checkpoint) or one checkpoint's directory.
"""

import argparse
import os
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ckpt", required=True, help="training workdir or checkpoint directory")
  parser.add_argument("--steps", type=int, default=None,
                      help="iterations M (default max(20, 2N): past the training window)")
  parser.add_argument("--data", default=None,
                      help="'synthetic' or 'amass:DIR' (default: the checkpoint's own data)")
  parser.add_argument("--num-samples", type=int, default=1024)
  parser.add_argument("--batch-size", type=int, default=512)
  parser.add_argument("--out", default=None, help="results JSON (default: CKPT/results.json)")
  parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
  args = parser.parse_args(argv)

  from lgd_jax import cli, evaluation

  def run():
    if args.num_samples < 1 or args.batch_size < 1:
      raise evaluation.training.ConfigError("--num-samples and --batch-size must be positive")
    out = args.out or os.path.join(args.ckpt, "results.json")
    fits = os.path.splitext(out)[0] + "_fits.png"
    results = evaluation.evaluate(args.ckpt, args.steps, args.data, args.num_samples,
                                  args.batch_size, log=lambda m: print(m, file=sys.stderr),
                                  fits_png=fits)
    print(evaluation.table(results))
    for path in evaluation.write_results(results, out) + [fits]:
      print(f"wrote {path}", file=sys.stderr)
    return 0

  return cli.run(run, args.debug)


if __name__ == "__main__":
  sys.exit(main())
