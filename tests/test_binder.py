"""binder/: Binder builds what the test suite ran with. Every runtime dependency of pyproject.toml, and all they
pull in, is pinned in binder/requirements.txt at the version installed in the environment running these tests
(the one `make test` installs); torch is the CPU build from PyTorch's CPU index. The Binder-like run of every
notebook (binder/binder_check.py: a fresh environment from binder/ alone, 2 GB) takes tens of minutes and is
not run here; its result is recorded in notebooks/README.md."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def _pin_module():
    spec = importlib.util.spec_from_file_location("pin_requirements", BINDER / "pin_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_pin_exactly_the_tested_environment():
    pin = _pin_module()
    problems = pin.differences()
    assert not problems, (
        "binder/requirements.txt differs from the environment the tests run in; write it again with "
        "`.venv/bin/python binder/pin_requirements.py`:\n  " + "\n  ".join(problems)
    )
    pins = pin.read_pins()
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), "every line is name==version"
    runtime = {pin.canonical(r.name) for r in pin.runtime_requirements()}
    assert runtime <= set(pins), f"runtime dependencies missing: {sorted(runtime - set(pins))}"
    assert pins["torch"].endswith("+cpu"), "Binder's torch is the CPU build (no CUDA libraries in the image)"
    assert not {"pytest", "playwright", "ruff", "nbval", "twine"} & set(pins), "test tools stay out of Binder"


def test_runtime_python_and_postbuild():
    import sys

    assert (BINDER / "runtime.txt").read_text().strip() == f"python-{sys.version_info.major}.{sys.version_info.minor}"
    post = (BINDER / "postBuild").read_text()
    assert "pip install" in post and "-e ." in post  # the checkout itself, so notebooks find data_cards/


def test_the_binder_check_uses_binder_alone():
    """The Docker-free check builds from binder/ (requirements, then postBuild) and limits memory to 2 GB."""
    text = (BINDER / "binder_check.py").read_text()
    assert 'BINDER / "requirements.txt"' in text and 'BINDER / "postBuild"' in text
    assert 'default="2G"' in text and "memory_info().rss" in text  # the whole tree's resident memory
    names = re.findall(r'"(0\d_[a-z_]+)"', re.search(r"\nNOTEBOOKS = \[(.*?)\]", text)[1])
    assert names == sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))  # every notebook, in order
