"""Training the learned optimiser: the unroll plan, the loss, the jitted step, the loop with its
signals and metric writer. Never imports :mod:`lgd_jax.eval`.

    from lgd_jax import train
    train.train_and_evaluate(config, workdir)
"""

from lgd_jax.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
