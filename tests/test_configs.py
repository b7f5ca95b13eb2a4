"""The shipped configs: which training scheme each uses, and the one-line switch to the
convergent one."""

import importlib.util
import os

import pytest

from lgd_jax import config as cfg
from lgd_jax.data import augment

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _module(name):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(CONFIGS, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _get(c, key):
  for part in key.split("."):
    c = c[part]
  return c


def _is_convergent(c):
  return all(_get(c, k) == v for k, v in cfg.CONVERGENT.items())


@pytest.mark.parametrize("name", ["paper", "official"])
def test_paper_and_official_train_the_published_scheme_unless_asked(name):
  mod = _module(name)
  published = mod.get_config()
  assert published.objective_loss == "l1" and not _is_convergent(published)
  assert published.unroll.late_fraction == 0 and published.unroll.fixed_point_fraction == 0
  assert not augment.settings_from(published.detector).enabled
  switched = mod.get_config("convergent")
  assert _is_convergent(switched)
  # Only the scheme's fields differ.
  flat_p, flat_s = _flatten(published.to_dict()), _flatten(switched.to_dict())
  assert {k for k in flat_p if flat_p[k] != flat_s[k]} <= set(cfg.CONVERGENT)
  with pytest.raises(ValueError, match="training scheme"):
    mod.get_config("fast")


def test_paper_converge_is_paper_convergent():
  assert _module("paper_converge").get_config().to_dict() == \
      _module("paper").get_config("convergent").to_dict()


def test_demo_is_convergent_with_detector_inputs():
  demo = _module("demo")
  c = demo.get_config()
  assert _is_convergent(c)
  s = augment.settings_from(c.detector)
  assert s.enabled and all(getattr(s, k) > 0 for k in augment.KNOBS)
  ref = demo.get_config("published")
  assert not _is_convergent(ref) and not augment.settings_from(ref.detector).enabled
  assert (c.batch_size, c.steps_per_epoch * c.num_epochs) == (256, 1000)  # the quick start's budget


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
