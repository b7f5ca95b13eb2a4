"""Shared command-line plumbing: one clear line for a user's mistake, a traceback only on
--debug."""

from __future__ import annotations

import sys
import traceback

from lgd_jax.errors import ProcessesError, TrainingStopped, UserError, one_line

# Errors whose message is complete for a user: shown as one line, exit code 2.
USER_ERRORS = (UserError, FileNotFoundError, IsADirectoryError, PermissionError)


def quiet_logs() -> None:
  """Orbax reports every save and restore through absl logging at INFO."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)


def run(fn, debug: bool) -> int:
  """Runs ``fn()``; a known user error becomes ``error: <message>`` on stderr and exit code 2."""
  quiet_logs()
  try:
    return fn() or 0
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  except ProcessesError as e:  # another process of a multi-process run failed or hangs
    if debug:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return 1
  except TrainingStopped as e:
    if debug:
      traceback.print_exc()
    print(f"stopped: {e}", file=sys.stderr)
    return e.exit_code
  except USER_ERRORS as e:
    if debug:
      traceback.print_exc()
    msg = one_line(str(e)) if not isinstance(e, OSError) or not e.filename \
        else f"{e.filename}: {e.strerror}"
    print(f"error: {msg}", file=sys.stderr)
    return 2
