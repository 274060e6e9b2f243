"""Package data, not code: the tutorials, installed as ``mckd_lab.notebooks`` (pyproject.toml maps this folder).

This file makes the folder a regular package, which editable installs can map (pypa/setuptools#4943).
``mckd-lab tutorials DIR`` copies the notebooks, their sweep specs and README.md out of the package.
"""
