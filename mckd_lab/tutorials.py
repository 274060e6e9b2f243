"""The tutorials shipped with the package: copy them into a folder of the user's to open or run them there.

The five notebooks, their sweep specs (``sweeps/*.yaml``) and their README live in the repository's top-level
``notebooks/`` and are installed as the package data ``mckd_lab.notebooks`` (see pyproject.toml). Each notebook
finds its data and writes its runs relative to its own folder (papermill and JupyterLab run the kernel there),
so a copy works wherever it is put.
"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

PATTERNS = ("0*.ipynb", "README.md", "sweeps/*.yaml")


def tutorial_files() -> dict[str, Path]:
    """The installed tutorial files by their path relative to the tutorials folder (``sweeps/quick.yaml``)."""
    try:
        root = Path(str(importlib.resources.files("mckd_lab.notebooks")))
    except ModuleNotFoundError:
        root = None
    files = (
        {}
        if root is None
        else {p.relative_to(root).as_posix(): p for pat in PATTERNS for p in root.glob(pat)}
    )
    if not any(name.endswith(".ipynb") for name in files):
        raise FileNotFoundError(
            "mckd-lab's tutorials, the package data mckd_lab.notebooks, are missing: this installation is "
            "incomplete; reinstall mckd-lab (pip install mckd-lab, or pip install -e . in a checkout)"
        )
    return dict(sorted(files.items()))


def copy_tutorials(dest: str | Path, force: bool = False) -> list[Path]:
    """Copy the notebooks, ``sweeps/*.yaml`` and README.md into ``dest`` (created if needed).

    A file already in ``dest`` with the same content is left as it is; one whose content differs is an error
    (``FileExistsError`` naming every such file, before anything is copied) unless ``force`` replaces it.
    Returns the paths of all the tutorial files in ``dest``, in name order.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} is a file; name a folder for the tutorials")
    plan = {dest / name: source for name, source in tutorial_files().items()}
    differing = [
        target
        for target, source in plan.items()
        if target.exists() and target.read_bytes() != source.read_bytes()
    ]
    if differing and not force:
        raise FileExistsError(
            f"{len(differing)} file(s) in {dest} differ from the shipped tutorials: "
            f"{', '.join(str(p.relative_to(dest)) for p in differing)}; keep your changes by choosing another "
            "folder, or pass --force (force=True) to replace them"
        )
    for target, source in plan.items():
        if target.exists() and target.read_bytes() == source.read_bytes():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return list(plan)
