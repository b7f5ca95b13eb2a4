"""Train the learned optimiser.

    lgd-train --config configs/demo.py --workdir runs/demo [--config.key=value ...]
    python train.py --config configs/demo.py --workdir runs/demo    # the same, from a checkout

--config is a config file (the repository's configs/*.py; the default, configs/demo.py, is
relative to the current directory); --config.key=value overrides one field. Running the same
command again resumes from the latest good checkpoint in the workdir, bit-identically to an
uninterrupted run on the CPU (on a GPU only with --deterministic on every run; see
lgd_jax.geometry.numerics); SIGINT (Ctrl-C) or SIGTERM saves a checkpoint first. The batch is
split over
every local device (--config.num_devices); several processes join with --coordinator_address/
--num_processes/--process_id or the matching JAX_* environment variables (SLURM is detected by
JAX).
"""

import os
import sys
import traceback

from absl import flags
from ml_collections import config_flags

from lgd_jax.errors import one_line
from lgd_jax.train import loop

config_flags.DEFINE_config_file("config", "configs/demo.py", "A config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("debug", False, "Show tracebacks of errors.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-process run (or JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run (JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's index, 0-based (JAX_PROCESS_ID).")
flags.DEFINE_bool("deterministic", False,
                  "GPU: deterministic XLA kernels (XLA_FLAGS=--xla_gpu_deterministic_ops=true; "
                  "slower), so that a resumed run is bit-identical there too. The CPU is "
                  "deterministic without it.")
FLAGS = flags.FLAGS


def parse(argv) -> int | None:
  """Parses the flags and the config; a mistake is one line on stderr and exit status 2."""
  debug = any(a in ("--debug", "--debug=true", "--debug=True") for a in argv[1:])
  try:
    FLAGS(argv)
    list(FLAGS.config.keys())  # loads the config file and applies the overrides
    return None
  except Exception as e:  # absl/ml_collections report bad flags and overrides in many types
    if debug:
      traceback.print_exc()
    msg = one_line(str(e))
    if isinstance(e, OSError) and "Failed loading config file" in msg:
      msg = (f"--config: {msg.split('Attempted')[-1].split('] ', 1)[-1]} (expected a config "
             "file such as the lgd_jax repository's configs/demo.py)")
    elif isinstance(e, AttributeError):  # ml_collections on an override of an unknown field
      key = next((a.split("=")[0][len("--config."):] for a in argv
                  if a.startswith("--config.") and msg.strip("\"'") in a), None)
      msg = (f"--config.{key}: no such field in the config" if key else
             f"unknown config field {msg}")
    print(f"error: {msg}", file=sys.stderr)
    return 2


def usage(prog: str) -> str:
  """The --help text: this module's docstring and its flags."""
  return (f"usage: {os.path.basename(prog)} --workdir DIR [--config FILE] [--config.key=value ...]"
          f"\n\n{__doc__}\n" + FLAGS.module_help(__name__).strip() + "\n")


def main(argv=None) -> int:
  """The command line (``lgd-train``, ``python train.py``): 0 when done, 2 for a mistake."""
  argv = sys.argv if argv is None else argv
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
    print(usage(argv[0]))
    return 0
  status = parse(argv)
  if status is not None:
    return status
  if not FLAGS.workdir:
    print("error: --workdir: expected a directory for checkpoints and metrics", file=sys.stderr)
    return 2
  if FLAGS.deterministic:
    # Before anything below initialises JAX's backends: XLA reads XLA_FLAGS only then.
    from lgd_jax.geometry import numerics
    try:
      numerics.enable_gpu_determinism()
    except RuntimeError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  from lgd_jax import parallel
  from lgd_jax.commands import cli

  def run():
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.progress)

  return cli.run(run, FLAGS.debug)


if __name__ == "__main__":
  sys.exit(main())
