"""Convert an SMPL model file (e.g. an official chumpy .pkl) to .npz without chumpy.

    python -m lgd_jax.body.convert IN.pkl OUT.npz [--num-betas N]
"""

import sys

from lgd_jax.body.io import main

if __name__ == "__main__":
  sys.exit(main())
