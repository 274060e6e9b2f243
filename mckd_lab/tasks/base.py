"""The Task protocol (L3): everything that differs between problems, so that no other code asks which it is.

A task is built from nothing (``make_task(name)``) and holds no state of a run. Its members, in the order a
run meets them:

=====================  ===============================================================================
``name``               the registry name written in ``data.task`` (``brats``, ``adni``, ...)
``modalities``         modality names, card order; ``score_names``: what ``scores`` returns
``config(...)``        a validated RunConfig with this task's CPU-sized recipe (notebooks and the CLI)
``validate(config)``   task-specific checks of a RunConfig: a list of messages (empty when fine)
``prepare_data``       the data a run reads: the user's folder/file, or synthetic data generated in the run
``setup``              splits, datasets, the loss (class weights fitted on the training split) -> ``Setup``
``build_model``        the network of the model contract (``encode``, ``encode_zero``, ``decode``)
``make_loss``          the task loss ``(logits, target) -> scalar``; ``scores``: per-output scores, higher
                       is better (LCKD's election); ``probabilities``: logits -> probabilities
``infer``              the inferer: probabilities of one case for many subsets (sliding windows over a
                       volume, one direct pass over a table row), encoding once
``cases(run, split)``  the cases of a split of a trained run, as views and notebooks take them
``evaluate(run, data)`` the JSON-ready all-subsets result; ``render_table``: it as text;
                       ``table_arrays``: its rows x columns of values for a heatmap
``predict(run, ...)``  one case or subject; ``explain(run, ...)``: its attributions
=====================  ===============================================================================

A third task is one new file with a subclass of :class:`Task`, registered in ``mckd_lab.tasks.TASKS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Setup:
    """What ``Task.setup`` gives the trainer: training and held-out (meta) datasets yielding batch-contract
    items, the case ids of every split (written to ``splits.json``), and the task loss of this run."""

    train: torch.utils.data.Dataset
    heldout: torch.utils.data.Dataset
    cases: dict[str, list[str]]
    loss: Loss
    files: dict[str, Any] = field(default_factory=dict)  # other JSON files of the run (e.g. scaler.json)


def split_ids(case_ids: list[str], heldout: int, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Shuffle sorted ids with ``seed``; the first ``round(test_fraction * N)`` are ``test``, the next
    ``heldout`` are ``heldout`` (meta split), the rest ``train`` (each list sorted)."""
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = round(test_fraction * len(ids))
    if len(ids) - n_test - heldout < 1:
        raise ValueError(
            f"{len(ids)} cases cannot give {n_test} test + {heldout} held-out cases and still leave one for "
            "training: lower data.heldout_cases or data.test_fraction, or give more cases"
        )
    shuffled = [ids[i] for i in order]
    parts = {"test": shuffled[:n_test], "heldout": shuffled[n_test : n_test + heldout],
             "train": shuffled[n_test + heldout :]}  # fmt: skip
    return {k: sorted(v) for k, v in parts.items()}


class Task(ABC):
    """The protocol; see the module docstring. Subclasses set ``name``, ``modalities``, ``score_names``."""

    name: str
    modalities: tuple[str, ...]
    score_names: tuple[str, ...]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, modalities={self.modalities})"

    @abstractmethod
    def config(self, data: str | Path | None = None, **options):
        """A validated RunConfig of this task's recipe; ``data`` the user's data or None for synthetic."""

    def validate(self, config) -> list[str]:
        """Messages for the fields of ``config`` this task cannot run with (empty: fine)."""
        return []

    def validated(self, config):
        """``config`` checked once, generic fields and this task's together; raises ValueError naming each
        field that is wrong. Returns ``config``."""
        return config.validate(extra=self.validate(config))

    @abstractmethod
    def prepare_data(self, data_config, run_dir: str | Path) -> Path:
        """``data.root``, or synthetic data generated into the run folder the first time (reused after)."""

    @abstractmethod
    def setup(self, data_config, run_dir: str | Path) -> Setup:
        """Read the data, split it, fit what is fitted on the training split; nothing is stored on the task."""

    @abstractmethod
    def build_model(self, model_config) -> torch.nn.Module: ...

    @abstractmethod
    def make_loss(self, class_weights: torch.Tensor | None = None) -> Loss: ...

    @abstractmethod
    def scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(R,) scores of a batch, one per ``score_names``, higher is better."""

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def infer(self, model: torch.nn.Module, image, subsets, config) -> torch.Tensor:
        """(S, C, ...) probabilities of one case (its ``image``) for each of the S ``subsets``."""

    @abstractmethod
    def cases(self, run, split: str = "test") -> list: ...

    @abstractmethod
    def evaluate(self, run, data: str | Path | None = None, **options) -> dict: ...

    @abstractmethod
    def render_table(self, result: dict) -> str: ...

    @abstractmethod
    def table_arrays(self, result: dict) -> tuple[list[str], list[str], np.ndarray, str]:
        """(row names, column names, values (rows, columns) in %, what the values are) of a result."""

    @abstractmethod
    def predict(self, run, **options): ...

    @abstractmethod
    def explain(self, run, **options) -> dict: ...
