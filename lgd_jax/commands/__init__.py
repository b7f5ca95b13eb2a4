"""The command lines: ``lgd-train`` (``python train.py``), ``lgd-evaluate``
(``python evaluate.py``) and ``lgd-fit`` (``python fit.py``, also ``evaluate.py --keypoints``).

Each module's ``main(argv=None) -> int`` is the console script's entry point (pyproject's
``[project.scripts]``); the repository's ``train.py``, ``evaluate.py`` and ``fit.py`` call the
same functions.
"""
