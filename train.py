"""Train the learned optimiser (``lgd-train`` once installed); see :mod:`lgd_jax.commands.train`.

    python train.py --config configs/demo.py --workdir runs/demo [--config.key=value ...]
"""

import sys

from lgd_jax.commands.train import main

if __name__ == "__main__":
  sys.exit(main())
