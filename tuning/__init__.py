"""Hyperparameter search over lambda and margin with keras-tuner (installed as ``disentangled_ml.tuning``).

* :mod:`.hypermodel`: :class:`SearchSpace` (lambda grid incl. 0, margin, learning rate,
  optional width, objective) and :class:`DisentangledHyperModel` (hyperparameters ->
  full :class:`~disentangled_ml.config.Config` -> compiled ``TripletModel``).
* :mod:`.search`: :func:`run_search` (one process, or a keras-tuner chief / worker),
  resumable in its folder, with per-trial TensorBoard HParams runs; :func:`summarize`
  reads a search folder and writes ``results.csv``, ``results.json`` and ``best.json``.

The command line is ``dml tune`` (:mod:`disentangled_ml.cli.tune`). The submodules import
TensorFlow and keras-tuner, so this package imports them lazily.
"""

__all__ = ["SearchSpace", "DisentangledHyperModel", "run_search", "summarize", "format_table"]


def __getattr__(name):
    if name in ("SearchSpace", "DisentangledHyperModel"):
        from disentangled_ml.tuning import hypermodel

        return getattr(hypermodel, name)
    if name in ("run_search", "summarize", "format_table"):
        from disentangled_ml.tuning import search

        return getattr(search, name)
    raise AttributeError(f"module 'disentangled_ml.tuning' has no attribute {name!r}")
