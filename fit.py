"""Fit bodies to 2D detections (``lgd-fit`` once installed); see :mod:`lgd_jax.commands.fit`.

    python fit.py --keypoints openpose_json/ --out-dir fits/ [--ckpt runs/demo] [--images frames/]
"""

import sys

from lgd_jax.commands.fit import main

if __name__ == "__main__":
  sys.exit(main())
