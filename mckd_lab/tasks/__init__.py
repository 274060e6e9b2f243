"""Tasks (L3): the Task protocol (``base``) and one file per kind of problem; the registry of task names.

``make_task(config.data.task)`` is how every other module reaches what differs between problems; nothing
outside this package asks which task it is. A new task is a new ``Task`` subclass registered in ``TASKS``.
"""

from __future__ import annotations

from mckd_lab.method.strategies import STRATEGIES
from mckd_lab.tasks.base import Setup, Task, split_ids
from mckd_lab.tasks.classification import (
    ClassificationTask,
    CognitiveClassificationTask,
    T1ClassificationTask,
)
from mckd_lab.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (SegmentationTask, ClassificationTask, CognitiveClassificationTask, T1ClassificationTask)
}
DEFAULT_TASK = SegmentationTask.name  # what a result or config written before ``task`` was recorded is

__all__ = ["TASKS", "Setup", "Task", "make_task", "split_ids", "task_of", "validate_config"]


def make_task(name: str) -> Task:
    """The task for a data config's ``task`` field."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()


def task_of(result: dict) -> Task:
    """The task that produced an evaluation result (``metrics.json``). Results written before they named
    their task: ADNI ones name it in their protocol, BraTS ones nowhere (the default task)."""
    name = result.get("task") or result.get("protocol", {}).get("task") or DEFAULT_TASK
    return make_task(name)


def validate_config(config):
    """``config`` checked once at the boundary: the method and task names, the shared fields and the task's
    own; raises ValueError naming each field that is wrong. Returns ``config``."""
    if config.method.name not in STRATEGIES:
        raise ValueError(
            f"invalid configuration: method.name {config.method.name!r} is not one of {', '.join(STRATEGIES)}"
        )
    return make_task(config.data.task).validated(config)
