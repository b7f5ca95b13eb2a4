"""Evaluate, fit detections or analyse convergence (``lgd-evaluate`` once installed); see
:mod:`lgd_jax.commands.evaluate`.

    python evaluate.py --ckpt runs/demo
"""

import sys

from lgd_jax.commands.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
