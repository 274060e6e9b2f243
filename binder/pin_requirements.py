"""Write binder/requirements.txt from the environment the test suite ran in: every runtime dependency of
pyproject.toml and everything they pull in, each pinned to the installed version, so that Binder builds what
was tested. Test-only packages (pytest, playwright, ...) stay out unless a runtime dependency needs them.

    .venv/bin/python binder/pin_requirements.py            # rewrite binder/requirements.txt
    .venv/bin/python binder/pin_requirements.py --check    # exit 1 and list the differences

tests/test_binder.py runs the check, so a new dependency or an upgraded one fails the suite until the pins are
written again.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "binder" / "requirements.txt"
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
HEADER = f"""\
# Binder (repo2docker) image: CPU-only, every notebook runs with its default parameters in < 2 GB.
# Written by binder/pin_requirements.py from the environment `make test` ran in: the runtime dependencies of
# pyproject.toml and all they pull in, each at the version tested (tests/test_binder.py keeps them in step).
# torch comes from PyTorch's CPU index (no CUDA libraries: a much smaller image). postBuild then installs the
# package itself with `pip install -e .`.
{TORCH_INDEX}
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[Requirement]:
    """pyproject.toml's ``[project] dependencies`` (a plain TOML array: tomllib is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return [Requirement(r) for r in ast.literal_eval(re.search(r"\ndependencies = (\[.*?\])", text, re.S)[1])]


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """{canonical name: installed version} of ``requirements`` and, recursively, of what they require (markers
    evaluated for this interpreter, no extras). A requirement that is not installed is an error naming it."""
    found: dict[str, str] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name in found:
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            raise SystemExit(
                f"{requirement.name} is required but not installed here: run `make setup` first"
            ) from None
        found[name] = dist.version
        for line in dist.requires or ():
            child = Requirement(line)
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                todo.append(child)
    return found


def pinned_lines() -> list[str]:
    """``name==version`` for the whole runtime closure, sorted; torch first (the CPU build)."""
    versions = closure(runtime_requirements())
    names = sorted(versions, key=lambda n: (n != "torch", n))
    return [f"{n}=={versions[n]}" for n in names]


def read_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{canonical name: version} of the ``name==version`` lines of a requirements file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            specs = list(requirement.specifier)
            pins[canonical(requirement.name)] = specs[0].version if len(specs) == 1 and specs[0].operator == "==" else str(requirement.specifier)
    return pins


def differences() -> list[str]:
    """What binder/requirements.txt would change to match this environment ([] when it matches)."""
    wanted = dict(line.split("==") for line in pinned_lines())
    given = read_pins()
    out = [f"{n}: pinned {given.get(n, 'nothing')}, tested {v}" for n, v in wanted.items() if given.get(n) != v]
    out += [f"{n}: pinned {v}, not a runtime dependency here" for n, v in given.items() if n not in wanted]
    if TORCH_INDEX not in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        out.append(f"the line {TORCH_INDEX!r} is missing (torch must come from the CPU index)")
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = differences()
        print("\n".join(problems) or f"{REQUIREMENTS} matches this environment")
        return 1 if problems else 0
    REQUIREMENTS.write_text(HEADER + "\n".join(pinned_lines()) + "\n", encoding="utf-8")
    print(f"wrote {REQUIREMENTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
