"""Package data, not code: the data cards, installed as ``mckd_lab.data_cards`` (pyproject.toml maps this folder).

A regular package (this file) rather than a namespace one, so that editable installs find it too (setuptools
cannot map a nested namespace package in editable mode: pypa/setuptools#4943). Read through
``mckd_lab.data.cards``.
"""
