"""Segmentation viewer: orthogonal slices of a case with ground-truth and prediction overlays per region.

Volumes are (D, H, W) in the loader's orientation, any size. Ground truth is drawn as each region's outline,
the prediction as a filled, semi-transparent area, so both stay readable on top of each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import ndimage

from ._base import REGION_COLOURS, View, overlay_scale

# Planes across axis 0 (D), 1 (H), 2 (W) of a loader volume, (D, H, W) = NIfTI (k, i, j) (data/brats.py):
# in BraTS orientation D is inferior-superior, H (i) left-right, W (j) posterior-anterior.
PLANES = ("axial", "sagittal", "coronal")


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary voxels of a 2-D boolean mask (inside, with an outside 4-neighbour)."""
    return mask & ~ndimage.binary_erosion(mask)


def take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` of a (D, H, W) volume across ``axis`` (0, 1 or 2), as drawn: rows go up the screen.

    Axial slices are (W, H) (transposed: H, left-right, runs across), sagittal (D, W), coronal (D, H).
    """
    cut = np.take(volume, index, axis=axis)
    return cut.T if axis == 0 else cut


class SegmentationViewer(View):
    """Orthogonal slices with overlays.

    Args:
        image: (M, D, H, W) float, the case's sequences in card order (missing ones are zeros).
        names: the M modality names.
        regions: names of the R region channels of ``target`` / ``prediction``, e.g. card order (ET, WT, TC).
        target: (R, D, H, W) ground truth, bool or {0, 1}; optional.
        prediction: (R, D, H, W) prediction, bool or {0, 1}; optional (``set_prediction`` replaces it).
        cursor: the (d, h, w) voxel the three planes cross at; default the centre of the ground-truth tumour
            (the union of the regions: WT for BraTS), else the volume centre.
    """

    def __init__(
        self,
        image: np.ndarray,
        names: Sequence[str],
        regions: Sequence[str] = ("ET", "WT", "TC"),
        target: np.ndarray | None = None,
        prediction: np.ndarray | None = None,
        cursor: Sequence[int] | None = None,
        title: str = "",
    ):
        if image.ndim != 4 or image.shape[0] != len(names):
            raise ValueError(
                f"image must be (M, D, H, W) with M = {len(names)} ({', '.join(names)}), got {image.shape}"
            )
        self.image, self.names, self.regions, self.title = image, tuple(names), tuple(regions), title
        self.target = self._check(target, "target")
        self.prediction = self._check(prediction, "prediction")
        self.sequence = self.names[0]
        self.shown = {r: True for r in self.regions}
        self.opacity = 0.45
        self.cursor = list(cursor) if cursor is not None else self._centre()

    def _check(self, overlay: np.ndarray | None, what: str) -> np.ndarray | None:
        if overlay is None:
            return None
        expected = (len(self.regions), *self.image.shape[1:])
        if overlay.shape != expected:
            raise ValueError(
                f"{what} must be (R, D, H, W) = {expected} for regions {self.regions}, got {overlay.shape}"
            )
        return overlay.astype(bool)

    def _centre(self) -> list[int]:
        if self.target is not None and self.target.any():
            return [int(round(c)) for c in ndimage.center_of_mass(self.target.any(0))]
        return [s // 2 for s in self.image.shape[1:]]

    def set_prediction(self, prediction: np.ndarray | None) -> None:
        """Replace the prediction overlay, (R, D, H, W); the live figure follows."""
        self.prediction = self._check(prediction, "prediction")
        self._refresh()

    def _refresh(self) -> None:
        """Push the changing trace properties into the live figure (cheaper than rebuilding the figure)."""
        if "widget" in self.__dict__:
            with self._live.batch_update():
                for trace, state in zip(self._live.data, self._states(), strict=True):
                    trace.update(state)
                self._live.layout.title.text = self._title()

    def _title(self) -> str:
        d, h, w = self.cursor
        return f"{self.title} {self.sequence} at (d, h, w) = ({d}, {h}, {w})".strip()

    def _states(self) -> list[dict]:
        """Per trace, in figure order (per plane: the image, ground-truth outlines, prediction fills, each
        region in ``regions`` order), the properties the controls change."""
        volume = self.image[self.names.index(self.sequence)]
        lo, hi = np.percentile(volume, [0.5, 99.5]) if volume.any() else (0.0, 1.0)
        states = []
        for axis in range(3):
            index = self.cursor[axis]
            states.append(
                {
                    "z": take(volume, axis, index),
                    "zmin": lo,
                    "zmax": hi if hi > lo else lo + 1,
                    "hovertemplate": f"{self.sequence} %{{z:.2f}}<extra></extra>",
                }
            )
            for overlay, fill in ((self.target, False), (self.prediction, True)):
                for r, region in enumerate(self.regions):
                    mask = None if overlay is None else take(overlay[r], axis, index)
                    states.append(
                        {
                            "z": None if mask is None else (mask if fill else outline(mask)).astype(np.uint8),
                            "opacity": self.opacity if fill else 1.0,
                            "visible": mask is not None and self.shown[region],
                        }
                    )
        return states

    def figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=3, subplot_titles=PLANES, horizontal_spacing=0.03)
        states = iter(self._states())
        for col in (1, 2, 3):
            fig.add_trace(go.Heatmap(colorscale="gray", showscale=False, **next(states)), row=1, col=col)
            for kind in ("ground truth", "prediction"):
                for region in self.regions:
                    overlay = go.Heatmap(
                        colorscale=overlay_scale(REGION_COLOURS.get(region, "#ffffff")),
                        zmin=0,
                        zmax=1,
                        showscale=False,
                        name=f"{region} {kind}",
                        hovertemplate=f"{region} {kind}<extra></extra>",
                        **next(states),
                    )
                    fig.add_trace(overlay, row=1, col=col)
            fig.update_xaxes(showticklabels=False, constrain="domain", row=1, col=col)
            fig.update_yaxes(
                showticklabels=False,
                scaleanchor=f"x{col if col > 1 else ''}",
                constrain="domain",
                row=1,
                col=col,
            )
        fig.update_layout(
            title=self._title(), height=340, margin={"t": 60, "b": 10, "l": 10, "r": 10}, showlegend=False
        )
        return fig

    def overlay_slice(self, kind: str, region: str, axis: int) -> np.ndarray | None:
        """The 2-D mask drawn for ``kind`` ("target" / "prediction") and ``region`` in plane ``axis``."""
        overlay = getattr(self, kind)
        return None if overlay is None else take(overlay[self.regions.index(region)], axis, self.cursor[axis])

    def _build(self) -> ipw.Widget:
        self._live = go.FigureWidget(self.figure())
        self.controls = {
            "sequence": ipw.Dropdown(options=self.names, value=self.sequence, description="sequence"),
            "opacity": ipw.FloatSlider(value=self.opacity, min=0, max=1, step=0.05, description="opacity"),
            **{
                plane: ipw.IntSlider(
                    value=self.cursor[axis], min=0, max=self.image.shape[1 + axis] - 1, description=plane
                )
                for axis, plane in enumerate(PLANES)
            },
            **{
                region: ipw.Checkbox(value=True, description=region, indent=False, layout={"width": "60px"})
                for region in self.regions
            },
        }

        def changed(_change) -> None:
            self.sequence = self.controls["sequence"].value
            self.opacity = self.controls["opacity"].value
            self.cursor = [self.controls[p].value for p in PLANES]
            self.shown = {r: self.controls[r].value for r in self.regions}
            self._refresh()

        for control in self.controls.values():
            control.observe(changed, names="value")
        c = self.controls
        return ipw.VBox(
            [
                ipw.HBox([c["sequence"], c["opacity"], *(c[r] for r in self.regions)]),
                ipw.HBox([c[p] for p in PLANES]),
                self._live,
            ]
        )
