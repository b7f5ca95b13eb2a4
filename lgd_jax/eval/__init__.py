"""Evaluation: restoring a learner, held-out evaluation against classical methods, the benchmark
protocols, the convergence analysis, fitting detection files, and the reports (tables, results.json,
plots, renders). Never imports :mod:`lgd_jax.train`."""
