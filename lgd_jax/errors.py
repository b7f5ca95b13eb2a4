"""The errors the commands report in one line: a user's mistake, a stopped run, processes that
did not meet.

Every module's error for bad input (a config value, a model, data or detection file, a
checkpoint) is a :class:`UserError`: its message names the file or setting and what was expected,
so the commands print it as one line (``error: ...``, exit status 2) without a traceback. This
module imports nothing, so any layer may raise these and :mod:`lgd_jax.commands.cli` catches them
without importing the layers.

A file's error is built as ``ModelFileError.at(path, "key 'f' has shape (3,), expected (F, 3)")``
(:meth:`UserError.at`, one line ``<path>: <message>``); :func:`describe` and :func:`shape_text`
word an exception and a shape inside such messages.
"""

from __future__ import annotations


def one_line(text: str) -> str:
  """``text`` with every run of whitespace (newlines included) as one space: messages end up in
  logs and in the commands' one-line output, where a multi-line text is noise."""
  return " ".join(text.split())


def describe(exc: BaseException) -> str:
  """An exception as ``Type: message`` on one line, or ``Type`` alone when it has no message."""
  text = one_line(str(exc))
  return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def shape_text(shape) -> str:
  """A shape as a message shows it: ``(3,)``, ``(N, 72)``."""
  return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class UserError(ValueError):
  """Input that cannot work; the message is complete (it names the file or the setting)."""

  @classmethod
  def at(cls, source, message: str):
    """The error ``<source>: <message>`` on one line (:func:`one_line`), ``source`` being the
    file, directory or setting that is wrong."""
    return cls(one_line(f"{source}: {message}"))


class ConfigError(UserError):
  """A config value that cannot work; the message names the field."""


class ProcessesError(RuntimeError):
  """The processes of a multi-process run did not meet (one failed, hangs or is too slow); the
  message says what they were waiting for."""


class TrainingStopped(RuntimeError):
  """Training ended before its last step; the message is complete and names the step.

  Attributes:
    exit_code: the command's exit status (128 + signal number for a signal).
  """

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
