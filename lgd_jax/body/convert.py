"""Convert an SMPL model file (e.g. an official chumpy .pkl) to .npz without chumpy.

    python -m lgd_jax.body.convert IN.pkl OUT.npz [--num-betas N]
"""

from __future__ import annotations

import argparse
import sys

from lgd_jax.body.io import ModelFileError, check_num_betas, load_arrays, write_npz
from lgd_jax.errors import one_line


def main(argv: list[str] | None = None) -> int:
  """``python -m lgd_jax.body.convert IN OUT.npz [--num-betas N]``: converts a model file to .npz.

  The conversion stays in NumPy float64 (no JAX), so it is lossless. Prints one line; on error
  prints one line to stderr and returns 2.
  """
  parser = argparse.ArgumentParser(
      prog="python -m lgd_jax.body.convert",
      description="Convert an SMPL model file (official .pkl, read without chumpy, or .npz) to "
                  ".npz with the official keys.")
  parser.add_argument("input", help="SMPL model file (.pkl or .npz)")
  parser.add_argument("output", help="destination .npz")
  parser.add_argument("--num-betas", type=int, default=None,
                      help="keep the first N shape components (default: all in the file)")
  args = parser.parse_args(argv)
  try:
    check_num_betas(args.num_betas)
    if not args.output.lower().endswith(".npz"):
      raise ValueError(f"{args.output}: expected an output path ending in .npz")
    _, arrays = load_arrays(args.input, args.num_betas)
    write_npz(args.output, arrays)
  except (ModelFileError, ValueError, OSError) as e:
    print(f"error: {one_line(str(e))}", file=sys.stderr)
    return 2
  print(f"wrote {args.output}: {arrays['v_template'].shape[0]} vertices, "
        f"{arrays['faces'].shape[0]} faces, {arrays['shapedirs'].shape[-1]} shape components, "
        f"{len(arrays['parents'])} joints")
  return 0


if __name__ == "__main__":
  sys.exit(main())
