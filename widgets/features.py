"""Distilled features: how far the filled bottleneck of a missing modality is from the real one.

For a missing modality j the network decodes f^_j = mean of the present bottlenecks (METHOD.md step 3). With
only modality i present, f^_j = f_i, so the distance between the real f_j and the feature filled in from i
alone is exactly the KD pair term l_ij = mean |f_i - f_j| (L1 over C and space), the quantity MCKD's
weighted distillation shrinks. The view shows, over a set of cases:

- the pair matrix l_ij (row: the modality filled from, column: the modality replaced), mean over cases;
- for a chosen subset S, each missing modality's distance |mean_{k in S} f_k - f_j|;
- a 2-D PCA of the spatially pooled bottlenecks (C values per modality and case), real as circles and filled
  as crosses, fitted on the real ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from mckd_lab.data.cards import Card, load_card
from mckd_lab.data.missing import all_subsets, subset_name

from ._base import View, live_figure, modality_colour, sync_figure, title_layout
from .drop import padded_batch


def bottlenecks(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Real per-modality bottlenecks (``model.encode``) of one case: image (M, D, H, W) -> (M, C, *s), the
    volume zero-padded to a multiple of the network's stride first."""
    model.eval()
    with torch.inference_mode():
        return model.encode(padded_batch(model, image)).bottleneck[0].float().cpu().numpy()


def pair_distances(features: Sequence[np.ndarray], available: Sequence[Sequence[bool]]) -> np.ndarray:
    """l_ij = mean |f_i - f_j| per case, averaged over the cases having both i and j: (M, M), zero diagonal.

    ``features``: per case (M, C, *s); ``available``: per case M bools. NaN where no case has both.
    """
    m = features[0].shape[0]
    total, count = np.zeros((m, m)), np.zeros((m, m))
    for f, has in zip(features, available, strict=True):
        flat = f.reshape(m, -1)
        both = np.outer(has, has)
        l1 = np.abs(flat[:, None] - flat[None]).mean(-1)
        total += np.where(both, l1, 0)
        count += both
    with np.errstate(invalid="ignore"):
        return total / count


def filled(features: np.ndarray, present: Sequence[bool]) -> np.ndarray:
    """The bottlenecks the decoder sees: missing ones replaced by the mean of the present ones. (M, C, *s)."""
    present = np.asarray(present, bool)
    out = features.copy()
    out[~present] = features[present].mean(0)
    return out


class DistilledFeatures(View):
    """Real vs filled bottleneck features of a model over several cases.

    Args:
        model: a network of the model contract (``encode``).
        images: per case (M, D, H, W) float volumes (e.g. ``Case.image``), any size (padded as needed).
        case_ids: names for the hover text (default case 0, 1, ...).
        available: per case M bools (e.g. ``Case.present``); default all.
        card: the data card naming the modalities (default ``brats``).
        present: the subset whose filled features are shown; default all but the last modality.
    """

    def __init__(
        self,
        model: nn.Module,
        images: Sequence[np.ndarray],
        case_ids: Sequence[str] | None = None,
        available: Sequence[Sequence[bool]] | None = None,
        card: Card | None = None,
        present: Sequence[bool] | None = None,
    ):
        self.card = card or load_card("brats")
        self.names = self.card.modality_names
        self.case_ids = list(case_ids or [f"case {i}" for i in range(len(images))])
        self.features = [bottlenecks(model, image) for image in images]
        self.available = [
            tuple(bool(a) for a in has)
            for has in (available if available is not None else [[True] * len(self.names)] * len(images))
        ]
        self.pairs = pair_distances(self.features, self.available)
        pooled = np.stack([f.reshape(*f.shape[:2], -1).mean(-1) for f in self.features])  # (N, M, C)
        real = pooled[np.array(self.available)]
        self._centre = real.mean(0)
        self._axes = np.linalg.svd(real - self._centre, full_matrices=False)[2][:2]  # (2, C)
        self._pooled = pooled
        self.present = (
            tuple(bool(p) for p in present)
            if present is not None
            else (True,) * (len(self.names) - 1) + (False,)
        )

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Pooled features (..., C) -> their 2-D PCA coordinates (..., 2)."""
        return (vectors - self._centre) @ self._axes.T

    def subset_distances(self, present: Sequence[bool]) -> dict[str, float]:
        """Per missing modality j: mean over the cases having S and j of mean |mean_{k in S} f_k - f_j| (a
        modality no such case has is left out)."""
        out = {}
        for j in np.flatnonzero(~np.asarray(present, bool)):
            values = [np.abs(filled(self.features[i], present)[j] - self.features[i][j]).mean()
                      for i in self._comparable(present, j)]  # fmt: skip
            if values:
                out[self.names[j]] = float(np.mean(values))
        return out

    def _comparable(self, present: Sequence[bool], j: int) -> list[int]:
        """Cases that have modality j and every modality of ``present``."""
        need = np.asarray(present, bool).copy()
        need[j] = True
        return [i for i, has in enumerate(self.available) if np.all(np.asarray(has)[need])]

    def figure(self) -> go.Figure:
        fig = make_subplots(
            rows=1,
            cols=3,
            column_widths=[0.3, 0.2, 0.5],
            horizontal_spacing=0.09,
            subplot_titles=(
                "ℓ<sub>ij</sub> = mean |f<sub>i</sub> − f<sub>j</sub>|",
                "|filled − real f<sub>j</sub>|",
                "PCA of the pooled bottlenecks",
            ),
        )
        right = fig.layout.xaxis.domain[1]
        fig.add_trace(
            go.Heatmap(
                z=[[None if np.isnan(v) else v for v in row] for row in self.pairs],  # JSON has no NaN
                x=self.names,
                y=self.names,
                colorscale="Blues",
                colorbar={"x": right + 0.005, "xanchor": "left", "len": 0.9, "y": 0.5, "thickness": 12,
                          "title": {"text": "ℓ<sub>ij</sub>", "side": "top"}},  # fmt: skip
                hovertemplate="ℓ: %{x} filled from %{y} alone: %{z:.4f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.update_xaxes(title_text="j (the feature replaced)", row=1, col=1)
        fig.update_yaxes(title_text="i (filled from)", row=1, col=1)
        distances = self.subset_distances(self.present)
        fig.add_trace(
            go.Bar(
                x=list(distances),
                y=list(distances.values()),
                marker_color=[modality_colour(self.names.index(n)) for n in distances],
                hovertemplate="%{x}: mean |filled - real| %{y:.4f}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=2,
        )
        missing = ~np.asarray(self.present, bool)
        fill = np.stack([filled(p, self.present) for p in self._pooled])  # linear: pool(fill) = fill(pool)
        for m, name in enumerate(self.names):
            real_rows = [i for i, has in enumerate(self.available) if has[m]]
            filled_rows = self._comparable(self.present, m) if missing[m] else []
            for kind, source, rows in (("real", self._pooled, real_rows), ("filled", fill, filled_rows)):
                xy = self.project(source[rows, m]) if rows else np.zeros((0, 2))
                fig.add_trace(
                    go.Scatter(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        mode="markers",
                        name=f"{name} {kind}",
                        marker={
                            "color": modality_colour(m),
                            "symbol": "circle" if kind == "real" else "x",
                            "size": 9,
                        },
                        text=[self.case_ids[i] for i in rows],
                        hovertemplate=f"{name} {kind}, %{{text}}<extra></extra>",
                    ),
                    row=1,
                    col=3,
                )
        fig.update_xaxes(title_text=f"j, with {subset_name(self.present, self.names)} present", row=1, col=2)
        fig.update_xaxes(title_text="PC 1", row=1, col=3)
        fig.update_yaxes(title_text="PC 2", row=1, col=3)
        fig.update_yaxes(autorange="reversed", row=1, col=1)
        fig.update_layout(
            **title_layout(
                f"Real and filled bottleneck features over {len(self.features)} cases<br><sup>ℓ and the "
                "distances: mean absolute difference per feature value; ○ real, × filled</sup>",
                460,
                subplot_titles=True,
            ),
            margin={"b": 50, "l": 60, "r": 10},
            showlegend=True,
            legend={"title": {"text": "modality"}, "font": {"size": 11}},
        )
        return fig

    def _build(self) -> ipw.Widget:
        self._live = live_figure(self.figure())
        options = [(subset_name(s, self.names), s) for s in all_subsets(len(self.names))[:-1]]
        chooser = ipw.Dropdown(options=options, value=self.present, description="present")

        def changed(change) -> None:
            self.present = change["new"]
            sync_figure(self._live, self.figure())

        chooser.observe(changed, names="value")
        self.controls = {"present": chooser}
        return ipw.VBox([chooser, self._live])
