"""Attributions (``mckd_lab.explain`` results): which modality, voxels and features drive a prediction.

- A per-modality bar chart: exact Shapley values per output (``ModalityShapley``: region Dice / probability,
  or class probability), or, without them, each voxel map summed per modality.
- Voxel maps (``VoxelAttribution``: Integrated Gradients or Occlusion of a region's summed logit), one slice
  panel per modality, on a diverging scale symmetric around 0 (red raises the logit, blue lowers it).
- Tabular attributions (``TabularAttribution``): Integrated Gradients per feature, coloured by modality.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mckd_lab.data.cards import Card, load_card
from mckd_lab.explain import ModalityShapley, TabularAttribution, VoxelAttribution

from ._base import View, modality_colour, sync_figure
from .viewer import PLANES, take


def _label(a: VoxelAttribution) -> str:
    return f"{a.method} {a.region}"


class AttributionView(View):
    """Shapley bars and voxel (or tabular feature) attribution maps of one case.

    Args:
        shapley: exact modality Shapley values (``explain.modality_shapley``), optional.
        maps: voxel attributions (``explain.voxel_attribution``), each (M, D, H, W); a selector picks one.
        tabular: a tabular attribution (``explain.tabular_integrated_gradients``), drawn instead of maps.
        card: the data card naming modalities and tabular columns (default ``brats``).
    """

    def __init__(
        self,
        shapley: ModalityShapley | None = None,
        maps: Sequence[VoxelAttribution] = (),
        tabular: TabularAttribution | None = None,
        card: Card | None = None,
    ):
        if shapley is None and not maps and tabular is None:
            raise ValueError("give at least one of shapley, maps or tabular (results of mckd_lab.explain)")
        self.card = card or load_card("brats")
        self.modalities = self.card.modality_names
        self.shapley, self.maps, self.tabular = shapley, list(maps), tabular
        self.chosen = _label(self.maps[0]) if self.maps else None
        self.plane = PLANES[0]
        self.index = self._map().shape[1] // 2 if self.maps else 0

    def _map(self) -> np.ndarray:
        return next(a for a in self.maps if _label(a) == self.chosen).attribution

    def bars(self) -> list[go.Bar]:
        """One bar trace per output (Shapley), or per voxel map / the tabular result (sums per modality)."""
        if self.shapley is not None:
            s = self.shapley
            report = [o for o in self.card.header.get("report_regions", ()) if o in s.outputs]  # ET, TC, WT
            order = [s.outputs.index(o) for o in report] + [
                k for k, o in enumerate(s.outputs) if o not in report
            ]
            return [
                go.Bar(x=list(s.modalities), y=s.values[k], name=f"{s.outputs[k]} ({s.value})") for k in order
            ]
        if self.tabular is not None:
            p = self.tabular.per_modality
            label = self.card.labels.get(self.tabular.target, self.tabular.target)
            return [go.Bar(x=list(p), y=list(p.values()), name=f"Integrated Gradients, class {label}")]
        return [
            go.Bar(
                x=list(self.modalities),
                y=a.attribution.reshape(len(self.modalities), -1).sum(1),
                name=_label(a),
            )
            for a in self.maps
        ]

    def _columns(self, modality: str, count: int) -> list[str]:
        columns = list(self.card.modality(modality).columns)
        return columns if len(columns) == count else [f"{modality} {j}" for j in range(count)]

    def figure(self) -> go.Figure:
        m = len(self.modalities)
        detail = self.maps or self.tabular is not None
        cols = m if self.maps else 1
        fig = make_subplots(
            rows=2 if detail else 1,
            cols=cols,
            specs=[[{"colspan": cols}] + [None] * (cols - 1)] + ([[{}] * cols] if detail else []),
            subplot_titles=["per modality"]
            + (list(self.modalities) if self.maps else ["per feature"] * bool(detail)),
            vertical_spacing=0.15,
        )
        for bar in self.bars():
            fig.add_trace(bar, row=1, col=1)
        if self.maps:
            volume = self._map()
            bound = float(np.abs(volume).max()) or 1.0
            axis = PLANES.index(self.plane)
            for i in range(m):
                fig.add_trace(
                    go.Heatmap(
                        z=take(volume[i], axis, self.index),
                        colorscale="RdBu_r",
                        zmin=-bound,
                        zmax=bound,
                        showscale=i == m - 1,
                        colorbar={"len": 0.45, "y": 0.22},
                        hovertemplate=f"{self.modalities[i]} %{{z:.3g}}<extra></extra>",
                    ),
                    row=2,
                    col=i + 1,
                )
                fig.update_xaxes(showticklabels=False, row=2, col=i + 1)
                fig.update_yaxes(showticklabels=False, scaleanchor=f"x{i + 2}", row=2, col=i + 1)
        elif self.tabular is not None:
            for k, (name, values) in enumerate(self.tabular.features.items()):
                fig.add_trace(
                    go.Bar(
                        x=self._columns(name, len(values)),
                        y=values,
                        name=name,
                        marker_color=modality_colour(k),
                    ),
                    row=2,
                    col=1,
                )
        where = f"; {self.chosen}, {self.plane} slice {self.index}" if self.maps else ""
        fig.update_layout(
            title=f"Attributions{where}", barmode="group", height=560 if detail else 320, margin={"t": 70}
        )
        return fig

    def _build(self) -> ipw.Widget:
        self._live = go.FigureWidget(self.figure())
        if not self.maps:
            return ipw.VBox([self._live])
        chooser = ipw.Dropdown(options=[_label(a) for a in self.maps], value=self.chosen, description="map")
        plane = ipw.Dropdown(options=PLANES, value=self.plane, description="plane")
        index = ipw.IntSlider(value=self.index, min=0, max=self._map().shape[1] - 1, description="slice")

        def changed(_change) -> None:
            self.chosen, self.plane = chooser.value, plane.value
            index.max = self._map().shape[1 + PLANES.index(self.plane)] - 1
            self.index = index.value
            sync_figure(self._live, self.figure())

        for control in (chooser, plane, index):
            control.observe(changed, names="value")
        self.controls = {"map": chooser, "plane": plane, "slice": index}
        return ipw.VBox([ipw.HBox([chooser, plane, index]), self._live])
