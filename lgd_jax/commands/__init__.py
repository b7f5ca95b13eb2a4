"""The command lines: ``lgd-train`` (``python train.py``) and ``lgd-evaluate``
(``python evaluate.py``).

Each module's ``main(argv=None) -> int`` is the console script's entry point (pyproject's
``[project.scripts]``); the repository's ``train.py`` and ``evaluate.py`` call the same functions.
"""
