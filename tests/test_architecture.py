"""The house rules of DESIGN.md, checked on the code: layers without cycles, no task branching outside tasks/.

Layers (``mckd_lab/__init__.py`` states them): a module imports only from layers below its own. Within L4
and L5 the order is finer, stated by the fractional layer: ``runs`` reads a run back, the trainer and
``evaluate`` use it; ``recipes`` trains, ``experiments`` re-exports the recipes, ``demo`` and ``cli`` sit on
top.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mckd_lab"

LAYERS = {
    "mckd_lab": 0, "mckd_lab.config": 0, "mckd_lab.rundir": 0.5, "mckd_lab.slowdown": 0, "mckd_lab.data.cards": 0,
    "mckd_lab.data.missing": 0,
    "mckd_lab.distributed": 0.5,
    "mckd_lab.data": 1, "mckd_lab.method": 1, "mckd_lab.losses": 1, "mckd_lab.models": 1.5,
    "mckd_lab.metrics": 2, "mckd_lab.infer": 2.1, "mckd_lab.explain": 2.2,
    "mckd_lab.study": 2.3,
    "mckd_lab.tasks": 3,
    "mckd_lab.runs": 4, "mckd_lab.train": 4.5, "mckd_lab.evaluate": 4.5,
    "mckd_lab.recipes": 5, "mckd_lab.tutorials": 5, "mckd_lab.clusters": 5,
    "mckd_lab.experiments": 5.5, "mckd_lab.classification": 5.5,
    "mckd_lab.demo": 5.5, "mckd_lab.cli": 6,
}  # fmt: skip
# inside a sub-package, the few modules that others of the same package build on
INNER = {
    "mckd_lab.tasks.base": 3, "mckd_lab.tasks.segmentation": 3.1, "mckd_lab.tasks.classification": 3.1,
    "mckd_lab.tasks": 3.2,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> float:
    if name in INNER:
        return INNER[name]
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{name} has no layer: add it to LAYERS (and to mckd_lab/__init__.py)")


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported mckd_lab module, line) for every import in the file, function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mckd_lab"):
            for alias in node.names:  # `from mckd_lab.x import y` may import the module mckd_lab.x.y
                sub = f"{node.module}.{alias.name}"
                found.append((sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module,
                              node.lineno))  # fmt: skip
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("mckd_lab")]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def package_of(name: str) -> str:
    """``mckd_lab.data`` for ``mckd_lab.data.brats`` and ``mckd_lab.data`` itself; else the module."""
    parts = name.split(".")
    return ".".join(parts[:2])


def test_every_module_imports_only_from_layers_below_its_own():
    """Below, or inside its own sub-package (``data``, ``method``, ``models``, ``tasks``: their order is the
    acyclic graph of the next test, and ``INNER`` for ``tasks``)."""
    wrong = []
    for path in MODULES:
        me = module_name(path)
        for target, line in imports(path):
            if target == "mckd_lab" or layer(target) < layer(me):
                continue
            if package_of(target) == package_of(me) and not (me in INNER and layer(target) > layer(me)):
                continue
            wrong.append(
                f"{path.relative_to(ROOT)}:{line} (L{layer(me)}) imports {target} (L{layer(target)})"
            )
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(set(wrong)))


def test_the_import_graph_has_no_cycle():
    graph = {module_name(p): {t for t, _ in imports(p)} for p in MODULES}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(node) :], node]))
        if state.get(node) == 2 or node not in graph:
            return
        state[node] = 1
        for nxt in graph[node] - {node, "mckd_lab"}:
            visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        visit(name, [])


def test_the_library_never_imports_the_ui_layer():
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            for name in names:
                assert not re.match(r"(ipywidgets|plotly|IPython|jupyter|widgets)\b", name), f"{path}: {name}"


TASK_QUESTIONS = [
    r"""(==|!=)\s*["'](brats|adni|adni-t1|adni-cognitive)["']""",  # task == "brats"
    r"""["'](brats|adni|adni-t1|adni-cognitive)["']\s*(==|!=|in\b)""",
    r"""\.task\.startswith\(""",
    r"""isinstance\([^)]*(SegmentationTask|ClassificationTask)""",
    r"""["'](classes|regions)["']\s+in\s+\w+""",  # "classes" in result
    r"""logits\.ndim\s*==""",
]


@pytest.mark.parametrize("folder", ["mckd_lab", "widgets"])
def test_no_code_outside_tasks_asks_which_task_it_is(folder):
    hits = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if path.is_relative_to(PACKAGE / "tasks"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            hits += [
                f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for p in TASK_QUESTIONS if re.search(p, line)
            ]
    assert not hits, "code outside mckd_lab/tasks/ branches on the task:\n" + "\n".join(hits)


def test_the_grep_finds_a_task_question_when_there_is_one():
    code = 'if config.data.task == "brats":\n    pass\nif "classes" in result: pass\n'
    assert sum(bool(re.search(p, line)) for line in code.splitlines() for p in TASK_QUESTIONS) == 2
