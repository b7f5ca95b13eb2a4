"""The quick-start fit demo runs end to end, lowers the objective and writes its plot."""

import json

import jax
import numpy as np

from lgd_jax import fit_demo, body


def test_fit_demo_lowers_the_objective(tmp_path, capsys):
  fit_demo.fit_chunk.clear_cache()
  # 30 steps run as chunks of 20 and 10: one compiled program serves both.
  assert fit_demo.main(["--out-dir", str(tmp_path), "--batch", "8", "--iters", "30",
                        "--lr", "0.05"]) == 0
  curves = json.loads((tmp_path / "curves.json").read_text())
  assert len(curves["reproj_l1"]) == 30 and np.isfinite(curves["mpjpe_mm"]).all()
  assert curves["reproj_l1"][-1] < 0.5 * curves["reproj_l1"][0]
  assert (tmp_path / "convergence.png").stat().st_size > 10_000
  assert "step   30/30" in capsys.readouterr().out
  assert fit_demo.fit_chunk._cache_size() == 1


def test_objective_gradient_is_finite_at_the_zero_pose():
  model = body.tiny_model()
  _, _, _, kp2d, conf = fit_demo.sample_targets(model, jax.random.PRNGKey(0), 4)
  params = (np.zeros((4, 72), np.float32), np.zeros((4, 10), np.float32))
  grads, _ = jax.vmap(jax.grad(fit_demo.reprojection_loss, has_aux=True),
                      in_axes=(0, None, 0, 0))(
      params, model, kp2d, conf)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert float(np.abs(np.asarray(grads[0])).sum()) > 0


def test_bad_arguments_exit_2(capsys):
  assert fit_demo.main(["--batch", "0"]) == 2
  assert "must be positive" in capsys.readouterr().err
