"""Train the learned optimiser.

    python train.py --config configs/demo.py --workdir runs/demo [--config.key=value ...]

Running the same command again resumes from the latest checkpoint in the workdir.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/demo.py", "A config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("debug", False, "Show tracebacks of errors.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from lgd_jax import cli, training
  if not FLAGS.workdir:
    print("error: --workdir: expected a directory for checkpoints and metrics", file=sys.stderr)
    return 2
  return cli.run(lambda: training.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                                     FLAGS.progress) and 0, FLAGS.debug)


if __name__ == "__main__":
  sys.exit(app.run(main))
