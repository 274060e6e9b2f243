"""The package as a user gets it (issue 16): built as a wheel and an sdist, installed from the wheel into a fresh
virtual environment outside the checkout, and used there: version, data cards, tutorials, training and
evaluation on generated data, a tutorial under papermill. Plus fast checks of the packaging configuration and
of ``mckd-lab tutorials`` in the development install.

The fresh environment gets the same versions as this one (a constraints file pinning every installed
distribution), so torch comes from wherever this one's came from (here the local CPU wheel) and nothing is
resolved anew; installing it is most of the slow tests' time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from setuptools import find_packages

import mckd_lab
from mckd_lab.data.cards import cards_dir, load_card
from mckd_lab.tutorials import copy_tutorials

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
TUTORIALS = sorted(
    [p.name for p in (ROOT / "notebooks").glob("0*.ipynb")]
    + ["README.md"]
    + [f"sweeps/{p.name}" for p in (ROOT / "notebooks" / "sweeps").glob("*.yaml")]
)
CARDS = sorted(p.name for p in (ROOT / "data_cards").glob("*.md"))


# --- fast: the configuration and the development install ----------------------------------------------------
def test_pyproject_lists_every_code_package_and_maps_the_data_folders():
    setuptools = PYPROJECT["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), include=["mckd_lab", "mckd_lab.*", "widgets", "widgets.*"]))
    missing = found - set(setuptools["packages"])
    assert not missing, (
        f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml (else no wheel has them)"
    )
    assert setuptools["package-dir"] == {
        "": ".",
        "mckd_lab.data_cards": "data_cards",
        "mckd_lab.notebooks": "notebooks",
    }
    for folder in (
        "data_cards",
        "notebooks",
    ):  # regular packages: editable installs map them (setuptools#4943)
        assert (ROOT / folder / "__init__.py").is_file()


def test_version_is_pyprojects():
    assert mckd_lab.__version__ == VERSION
    from mckd_lab.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--version"])
    assert stop.value.code == 0


def test_cards_come_from_the_package_data_which_is_the_checkouts_one_copy():
    assert cards_dir() == ROOT / "data_cards"  # editable install: the mapping points at the checkout
    assert load_card("brats").path == ROOT / "data_cards" / "brats.md"


def test_copy_tutorials_keeps_changed_files_unless_forced(tmp_path):
    dest = tmp_path / "my-tutorials"
    paths = copy_tutorials(dest)
    assert [p.relative_to(dest).as_posix() for p in paths] == TUTORIALS
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == TUTORIALS
    for name in TUTORIALS:
        assert (dest / name).read_bytes() == (ROOT / "notebooks" / name).read_bytes()

    assert copy_tutorials(dest) == paths  # identical files: fine
    edited = dest / "01_brats_mckd.ipynb"
    edited.write_text("my notes")
    (dest / "README.md").unlink()
    with pytest.raises(FileExistsError, match="01_brats_mckd.ipynb"):
        copy_tutorials(dest)
    assert edited.read_text() == "my notes" and not (dest / "README.md").exists()  # nothing was copied
    copy_tutorials(dest, force=True)
    assert edited.read_bytes() == (ROOT / "notebooks" / "01_brats_mckd.ipynb").read_bytes()
    assert (dest / "README.md").is_file()

    with pytest.raises(NotADirectoryError):
        copy_tutorials(edited)


# --- slow: build, install in a fresh environment, use it there ---------------------------------------------
class Env:
    """A fresh virtual environment with the wheel installed, and a work folder outside the checkout."""

    def __init__(self, root: Path, wheel: Path, sdist: Path):
        self.venv, self.work, self.wheel, self.sdist = root / "venv", root / "work", wheel, sdist
        self.work.mkdir()
        self.bin = self.venv / "bin"
        drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        self.env = {k: v for k, v in os.environ.items() if k not in drop}
        self.env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            VIRTUAL_ENV=str(self.venv),
            PYTHONNOUSERSITE="1",
            JUPYTER_PREFER_ENV_PATH="1",  # this environment's kernel, not one in the user's folders
            OMP_NUM_THREADS="1",  # tiny models on a shared CPU
        )

    def run(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [str(a) for a in args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr[-4000:]}"
        )
        return done.stdout

    def mckd(self, *args: str, timeout: float = 600) -> str:
        return self.run(self.bin / "mckd-lab", *args, timeout=timeout)


def _constraints(path: Path) -> Path:
    """Every distribution of this environment pinned (the editable mckd-lab aside): the same torch, nothing new.

    Asked of pip in a fresh process: this one's sys.path may hold vendored copies (setuptools/_vendor)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=json", "--exclude-editable"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    pins = [f"{d['name']}=={d['version']}" for d in json.loads(listed) if d["name"].lower() != "mckd-lab"]
    path.write_text("\n".join(sorted(pins)) + "\n")
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(ROOT)
    dist = root / "dist"
    # sdist, then the wheel built from the sdist (so the sdist must carry the cards and notebooks), with the
    # setuptools of this environment (the test extra has it): no build environment to download
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    env = Env(root, wheel, sdist)
    python = env.bin / "python"
    constraints = _constraints(root / "constraints.txt")
    env.run(python, "-m", "pip", "install", "--quiet", "--no-compile", "-c", constraints, wheel, timeout=1200)
    env.run(python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3")
    yield env
    shutil.rmtree(env.venv, ignore_errors=True)  # 1.4 GB (torch); pytest keeps its last runs' folders


@pytest.mark.slow
def test_wheel_and_sdist_pass_twine_check_and_carry_the_data(installed):
    out = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(installed.wheel), str(installed.sdist)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.count("PASSED") == 2, out.stdout + out.stderr
    assert installed.wheel.name == f"mckd_lab-{VERSION}-py3-none-any.whl"
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {f"mckd_lab/data_cards/{c}" for c in CARDS} <= names
    assert {f"mckd_lab/notebooks/{t}" for t in TUTORIALS} <= names
    assert not [n for n in names if "__pycache__" in n or "/runs/" in n or "checkpoint" in n]
    print(f"wheel {installed.wheel.name}: {installed.wheel.stat().st_size} bytes")


@pytest.mark.slow
def test_installed_version_and_files(installed):
    assert installed.mckd("--version").strip() == f"mckd-lab {VERSION}"
    where = installed.run(
        installed.bin / "python",
        "-c",
        "import mckd_lab; print(mckd_lab.__version__); print(mckd_lab.__file__)",
    ).split()
    assert where[0] == VERSION
    assert Path(where[1]).is_relative_to(installed.venv)  # the wheel's copy, not the checkout
    shown = installed.run(installed.bin / "python", "-m", "pip", "show", "-f", "mckd-lab")
    files = {line.strip() for line in shown.splitlines()}
    assert {f"mckd_lab/data_cards/{c}" for c in CARDS} <= files
    assert {f"mckd_lab/notebooks/{t}" for t in TUTORIALS} <= files


@pytest.mark.slow
def test_installed_cli_trains_and_evaluates_on_phantoms_and_a_cohort(installed):
    installed.mckd(
        "train", "--size", "32", "--cases", "8", "--iterations", "4", "--batch", "2", "--out", "runs/brats"
    )
    brats = json.loads(installed.mckd("evaluate", "runs/brats", "--json"))
    assert len(brats["subsets"]) == 15 and (installed.work / "runs/brats/metrics.json").is_file()

    installed.mckd("cohort", "--out", "adni/ADNIMERGE.csv", "--subjects", "200")
    installed.mckd(
        "train", "--task", "adni", "--data", "adni/ADNIMERGE.csv", "--epochs", "1", "--out", "runs/adni"
    )
    adni = json.loads(installed.mckd("evaluate", "runs/adni", "--json"))
    assert len(adni["subsets"]) == 15 and adni["protocol"]["task"] == "adni"


@pytest.mark.slow
def test_installed_tutorials_copy_and_run_under_papermill(installed):
    said = installed.mckd("tutorials", "tut")
    assert "jupyter lab tut" in said
    copied = sorted(
        p.relative_to(installed.work / "tut").as_posix() for p in (installed.work / "tut").rglob("*")
    )
    assert [p for p in copied if p != "sweeps"] == TUTORIALS
    kernel = installed.run(
        installed.bin / "python", "-c",
        "from jupyter_client.kernelspec import KernelSpecManager as M; print(M().get_kernel_spec('python3').argv[0])",
    ).strip()  # fmt: skip
    assert Path(kernel).is_relative_to(installed.venv), kernel
    # the run goes where the notebook says, relative to the notebook's own folder (the kernel's cwd)
    installed.mckd(
        "run", "tut/01_brats_mckd.ipynb", "--out", "executed/01",
        "-p", "cases", "8", "-p", "iterations", "4", "-p", "run_dir", "runs/01_brats_mckd",
    )  # fmt: skip
    executed = installed.work / "executed/01/01_brats_mckd.ipynb"
    errors = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]  # fmt: skip
    assert not errors
    assert (installed.work / "tut/runs/01_brats_mckd/metrics.json").is_file()
