"""Experiments dashboard: a sweep's results (``mckd_lab.experiments.load_results``) compared per strategy.

One row per run; parameter columns (e.g. ``method``), ``seed``, ``status`` and ``metrics.<key>`` columns. The
view groups finished runs by a parameter and shows one metric per group: each run as a point, the group mean
as a bar with the standard deviation over runs (seeds) as an error bar.
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets as ipw
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mckd_lab.runs import load_results

from ._base import View, live_figure, modality_colour, sync_figure, title_layout

BOOKKEEPING = ("run", "notebook", "seed", "status", "cached", "seconds", "error")


class ExperimentsDashboard(View):
    """Per-strategy comparison of a sweep.

    Args:
        results: the results DataFrame, or a sweep folder / ``results.csv`` path.
        by: the parameter column to group by; default ``method`` or ``strategy`` when present, else the first
            parameter that varies.
        metric: a ``metrics.*`` column; default the first holding ``mean`` and ``dice``, else the first.
    """

    def __init__(self, results: pd.DataFrame | str | Path, by: str | None = None, metric: str | None = None):
        table = results if isinstance(results, pd.DataFrame) else load_results(results)
        self.table = table[table["status"] == "done"] if "status" in table else table
        self.metrics = [
            c for c in self.table if c.startswith("metrics.") and pd.api.types.is_numeric_dtype(self.table[c])
        ]
        self.parameters = [c for c in self.table if c not in BOOKKEEPING and not c.startswith("metrics.")]
        if not self.metrics or not self.parameters:
            raise ValueError(
                f"the results table needs parameter and numeric metrics.* columns of finished runs; it has "
                f"{list(table.columns)} with {len(self.table)} finished runs"
            )
        varying = [c for c in self.parameters if self.table[c].nunique() > 1] or self.parameters
        self.by = by or next((c for c in ("method", "strategy") if c in self.parameters), varying[0])
        self.metric = metric or next(
            (c for c in self.metrics if "mean" in c and "dice" in c), self.metrics[0]
        )
        for name, allowed in ((self.by, self.parameters), (self.metric, self.metrics)):
            if name not in allowed:
                raise KeyError(f"no column {name!r} in the results; choose one of {', '.join(allowed)}")

    def summary(self, metrics: list[str] | None = None) -> pd.DataFrame:
        """Mean, standard deviation (ddof 1) and count over runs of each metric per group (rows: groups)."""
        stats = self.table.groupby(self.by)[metrics or self.metrics].agg(["mean", "std", "count"])
        return stats.sort_index()

    def paired(self, baseline: str | None = None, metric: str | None = None) -> pd.DataFrame:
        """Each group minus ``baseline`` (default ``none`` when present, else the first group) on the same
        seed: rows are groups, columns the mean, smallest and largest paired difference and the number of
        seeds both have. Pairing by seed removes what the seed alone decides (the initial weights and the
        batches are shared across strategies); a handful of seeds gives no interval worth the name, so the
        spread is shown as the range."""
        metric = metric or self.metric
        seed = self.table["seed"].fillna(-1) if "seed" in self.table else 0  # a spec without seeds: one run each
        wide = self.table.assign(seed=seed).pivot_table(index="seed", columns=self.by, values=metric, aggfunc="mean")
        groups = list(wide.columns)
        baseline = baseline if baseline is not None else ("none" if "none" in groups else groups[0])
        if baseline not in groups:
            raise KeyError(f"no {self.by} {baseline!r} among the finished runs ({', '.join(map(str, groups))})")
        rows = {}
        for group in groups:
            if group != baseline:
                diff = (wide[group] - wide[baseline]).dropna()
                rows[f"{group} - {baseline}"] = {"mean": diff.mean(), "min": diff.min(), "max": diff.max(),
                                                 "seeds": len(diff)}  # fmt: skip
        return pd.DataFrame.from_dict(rows, orient="index")

    def figure(self) -> go.Figure:
        stats = self.summary([self.metric])[self.metric]
        groups = list(stats.index)
        labels = [str(g) for g in groups]
        values = [self.table.loc[self.table[self.by] == g, self.metric].to_numpy(float) for g in groups]
        fig = go.Figure(
            go.Bar(
                x=labels,
                y=stats["mean"],
                error_y={"type": "data", "array": stats["std"].fillna(0)},
                marker_color=[modality_colour(i) for i in range(len(groups))],
                opacity=0.6,
                name="mean ± std",
                hovertemplate="%{x}: %{y:.4f}<extra>mean over runs</extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[label for label, v in zip(labels, values, strict=True) for _ in v],
                y=np.concatenate(values),
                mode="markers",
                marker={"color": "black", "size": 7},
                name="run",
                text=[r for g in groups for r in self.table.loc[self.table[self.by] == g, "run"]]
                if "run" in self.table
                else None,
                hovertemplate="%{text}: %{y:.4f}<extra></extra>",
            )
        )
        fig.update_layout(
            **title_layout(f"{self.metric.removeprefix('metrics.')} by {self.by} ({len(self.table)} runs)", 400),
            xaxis_title=self.by,
            yaxis_title=self.metric.removeprefix("metrics."),
            margin={"b": 40, "l": 60, "r": 20},
        )
        return fig

    def _build(self) -> ipw.Widget:
        self._live = live_figure(self.figure())
        by = ipw.Dropdown(options=self.parameters, value=self.by, description="group by")
        metric = ipw.Dropdown(options=self.metrics, value=self.metric, description="metric")
        summary = ipw.HTML(self.summary([self.metric]).to_html(float_format="{:.4f}".format))

        def changed(_change) -> None:
            self.by, self.metric = by.value, metric.value
            sync_figure(self._live, self.figure())
            summary.value = self.summary([self.metric]).to_html(float_format="{:.4f}".format)

        by.observe(changed, names="value")
        metric.observe(changed, names="value")
        self.controls = {"by": by, "metric": metric}
        return ipw.VBox([ipw.HBox([by, metric]), self._live, summary])
