"""Importance weights over iterations: one trace per modality, from a run's ``history.jsonl`` records.

Meta records (``kind == "meta"``) carry ``importance`` {modality: softmax(omega)_m}; their iterations are
the meta steps (a marker each). Train records (``kind == "train"``) carry the ``stage`` (``warmup`` /
``missing``), drawn as shaded spans.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go

from ._base import View, live_figure, modality_colour, title_layout

STAGE_COLOURS = {"warmup": "rgba(31,119,180,0.08)", "missing": "rgba(214,39,40,0.08)"}


def importance_series(history: Iterable[dict], names: Sequence[str] | None = None):
    """Meta steps of a history as arrays.

    Returns ``(iterations (T,), importance (T, M), names)``; ``names`` defaults to the keys of the first meta
    record (card order). A meta record lacking one of ``names`` is an error naming the iteration.
    """
    metas = [r for r in history if r.get("kind") == "meta"]
    if names is None:
        names = tuple(metas[0]["importance"]) if metas else ()
    iterations = np.array([r["iteration"] for r in metas], dtype=int)
    values = np.zeros((len(metas), len(names)))
    for t, record in enumerate(metas):
        missing = [n for n in names if n not in record["importance"]]
        if missing:
            raise KeyError(
                f"meta record at iteration {record['iteration']} has importance for "
                f"{sorted(record['importance'])}, not {missing}"
            )
        values[t] = [record["importance"][n] for n in names]
    return iterations, values, tuple(names)


def stage_spans(history: Iterable[dict]) -> list[tuple[str, int, int]]:
    """Contiguous training stages as ``(stage, first_iteration, last_iteration)``, from train records."""
    spans: list[list] = []
    for record in history:
        if record.get("kind") != "train":
            continue
        if spans and spans[-1][0] == record["stage"]:
            spans[-1][2] = record["iteration"]
        else:
            spans.append([record["stage"], record["iteration"], record["iteration"]])
    return [tuple(s) for s in spans]


def weights_figure(history: Sequence[dict], names: Sequence[str] | None = None) -> go.Figure:
    """The static figure: a line per modality (markers at meta steps) over shaded stage spans."""
    iterations, values, names = importance_series(history, names)
    losses = [r.get("meta_loss") for r in history if r.get("kind") == "meta"]
    fig = go.Figure(
        [
            go.Scatter(
                x=iterations,
                y=values[:, m],
                name=name,
                mode="lines+markers",
                line={"color": modality_colour(m)},
                customdata=losses,
                hovertemplate=f"{name}: %{{y:.3f}}<br>iteration %{{x}}<br>meta loss %{{customdata:.4f}}"
                "<extra></extra>",
            )
            for m, name in enumerate(names)
        ]
    )
    for stage, first, last in stage_spans(history):
        fig.add_vrect(
            x0=first,
            x1=last,
            fillcolor=STAGE_COLOURS.get(stage, "rgba(0,0,0,0.05)"),
            line_width=0,
            layer="below",
            annotation_text=stage,
            annotation_position="top left",
        )
    fig.add_hline(y=1 / len(names), line_dash="dot", line_color="grey", annotation_text=f"uniform 1/{len(names)}")
    note = (
        ""
        if len(iterations)
        else "<br><sup>no meta step recorded yet (only the mckd strategies learn ω)</sup>"
    )
    fig.update_layout(
        **title_layout(f"Importance weights w = softmax(ω) at each meta step{note}", 380),
        xaxis_title="iteration",
        yaxis_title="w<sub>m</sub>",
        margin={"b": 40, "l": 60, "r": 20},
        legend_title="modality m",
    )
    return fig


class ImportanceWeightsView(View):
    """Importance weights of a run, live while it trains.

    ``ImportanceWeightsView(run.history)`` for a finished run; for a live one pass ``names`` (the card's
    modality order) and hand ``view.append`` to the trainer (``train(..., callbacks=[view.append])``): every
    history record is appended and the live figure refreshes at each meta step or stage change.
    """

    def __init__(self, history: Iterable[dict] = (), names: Sequence[str] | None = None):
        self.history = list(history)
        self.names = importance_series(self.history, names)[2]
        if not self.names:
            raise ValueError("ImportanceWeightsView needs modality names: pass names=card.modality_names")
        self._stage = ([None] + [r["stage"] for r in self.history if r.get("kind") == "train"])[-1]

    def figure(self) -> go.Figure:
        return weights_figure(self.history, self.names)

    @property
    def _live(self) -> go.FigureWidget | None:
        """The figure in the live box (replaced at each redraw), None before the box is built."""
        return self.widget.children[0] if "widget" in self.__dict__ else None

    def _build(self) -> ipw.Widget:
        return ipw.VBox([live_figure(self.figure())])

    def append(self, record: dict) -> None:
        """Add one history record; redraw the live figure when it is a meta step or starts a new stage.

        A redraw puts a new ``FigureWidget`` in the box instead of sending the old one edits: edits that reach
        the browser before it has drawn the figure (a fast run, or a reused run's records replayed at once)
        left it blank (issue 15, point 1), while a new widget carries its whole state with it."""
        self.history.append(record)
        new_stage = record.get("kind") == "train" and record["stage"] != self._stage
        if new_stage:
            self._stage = record["stage"]
        if self._live is not None and (record.get("kind") == "meta" or new_stage):
            old = self._live
            self.widget.children = (live_figure(self.figure()), *self.widget.children[1:])
            old.close()
