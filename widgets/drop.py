"""Modality drop explorer: tick the modalities present, see what the network predicts and what it loses.

The case is encoded once (``model.encode`` of every modality and ``model.encode_zero``, the response to a
missing one); each toggle only decodes: ``model.decode(encoded.where(present, zero), present)``, which equals
``model(image * present, present)`` (missing inputs zeroed, their bottlenecks filled with the mean of the
present ones, their skips the zero response) at the cost of one decoder pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from torch import nn

from mckd_lab.data.cards import Card, load_card
from mckd_lab.infer import THRESHOLD
from mckd_lab.metrics import dice
from mckd_lab.tasks import Task, make_task

from ._base import View, live_figure, sync_figure, title_layout
from .viewer import DISPLAY_MIN, SegmentationViewer


def padded_batch(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """(M, D, H, W) -> a (1, M, D', H', W') float32 batch on the model's device, zero-padded at the end of
    each axis to a multiple of the network's output stride (the decoder needs whole multiples)."""
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32, device=next(model.parameters()).device)[None]
    stride = model.output_stride
    pad = [(-s) % stride for s in x.shape[2:]]
    return F.pad(x, [p for axis in reversed(pad) for p in (0, axis)])


@contextmanager
def limit_threads(threads: int | None):
    """Run the block with ``threads`` torch (intra-op) threads, then restore the setting; None: unchanged."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ModalityDropExplorer(View):
    """A checkbox per modality; each toggle re-runs the decoder on the cached encodings of one case.

    Args:
        model: a network of the model contract (``encode``, ``encode_zero``, ``decode``), in eval mode.
        image: segmentation: (M, D, H, W) float, e.g. ``Case.image`` (any size: padded for the network and
            cropped back); classification: {modality: (F_m,)} float features of one subject.
        target: segmentation: (R, D, H, W) region masks in card channel order (ET, WT, TC); classification:
            the class id. Optional: without it no Dice / true class is shown.
        available: (M,) bools, the modalities the case has (default all); the others cannot be ticked.
        card: the data card naming modalities, regions and classes (default: the task's, else ``brats``).
        task: the run's task (``run.task``): its logits -> probabilities rule (default: the card's task).
        names: the modality names when they are not the card's (task ``adni-t1``: ``mri`` for ``imaging``).
        threads: torch threads while encoding and on each toggle (None: torch's setting). One by default: a
            48^3 decode gains little from more, and on a busy machine OpenMP threads waiting on each other
            make a toggle several times slower (benchmarks/results/widgets.json).
        display_min: segmentation: the viewer draws a case with a side under this many voxels enlarged (see
            ``SegmentationViewer``); None: as it is. Dice is always computed on the case's own voxels.
    """

    def __init__(
        self,
        model: nn.Module,
        image: np.ndarray | Mapping[str, np.ndarray],
        target: np.ndarray | int | None = None,
        available: Sequence[bool] | None = None,
        card: Card | None = None,
        title: str = "",
        threads: int | None = 1,
        names: Sequence[str] | None = None,
        task: Task | None = None,
        display_min: int | None = DISPLAY_MIN,
    ):
        self.card = card or (task.card if task is not None else load_card("brats"))
        self.probabilities_of = (task or make_task(self.card.name)).probabilities
        self.names = tuple(names) if names is not None else self.card.modality_names
        if tuple(model.modalities) != self.names:
            raise ValueError(
                f"the model's modalities {model.modalities} differ from {self.names} (card "
                f"{self.card.name!r}); pass the task's modality names as names="
            )
        self.model = model.eval()
        self.classification = isinstance(image, Mapping)
        self.target, self.title, self.threads = target, title, threads
        self.available = tuple(
            bool(a) for a in (available if available is not None else [True] * len(self.names))
        )
        self.present = self.available
        with limit_threads(threads), torch.inference_mode():
            x = self._batch(image)
            self.encoded, self.zero = model.encode(x), model.encode_zero(x)
            self.full = self.predict(self.available)
        self.probabilities = self.full
        self.full_dice = self.dice()
        if not self.classification:
            descriptions = {r["name"]: r["description"] for r in self.card.header.get("regions", ())}
            self.viewer = SegmentationViewer(
                image, self.names, self.card.region_names, target, self.full > THRESHOLD, title=title,
                display_min=display_min, descriptions=descriptions,
            )  # fmt: skip
            self.viewer.set_sequences(self._ticked_names(self.present))

    def _batch(self, image) -> torch.Tensor | dict[str, torch.Tensor]:
        """One-sample batch on the model's device; volumes zero-padded to a multiple of the output stride."""
        device = next(self.model.parameters()).device
        if self.classification:
            return {
                m: torch.as_tensor(np.asarray(image[m]), dtype=torch.float32, device=device)[None]
                for m in self.names
            }
        self.shape = tuple(np.shape(image)[1:])
        return padded_batch(self.model, image)

    @torch.inference_mode()
    def predict(self, present: Sequence[bool]) -> np.ndarray:
        """Probabilities with ``present`` modalities: (3, D, H, W) sigmoid per region or (K,) softmax."""
        keep = torch.tensor([bool(p) for p in present], device=self.encoded.bottleneck.device)[None]
        if not keep.any():
            raise ValueError(
                "tick at least one modality: the network needs one present modality to fill from"
            )
        out = self.probabilities_of(self.model.decode(self.encoded.where(keep, self.zero), keep).logits)[0]
        if not self.classification:
            out = out[(slice(None), *(slice(0, s) for s in self.shape))]
        return out.float().cpu().numpy()

    def select(self, present: Sequence[bool]) -> None:
        """Show the prediction with ``present`` modalities (M bools, card order); ticks the checkboxes."""
        present = tuple(bool(p) for p in present)
        lacking = [m for m, p, a in zip(self.names, present, self.available, strict=True) if p and not a]
        if lacking:
            raise ValueError(f"this case has no {', '.join(lacking)}; it has {self._join(self.available)}")
        with limit_threads(self.threads):
            self.probabilities = self.predict(present)
            self.present = present
            if not self.classification:
                self.viewer.set_prediction(self.probabilities > THRESHOLD)
                self.viewer.set_sequences(self._ticked_names(present))  # a missing sequence is not shown
            if "widget" in self.__dict__:
                self._set_ticks(present)
                self._report.value = self.report_html()
                if self.classification:
                    sync_figure(self._live, self.figure())

    def _ticked_names(self, mask: Sequence[bool]) -> list[str]:
        return [m for m, p in zip(self.names, mask, strict=True) if p]

    def _join(self, mask: Sequence[bool]) -> str:
        return ", ".join(self._ticked_names(mask)) or "none"

    def filled(self) -> tuple[str, ...]:
        """The modalities whose bottleneck is filled (mean of the present ones) in the current prediction."""
        return tuple(m for m, p in zip(self.names, self.present, strict=True) if not p)

    def dice(self) -> dict[str, float] | None:
        """Dice per region (report order) of the current prediction against the target; None without one."""
        if self.classification or self.target is None:
            return None
        values = dice(self.probabilities > THRESHOLD, np.asarray(self.target).astype(bool))
        by_region = dict(zip(self.card.region_names, values, strict=True))
        return {
            r: float(by_region[r]) for r in self.card.header.get("report_regions", self.card.region_names)
        }

    def report_html(self) -> str:
        """Present and filled modalities, then the Dice per region or the class probabilities, as HTML."""
        lines = [
            f"<b>present</b>: {self._join(self.present)} &nbsp; <b>filled</b> (mean of the present "
            f"bottlenecks): {', '.join(self.filled()) or 'none'}"
        ]
        if self.classification:
            cells = "".join(
                f"<td>{c}: {100 * p:.1f}% <small>(all available {100 * f:.1f}%)</small></td>"
                for c, p, f in zip(self._classes(), self.probabilities, self.full, strict=True)
            )
            lines.append(f"<table class='mckd-probabilities'><tr>{cells}</tr></table>")
        elif (scores := self.dice()) is not None:
            cells = "".join(
                f"<td>Dice {r}: <span class='mckd-dice-{r}'>{v:.3f}</span> "
                f"<small>(all available {self.full_dice[r]:.3f})</small></td>"
                for r, v in scores.items()
            )
            lines.append(f"<table class='mckd-dice'><tr>{cells}</tr></table>")
        return "<br>".join(lines)

    def figure(self) -> go.Figure:
        """The viewer with the current prediction (segmentation), or the class probabilities."""
        if not self.classification:
            fig = self.viewer.figure()
            scores = ", ".join(f"{r} {v:.3f}" for r, v in (self.dice() or {}).items())
            subtitle = f"present: {self._join(self.present)}" + (f"; Dice {scores}" if scores else "")
            text = f"{fig.layout.title.text}<br><sup>{subtitle}</sup>"
            fig.update_layout(**title_layout(text, fig.layout.height + 22, subplot_titles=True))
            return fig
        classes = [
            f"{c} (true)" if self.target is not None and k == int(self.target) else c
            for k, c in enumerate(self._classes())
        ]
        fig = go.Figure(
            [
                go.Bar(x=classes, y=self.full, name="all available", marker_color="#bbbbbb"),
                go.Bar(x=classes, y=self.probabilities, name=f"present: {self._join(self.present)}"),
            ]
        )
        fig.update_layout(
            **title_layout(f"{self.title} class probabilities".strip(), 340),
            yaxis={"range": [0, 1], "title": "probability"},
            barmode="group",
        )
        return fig

    def _classes(self) -> list[str]:
        return [self.card.labels[k] for k in sorted(self.card.labels)]

    def _set_ticks(self, present: Sequence[bool]) -> None:
        self._syncing = True  # the checkbox observers ignore changes made here
        try:
            for name, p in zip(self.names, present, strict=True):
                self.checkboxes[name].value = p
        finally:
            self._syncing = False

    def _ticked(self) -> tuple[bool, ...]:
        return tuple(self.checkboxes[m].value for m in self.names)

    def _build(self) -> ipw.Widget:
        self._syncing = False
        self.checkboxes = {
            m: ipw.Checkbox(value=p, description=m, disabled=not a, indent=False, layout={"width": "110px"})
            for m, p, a in zip(self.names, self.present, self.available, strict=True)
        }
        self._report = ipw.HTML(self.report_html())

        def toggled(change) -> None:
            if self._syncing:
                return
            if any(self._ticked()):
                self.select(self._ticked())
            else:  # the network needs one present modality: undo the untick
                self._set_ticks(self.present)

        for box in self.checkboxes.values():
            box.observe(toggled, names="value")
        if self.classification:
            self._live = live_figure(self.figure())
            view = self._live
        else:
            view = self.viewer.widget
        return ipw.VBox([ipw.HBox([ipw.Label("present:"), *self.checkboxes.values()]), self._report, view])
