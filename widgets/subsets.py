"""The all-subsets table (``metrics.json`` of a run: ``mckd_lab.evaluate.evaluate_run``) as a heatmap.

A row per subset of present modalities (canonical order: singles first, full set last) plus the mean row; a
column per region (report order) with the mean Dice in % for segmentation, or per metric (accuracy,
balanced accuracy, macro-F1, AUC, in %) for ADNI classification. Choosing a row hands its presence mask to
``on_select``, e.g. ``ModalityDropExplorer.select`` so the explorer shows that subset.
"""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go

from mckd_lab.runs import render_table
from mckd_lab.tasks import task_of

from ._base import View, live_figure, sync_figure, title_layout

RARE = 10  # availability patterns seen in fewer test subjects than this are folded away (see rendered_table)


def table_arrays(table: dict) -> tuple[list[str], list[str], np.ndarray, str]:
    """``(row names incl. the mean row, columns, values (S + 1, C) in % (NaN: undefined), what they are)``, as
    the task that made the table lays it out (``Task.table_arrays``)."""
    return task_of(table).table_arrays(table)


def rendered_table(result: dict, min_n: int = RARE):
    """An evaluation result (``evaluate_run``, ``metrics.json``) as rendered Markdown for a notebook: the task's
    ``render_table``, with the availability patterns (``patterns``, ADNI) seen in fewer than ``min_n`` test
    subjects folded into one note below the table: a score over one or two subjects says nothing."""
    from IPython.display import Markdown

    return Markdown(table_markdown(result, min_n))


def table_markdown(result: dict, min_n: int = RARE) -> str:
    """The Markdown text of ``rendered_table``."""
    patterns = result.get("patterns")
    if not patterns:
        return render_table(result)
    rare = [p for p in patterns if p["n"] < min_n]
    text = render_table({**result, "patterns": [p for p in patterns if p["n"] >= min_n]})
    if rare:
        text += (
            f"\n\n*{len(rare)} other availability pattern{'s' * (len(rare) > 1)} "
            f"({', '.join(p['pattern'] for p in rare)}) occur in fewer than {min_n} test subjects each "
            f"({sum(p['n'] for p in rare)} in all): not shown, a score over so few subjects says nothing.*"
        )
    return text


class SubsetTableView(View):
    """Heatmap of the all-subsets table; a row selector (and, live, a click on a row) chooses a subset.

    Args:
        table: the table dict: ``modalities``, ``subsets`` (rows with ``subset``, ``present`` and the values),
            ``mean``, and ``regions`` for segmentation (see evaluate.py and classification.py).
        on_select: called with the chosen row's presence mask (tuple of M bools, card order).
    """

    def __init__(self, table: dict, on_select: Callable[[tuple[bool, ...]], None] | None = None):
        self.table, self.on_select = table, on_select
        self.names, self.columns, self.values, self.what = table_arrays(table)
        self.modalities = list(table["modalities"])
        self.selected = self.names[-2]  # the full set

    def present(self, name: str) -> tuple[bool, ...]:
        row = next(r for r in self.table["subsets"] if r["subset"] == name)
        return tuple(bool(row["present"][m]) for m in self.modalities)

    def figure(self) -> go.Figure:
        marks = [
            " ".join("●" if row["present"][m] else "○" for m in self.modalities)
            for row in self.table["subsets"]
        ] + [""]
        defined = ~np.isnan(self.values)
        fig = go.Figure(
            go.Heatmap(
                z=np.where(defined, self.values, None),  # JSON has no NaN: undefined cells are null
                x=self.columns,
                y=self.names,
                text=np.where(defined, np.round(self.values, 1).astype(str), "-"),
                texttemplate="%{text}",
                colorscale="Viridis",
                zmin=0,
                zmax=100,
                colorbar={"title": f"{self.what} %"},
                customdata=np.array(marks)[:, None].repeat(len(self.columns), 1),
                hovertemplate="%{y} (%{customdata})<br>%{x}: %{z:.2f}<extra></extra>",
            )
        )
        row = self.names.index(self.selected)
        fig.add_shape(
            type="rect", x0=-0.5, x1=len(self.columns) - 0.5, y0=row - 0.5, y1=row + 0.5, line={"width": 3}
        )
        protocol = self.table.get("protocol", {})
        fig.update_layout(
            **title_layout(
                f"Mean {self.what} per subset of {', '.join(self.modalities)} present"
                + (f"<br><sup>{protocol.get('data', '')}, {protocol.get('split', '')}</sup>" if protocol else ""),
                150 + 24 * len(self.names),
            ),
            yaxis={"autorange": "reversed", "title": None},
            margin={"b": 30, "l": 150, "r": 20},
        )
        return fig

    def select(self, name: str) -> None:
        """Choose the subset row ``name`` (e.g. ``flair+t1ce``); its presence mask goes to ``on_select``."""
        if name not in self.names[:-1]:
            raise KeyError(f"no subset {name!r} in the table; subsets: {', '.join(self.names[:-1])}")
        if "widget" in self.__dict__ and self._chooser.value != name:
            self._chooser.value = name  # its observer calls back here
            return
        self.selected = name
        if "widget" in self.__dict__:
            sync_figure(self._live, self.figure())
        if self.on_select is not None:
            self.on_select(self.present(name))

    def _build(self) -> ipw.Widget:
        self._live = live_figure(self.figure())
        self._chooser = ipw.Dropdown(options=self.names[:-1], value=self.selected, description="subset")
        self._chooser.observe(lambda change: self.select(change["new"]), names="value")

        def clicked(_trace, points, _state) -> None:
            if points.ys and points.ys[0] != "mean":
                self.select(points.ys[0])

        self._live.data[0].on_click(clicked)
        return ipw.VBox([self._chooser, self._live])
