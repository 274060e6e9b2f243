"""Attributions (``mckd_lab.explain`` results): which modality, voxels and features drive a prediction.

- A per-modality bar chart: exact Shapley values φ per output (``ModalityShapley``: region Dice / probability,
  or class probability), or, without them, each voxel map summed per modality.
- Voxel maps (``VoxelAttribution``: Integrated Gradients or Occlusion of F, a region's logit summed over the
  case), one slice panel per modality, drawn over the case's own sequence with the region's ground-truth
  outline, on a diverging scale symmetric around 0 (red raises F, blue lowers it, transparent near 0). The
  unit is per cent of |F(x) − F(0)| per voxel (Integrated Gradients: the maps of all modalities sum to
  F(x) − F(0) up to the convergence gap), so that a map reads the same whatever the case's size.
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

from ._base import (
    REGION_COLOURS,
    View,
    live_figure,
    modality_colour,
    overlay_scale,
    sync_figure,
    title_layout,
)
from .viewer import (
    DISPLAY_MIN,
    PLANES,
    SLIDER_LAYOUT,
    anatomy,
    display_factor,
    enlarge,
    enlarge_mask,
    outline,
    take,
)

# Diverging, transparent at 0 so that the anatomy shows through where a voxel does not matter.
ATTRIBUTION_SCALE = [
    [0.0, "rgba(33,102,172,1)"],
    [0.3, "rgba(103,169,207,0.85)"],
    [0.5, "rgba(247,247,247,0)"],
    [0.7, "rgba(239,138,98,0.85)"],
    [1.0, "rgba(178,24,43,1)"],
]
OUTLINE_COLOUR = "#ffd700"  # the attributed region's ground truth: neither red nor blue
SATURATION_PERCENTILE = 99.5  # the colour scale ends at this percentile of |attribution| (brighter maps)


def _label(a: VoxelAttribution) -> str:
    return f"{a.method} {a.region}"


def output_change(a: VoxelAttribution) -> float | None:
    """F(x) − F(0) of an Integrated Gradients map (its sum less Captum's convergence delta); None without a
    delta (Occlusion)."""
    return None if a.delta is None else float(a.attribution.sum() - a.delta)


def completeness(a: VoxelAttribution) -> str:
    """One sentence on an Integrated Gradients map's completeness: F(x) − F(0), what the maps sum to, and the
    gap in per cent of |F(x) − F(0)| (``""`` for maps without a convergence delta)."""
    change = output_change(a)
    if change is None:
        return ""
    gap = abs(a.delta) / abs(change) if change else float("inf")
    return (
        f"{a.method}, F = {a.region} logit summed over the case: F(x) − F(0) = {change:.4g}, the maps sum to "
        f"{float(a.attribution.sum()):.4g}, a gap of {gap:.1%} (Captum's convergence delta)"
    )


def relative_map(a: VoxelAttribution) -> tuple[np.ndarray, str]:
    """The map in per cent of |F(x) − F(0)| (Integrated Gradients), else of the summed |attribution|, with the
    unit's words: ((M, D, H, W) float32, unit)."""
    change = output_change(a)
    if change:
        return (100 * a.attribution / abs(change)).astype(np.float32), "% of |F(x) − F(0)|"
    total = float(np.abs(a.attribution).sum()) or 1.0
    return (100 * a.attribution / total).astype(np.float32), "% of Σ|attribution|"


class AttributionView(View):
    """Shapley bars and voxel (or tabular feature) attribution maps of one case.

    Args:
        shapley: exact modality Shapley values (``ExactModalityShapley.attribute``), optional.
        maps: voxel attributions (``VoxelIntegratedGradients.attribute``), each (M, D, H, W); a selector picks
            one.
        tabular: a tabular attribution (``TabularIntegratedGradients.attribute``), drawn instead of maps.
        card: the data card naming modalities and tabular columns (default ``brats``).
        image: (M, D, H, W) the case's sequences (``Case.image``), drawn under the maps; optional.
        target: (R, D, H, W) the case's region masks in card order (``Case.target``): the attributed
            region's outline is drawn on the maps; optional.
        display_min: maps of a case with a side under this many voxels are drawn enlarged, as in
            ``SegmentationViewer`` (None: as they are).
    """

    def __init__(
        self,
        shapley: ModalityShapley | None = None,
        maps: Sequence[VoxelAttribution] = (),
        tabular: TabularAttribution | None = None,
        card: Card | None = None,
        image: np.ndarray | None = None,
        target: np.ndarray | None = None,
        display_min: int | None = DISPLAY_MIN,
    ):
        if shapley is None and not maps and tabular is None:
            raise ValueError("give at least one of shapley, maps or tabular (results of mckd_lab.explain)")
        self.card = card or load_card("brats")
        self.modalities = self.card.modality_names
        self.shapley, self.maps, self.tabular = shapley, list(maps), tabular
        self.chosen = _label(self.maps[0]) if self.maps else None
        self.plane = PLANES[0]
        shape = self.maps[0].attribution.shape[1:] if self.maps else None
        for what, array in (("image", image), ("target", target)):
            if array is not None and (shape is None or array.shape[1:] != shape):
                raise ValueError(f"{what} must be (*, D, H, W) on the maps' grid {shape}, got {array.shape}")
        self.image, self.target = image, target
        self.factor = display_factor(shape, display_min) if shape else 1
        self._drawn: dict[str, tuple[np.ndarray, str, float]] = {}  # per map: enlarged %, unit, colour bound
        self.index = self.display_shape[0] // 2 if self.maps else 0
        self._anatomy = None if image is None else [anatomy(image[m], self.factor) for m in range(len(image))]

    @property
    def display_shape(self) -> tuple[int, ...]:
        return tuple(s * self.factor for s in self.maps[0].attribution.shape[1:]) if self.maps else ()

    def _map(self) -> VoxelAttribution:
        return next(a for a in self.maps if _label(a) == self.chosen)

    def drawn_map(self) -> tuple[np.ndarray, str, float]:
        """The chosen map as drawn: ((M, D', H', W') per cent, unit, colour bound = the
        ``SATURATION_PERCENTILE`` of its non-zero |values|)."""
        if self.chosen not in self._drawn:
            relative, unit = relative_map(self._map())
            nonzero = np.abs(relative[relative != 0])
            bound = float(np.percentile(nonzero, SATURATION_PERCENTILE)) if nonzero.size else 1.0
            drawn = np.stack([enlarge(v, self.factor, order=1) for v in relative])
            self._drawn[self.chosen] = (drawn, unit, bound or 1.0)
        return self._drawn[self.chosen]

    def bars(self) -> list[go.Bar]:
        """One bar trace per output (Shapley), or per voxel map / the tabular result (sums per modality)."""
        if self.shapley is not None:
            s = self.shapley
            report = [o for o in self.card.header.get("report_regions", ()) if o in s.outputs]  # ET, TC, WT
            order = [s.outputs.index(o) for o in report] + [
                k for k, o in enumerate(s.outputs) if o not in report
            ]
            return [
                go.Bar(
                    x=list(s.modalities),
                    y=s.values[k],
                    name=f"φ for {s.outputs[k]}",
                    marker_color=REGION_COLOURS.get(s.outputs[k]),
                    hovertemplate=f"Shapley value of %{{x}} for {s.outputs[k]}: %{{y:.3f}} ({s.value})"
                    "<extra></extra>",
                )
                for k in order
            ]
        if self.tabular is not None:
            p = self.tabular.per_modality
            label = self.card.labels.get(self.tabular.target, self.tabular.target)
            return [go.Bar(x=list(p), y=list(p.values()), name=f"Integrated Gradients, class {label}")]
        bars = []
        for a in self.maps:
            relative, unit = relative_map(a)
            bars.append(
                go.Bar(
                    x=list(self.modalities),
                    y=relative.reshape(len(self.modalities), -1).sum(1),
                    name=f"{_label(a)} ({unit})",
                )
            )
        return bars

    def _bar_axis_title(self) -> str:
        if self.shapley is not None:
            return f"Shapley value φ ({self.shapley.value})"
        if self.tabular is not None:
            return "Integrated Gradients (class logit)"
        return "summed attribution (%)"

    def _columns(self, modality: str, count: int) -> list[str]:
        columns = list(self.card.modality(modality).columns)
        return columns if len(columns) == count else [f"{modality} {j}" for j in range(count)]

    def _title(self) -> str:
        lines = ["Attributions"]
        if self.shapley is not None:
            lines[0] += ": exact Shapley values of the sequences"
        if self.maps:
            a = self._map()
            lines[0] += f"; {self.chosen} per voxel, {self.plane} slice {self.index}"
            if a.delta is not None:
                lines.append(f"<sup>{completeness(a)}</sup>")
        return "<br>".join(lines)

    def figure(self) -> go.Figure:
        m = len(self.modalities)
        detail = bool(self.maps) or self.tabular is not None
        cols = m if self.maps else 1
        bar_title = (
            "Shapley value φ of each sequence (they sum to v(all) − v(none))"
            if self.shapley is not None
            else "per modality"
        )
        fig = make_subplots(
            rows=2 if detail else 1,
            cols=cols,
            specs=[[{"colspan": cols}] + [None] * (cols - 1)] + ([[{}] * cols] if detail else []),
            subplot_titles=[bar_title]
            + (list(self.modalities) if self.maps else ["per feature"] * bool(detail)),
            vertical_spacing=0.12,
            horizontal_spacing=0.02,
            row_heights=[0.36, 0.64] if self.maps else None,
        )
        for bar in self.bars():
            fig.add_trace(bar, row=1, col=1)
        fig.update_yaxes(title_text=self._bar_axis_title(), row=1, col=1)
        fig.update_xaxes(title_text="sequence" if self.maps else "modality", row=1, col=1)
        if self.maps:
            self._add_maps(fig, m)
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
            fig.update_yaxes(title_text="Integrated Gradients", row=2, col=1)
        fig.update_layout(
            **title_layout(self._title(), 720 if self.maps else (580 if detail else 360), subplot_titles=True),
            barmode="group",
            margin={"b": 20, "l": 60, "r": 160},
            legend={"x": 1.01, "xanchor": "left", "y": 1.0, "yanchor": "top"},
        )
        return fig

    def _add_maps(self, fig: go.Figure, m: int) -> None:
        volume, unit, bound = self.drawn_map()
        a = self._map()
        axis = PLANES.index(self.plane)
        region = self.card.region_names.index(a.region) if a.region in self.card.region_names else None
        ring = None  # the region's outline in this slice (an empty one when the card has no such region)
        if self.target is not None:
            ring = np.zeros(take(volume[0], axis, self.index).shape, bool)
            if region is not None:
                mask = enlarge_mask(self.target[region : region + 1], self.factor)[0]
                ring = outline(take(mask, axis, self.index))
        for i in range(m):
            if self._anatomy is not None:
                drawn, lo, hi = self._anatomy[i]
                fig.add_trace(
                    go.Heatmap(z=take(drawn, axis, self.index), colorscale="gray", zmin=lo, zmax=hi,
                               showscale=False, hoverinfo="skip"),  # fmt: skip
                    row=2,
                    col=i + 1,
                )
            fig.add_trace(
                go.Heatmap(
                    z=take(volume[i], axis, self.index),
                    colorscale=ATTRIBUTION_SCALE,
                    zmin=-bound,
                    zmax=bound,
                    showscale=i == m - 1,
                    colorbar={"len": 0.55, "y": 0.0, "yanchor": "bottom", "thickness": 14,
                              "title": {"text": f"{unit}<br>per voxel", "side": "right"}},  # fmt: skip
                    hovertemplate=f"{self.modalities[i]} %{{z:.3g}} {unit}<extra></extra>",
                    name=f"{self.modalities[i]} attribution",
                ),
                row=2,
                col=i + 1,
            )
            if ring is not None:
                fig.add_trace(
                    go.Heatmap(z=ring.astype(np.uint8), colorscale=overlay_scale(OUTLINE_COLOUR), zmin=0, zmax=1,
                               showscale=False, hoverinfo="skip", name=f"{a.region} outline"),  # fmt: skip
                    row=2,
                    col=i + 1,
                )
            anchor = fig.get_subplot(2, i + 1).xaxis.plotly_name.replace("axis", "")
            fig.update_xaxes(showticklabels=False, constrain="domain", row=2, col=i + 1)
            fig.update_yaxes(showticklabels=False, scaleanchor=anchor, constrain="domain", row=2, col=i + 1)
        if ring is not None:
            fig.add_trace(
                go.Scatter(x=[None], y=[None], mode="markers", name=f"{a.region} ground-truth outline",
                           marker={"symbol": "square-open", "size": 12, "color": OUTLINE_COLOUR,
                                   "line": {"width": 2}}),  # fmt: skip
                row=1,
                col=1,
            )

    def _build(self) -> ipw.Widget:
        self._live = live_figure(self.figure())
        if not self.maps:
            return ipw.VBox([self._live])
        chooser = ipw.Dropdown(options=[_label(a) for a in self.maps], value=self.chosen, description="map")
        plane = ipw.Dropdown(options=PLANES, value=self.plane, description="plane")
        index = ipw.IntSlider(value=self.index, min=0, max=self.display_shape[0] - 1, description="slice",
                              layout=SLIDER_LAYOUT)  # fmt: skip

        def changed(_change) -> None:
            self.chosen, self.plane = chooser.value, plane.value
            index.max = self.display_shape[PLANES.index(self.plane)] - 1
            self.index = index.value
            sync_figure(self._live, self.figure())

        for control in (chooser, plane, index):
            control.observe(changed, names="value")
        self.controls = {"map": chooser, "plane": plane, "slice": index}
        return ipw.VBox([ipw.HBox([chooser, plane, index]), self._live])
