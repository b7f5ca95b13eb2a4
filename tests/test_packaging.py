"""Packaging: the declared dependencies are what the package imports."""

import ast
import importlib.metadata
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "lgd_jax")


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
  tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _imported_modules() -> dict[str, str]:
  """Top-level third-party modules imported anywhere in lgd_jax -> a file importing it."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names = [node.module]
        else:
          continue
        for module in names:
          top = module.split(".")[0]
          if top not in sys.stdlib_module_names and top not in ("lgd_jax", "__future__"):
            found.setdefault(top, os.path.relpath(path, REPO))
  return found


def test_dependencies_are_what_the_package_imports():
  declared = {_normalise(re.match(r"[A-Za-z0-9_.-]+", d).group(0))
              for d in _pyproject()["project"]["dependencies"]}
  providers = importlib.metadata.packages_distributions()
  used = set()
  for module, where in sorted(_imported_modules().items()):
    dists = {_normalise(d) for d in providers.get(module, ())}
    assert dists, f"{where} imports {module}, which no installed distribution provides"
    assert dists & declared, (f"{where} imports {module} (from {sorted(dists)}), which is not in "
                              "pyproject.toml's dependencies")
    used |= dists & declared
  assert not declared - used, f"declared but never imported: {sorted(declared - used)}"
