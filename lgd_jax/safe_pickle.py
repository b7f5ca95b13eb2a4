"""The one unpickler of lgd_jax: pickles are read without running what they name.

SMPL model files, 3DPW sequences and SMPLify's ``gmm_08.pkl`` are pickles, and unpickling with
:mod:`pickle` imports and calls whatever the file names (``os.system`` included). Every pickle
lgd_jax reads goes through :class:`RestrictedUnpickler` instead:

* an allow-list of NumPy's array and scalar reconstruction helpers and a few inert builtins
  (containers, ``object``, ``_codecs.encode`` for bytes written by Python 3 protocol 2);
* every other global either becomes an inert :class:`Stub` (a class that only records what the
  pickle handed it: chumpy objects in SMPL files, anything else in 3DPW files) when the caller's
  ``stubs`` policy says so, or is refused with :class:`ForbiddenGlobal` before anything is built.

    data = safe_pickle.load(path)                                 # NumPy and containers only
    data = safe_pickle.load(path, stubs=safe_pickle.stub_all)     # other classes become stubs

Python 2 pickles store NumPy's raw bytes as ``str``; ``encoding="latin1"`` maps them back byte
for byte, so that is the encoding here.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Callable
from typing import IO

# NumPy's array and scalar reconstruction, after mapping numpy.core -> numpy._core. These build
# arrays from bytes and run no other code.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core._multiarray_umath", "_reconstruct"),
    ("numpy._core._multiarray_umath", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}
# Builtins that only build plain values: chumpy's state holds sets, Python 2 pickles name the
# containers, protocol-2 pickles written by Python 3 encode bytes with _codecs.encode, and
# copy_reg._reconstructor names `object` as the base class.
_BUILTIN_GLOBALS = {
    ("builtins", n) for n in ("object", "set", "frozenset", "list", "dict", "tuple", "bytearray",
                              "slice", "complex")
} | {("_codecs", "encode")}
_BUILTIN_MODULES = {"__builtin__": "builtins", "builtins": "builtins", "_codecs": "_codecs"}


class ForbiddenGlobal(pickle.UnpicklingError):
  """The pickle names a global that is neither allowed nor stubbed; nothing of it was run.

  Attributes:
    module, name: the global as the pickle names it (``qualname``: "module.name").
  """

  def __init__(self, module: str, name: str, detail: str = ""):
    self.module, self.name = module, name
    super().__init__(f"the pickle references {module}.{name}{detail}, which is not allowed")

  @property
  def qualname(self) -> str:
    return f"{self.module}.{self.name}"


class Stub:
  """An inert stand-in for a class a pickle names (chumpy, scipy.sparse, anything else).

  Instances come from NEWOBJ (``cls.__new__``), REDUCE (``cls(*args)``) or
  ``copy_reg._reconstructor``; BUILD then hands the object's ``__dict__`` to ``__setstate__``.
  Nothing of the original class runs: the stand-in only keeps what the pickle said.
  """

  qualname = "?"  # "module.Class" as named in the pickle; set on each generated subclass.

  def __init__(self, *args, **kwargs):
    self._args = args
    self._kwargs = kwargs

  def __setstate__(self, state):
    self._state = state

  def state(self) -> dict:
    """The pickled attribute dict (a ``(dict, slots)`` pair is merged)."""
    state = getattr(self, "_state", None)
    if isinstance(state, tuple) and len(state) == 2:
      merged = {}
      for part in state:
        if isinstance(part, dict):
          merged.update(part)
      return merged
    return dict(state) if isinstance(state, dict) else {}


_STUB_CACHE: dict[tuple[type, str, str], type] = {}


def stub_class(base: type, module: str, name: str) -> type:
  """The stand-in class (a subclass of ``base``, itself a :class:`Stub`) for ``module.name``."""
  key = (base, module, name)
  if key not in _STUB_CACHE:
    _STUB_CACHE[key] = type(name, (base,), {"qualname": f"{module}.{name}"})
  return _STUB_CACHE[key]


def stub_all(module: str, name: str) -> type:
  """A ``stubs`` policy: every global outside the allow-list becomes an inert :class:`Stub`."""
  return stub_class(Stub, module, name)


# (module, name) -> a Stub subclass, or None to refuse the global.
StubPolicy = Callable[[str, str], type | None]


def _numpy_global(module: str, name: str):
  canonical = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") \
      else module
  if (canonical, name) not in _NUMPY_GLOBALS:
    return None
  # NumPy 2 moved numpy.core to numpy._core; NumPy 1.x only has the old name.
  for candidate in (canonical, module, module.replace("numpy._core", "numpy.core")):
    try:
      return getattr(importlib.import_module(candidate), name)
    except (ImportError, AttributeError):
      continue
  return None


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles with an allow-list instead of importing what the pickle names.

  Args:
    file: a binary file object.
    stubs: what to do with a global outside the allow-list: a policy returning a
      :class:`Stub` subclass to build instead, or None (the default) to refuse it.
  """

  def __init__(self, file: IO[bytes], stubs: StubPolicy | None = None):
    super().__init__(file, encoding="latin1")
    self._stubs = stubs

  def find_class(self, module: str, name: str):
    if module in ("copy_reg", "copyreg") and name == "_reconstructor":
      return _reconstructor
    if module in _BUILTIN_MODULES and (_BUILTIN_MODULES[module], name) in _BUILTIN_GLOBALS:
      return getattr(importlib.import_module(_BUILTIN_MODULES[module]), name)
    if module == "numpy" or module.startswith("numpy."):
      found = _numpy_global(module, name)
      if found is not None:
        return found
    stub = self._stubs(module, name) if self._stubs is not None else None
    if stub is not None:
      if not (isinstance(stub, type) and issubclass(stub, Stub)):
        raise TypeError(f"stubs policy returned {stub!r} for {module}.{name}, expected a Stub "
                        "subclass")
      return stub
    raise ForbiddenGlobal(module, name)


def _reconstructor(cls, base, state):
  # copy_reg._reconstructor(cls, object, None) is how protocols 0/1 rebuild new-style objects;
  # only stand-ins may be built this way (the real one would call base.__new__ and __init__).
  if isinstance(cls, type) and issubclass(cls, Stub) and base is object and state is None:
    return cls.__new__(cls)
  raise ForbiddenGlobal("copy_reg", "_reconstructor", f" of {getattr(cls, '__name__', cls)!r}")


def load(source: str | os.PathLike | IO[bytes], stubs: StubPolicy | None = None):
  """Unpickles a file (a path or a binary file object) with :class:`RestrictedUnpickler`.

  Raises:
    ForbiddenGlobal: the pickle names a global outside the allow-list that ``stubs`` refuses.
    OSError: the file cannot be read.
    pickle.UnpicklingError, EOFError, ValueError, ...: a damaged or foreign file, as
      :meth:`pickle.Unpickler.load` raises them.
  """
  if hasattr(source, "read"):
    return RestrictedUnpickler(source, stubs).load()
  with open(source, "rb") as f:
    return RestrictedUnpickler(f, stubs).load()
