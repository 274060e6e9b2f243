"""Segmentation viewer: orthogonal slices of a case with ground-truth and prediction overlays per region.

Volumes are (D, H, W) in the loader's orientation, any size. Ground truth is drawn as each region's outline,
the prediction as a filled, semi-transparent area, so both stay readable on top of each other; a legend says
which colour is which region and which overlay is which.

Small volumes are shown enlarged: a case with a side under ``display_min`` voxels (default 64: a 32^3 phantom)
is drawn at an integer multiple of its size, the image by cubic interpolation and each mask by linear
interpolation of its 0/1 values cut at 0.5, so that anatomy and outlines are legible. Nothing else changes:
Dice and every number are computed on the case's own voxels; the title says the factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import ipywidgets as ipw
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import ndimage

from mckd_lab.data.cards import load_card

from ._base import REGION_COLOURS, View, live_figure, overlay_scale, title_layout

# Planes across axis 0 (D), 1 (H), 2 (W) of a loader volume, (D, H, W) = NIfTI (k, i, j) (data/brats.py):
# in BraTS orientation D is inferior-superior, H (i) left-right, W (j) posterior-anterior.
PLANES = ("axial", "sagittal", "coronal")
DISPLAY_MIN = 64  # smallest side drawn, in display pixels (voxels times the display factor)
SLIDER_LAYOUT = {"width": "32%", "min_width": "260px"}  # three sliders share the row: one per plane


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary voxels of a 2-D boolean mask (inside, with an outside 4-neighbour)."""
    return mask & ~ndimage.binary_erosion(mask)


def take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` of a (D, H, W) volume across ``axis`` (0, 1 or 2), as drawn: rows go up the screen.

    Axial slices are (W, H) (transposed: H, left-right, runs across), sagittal (D, W), coronal (D, H).
    """
    cut = np.take(volume, index, axis=axis)
    return cut.T if axis == 0 else cut


def display_factor(shape: Sequence[int], display_min: int | None = DISPLAY_MIN) -> int:
    """The whole factor that brings the smallest side of ``shape`` to at least ``display_min`` (1: as is)."""
    return 1 if not display_min else max(1, math.ceil(display_min / min(shape)))


def enlarge(volume: np.ndarray, factor: int, order: int) -> np.ndarray:
    """(D, H, W) -> (factor D, factor H, factor W) float32 by spline interpolation of ``order``; each voxel
    becomes a ``factor``^3 block centred where it was (``grid_mode``: voxel edges stay edges)."""
    volume = np.asarray(volume, np.float32)
    if factor == 1:
        return volume
    return ndimage.zoom(volume, factor, order=order, mode="nearest", grid_mode=True)


def enlarge_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A (R, D, H, W) 0/1 mask drawn ``factor`` times larger: linear interpolation of its values cut at 0.5
    (the same mask for ``factor`` 1)."""
    if factor == 1:
        return np.asarray(mask).astype(bool)
    return np.stack([enlarge(m, factor, order=1) >= 0.5 for m in np.asarray(mask, np.float32)])


def anatomy(volume: np.ndarray, factor: int) -> tuple[np.ndarray, float, float]:
    """A sequence as drawn: enlarged by cubic interpolation, the grey range from its brain voxels (0.5 and 99.5
    percentiles of the non-zero ones: loaders zero everything outside the brain) and the outside set to the
    darkest grey, so that the brain stands out black-framed. Returns (volume (D', H', W'), zmin, zmax)."""
    drawn = enlarge(volume, factor, order=3)
    brain = enlarge(np.asarray(volume) != 0, factor, order=1) >= 0.5
    if not brain.any():
        return drawn, 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(drawn[brain], [0.5, 99.5]))
    return np.where(brain, drawn, lo).astype(np.float32), lo, hi if hi > lo else lo + 1.0


def region_descriptions() -> dict[str, str]:
    """{region: description} from the brats card (``ET``: enhancing tumour, ...), for legends."""
    return {r["name"]: r["description"] for r in load_card("brats").header["regions"]}


class SegmentationViewer(View):
    """Orthogonal slices with overlays.

    Args:
        image: (M, D, H, W) float, the case's sequences in card order (missing ones are zeros).
        names: the M modality names.
        regions: names of the R region channels of ``target`` / ``prediction``, e.g. card order (ET, WT, TC).
        target: (R, D, H, W) ground truth, bool or {0, 1}; optional.
        prediction: (R, D, H, W) prediction, bool or {0, 1}; optional (``set_prediction`` replaces it).
        cursor: the (d, h, w) voxel of the case the three planes cross at; default the centre of the
            ground-truth tumour (the union of the regions: WT for BraTS), else the volume centre.
        display_min: draw the case enlarged by a whole factor until its smallest side has this many pixels
            (None: as it is).
        descriptions: {region: words} for the legend (default: the brats card's, e.g. enhancing tumour).
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
        display_min: int | None = DISPLAY_MIN,
        descriptions: Mapping[str, str] | None = None,
    ):
        if image.ndim != 4 or image.shape[0] != len(names):
            raise ValueError(
                f"image must be (M, D, H, W) with M = {len(names)} ({', '.join(names)}), got {image.shape}"
            )
        self.image, self.names, self.regions, self.title = image, tuple(names), tuple(regions), title
        self.factor = display_factor(image.shape[1:], display_min)
        self.descriptions = dict(region_descriptions() if descriptions is None else descriptions)
        self.target = self._check(target, "target")
        self.prediction = self._check(prediction, "prediction")
        self._shown_masks = {
            "target": None if self.target is None else enlarge_mask(self.target, self.factor),
            "prediction": None if self.prediction is None else enlarge_mask(self.prediction, self.factor),
        }
        self._volumes: dict[str, tuple] = {}  # per sequence: (drawn volume, zmin, zmax), made when first shown
        self.sequences = self.names  # the sequences offered (ModalityDropExplorer: the ticked ones)
        self.sequence = self.names[0]
        self.shown = {r: True for r in self.regions}
        self.opacity = 0.45
        voxel = list(cursor) if cursor is not None else self._centre()
        self.cursor = [c * self.factor + self.factor // 2 for c in voxel]  # in display pixels

    @property
    def display_shape(self) -> tuple[int, int, int]:
        """(D, H, W) as drawn: the case's shape times the display factor."""
        return tuple(s * self.factor for s in self.image.shape[1:])

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

    def volume(self, sequence: str) -> np.ndarray:
        """The sequence as drawn (D', H', W'): enlarged by cubic interpolation when the factor is > 1, black
        outside the brain (``anatomy``)."""
        if sequence not in self._volumes:
            self._volumes[sequence] = anatomy(self.image[self.names.index(sequence)], self.factor)
        return self._volumes[sequence][0]

    def set_prediction(self, prediction: np.ndarray | None) -> None:
        """Replace the prediction overlay, (R, D, H, W) on the case's voxels; the live figure follows."""
        self.prediction = self._check(prediction, "prediction")
        self._shown_masks["prediction"] = (
            None if self.prediction is None else enlarge_mask(self.prediction, self.factor)
        )
        self._refresh()

    def set_sequences(self, sequences: Sequence[str]) -> None:
        """Offer only ``sequences`` (e.g. the modalities ticked present); the one shown moves to the first of
        them when it is no longer among them."""
        unknown = [s for s in sequences if s not in self.names]
        if unknown or not sequences:
            raise ValueError(f"sequences {list(sequences)}: give one or more of {', '.join(self.names)}")
        self.sequences = tuple(s for s in self.names if s in sequences)
        if self.sequence not in self.sequences:
            self.sequence = self.sequences[0]
        if "widget" in self.__dict__:
            dropdown = self.controls["sequence"]
            self._syncing = True  # one refresh below, not one per changed control
            try:
                dropdown.options = self.sequences
                dropdown.value = self.sequence
            finally:
                self._syncing = False
        self._refresh()

    def _refresh(self) -> None:
        """Push the changing trace properties into the live figure (cheaper than rebuilding the figure)."""
        if "widget" in self.__dict__:
            states = self._states()
            with self._live.batch_update():
                for trace, state in zip(self._live.data[: len(states)], states, strict=True):
                    trace.update(state)
                self._live.layout.title.text = self._title()

    def _title(self) -> str:
        shape = "×".join(str(s) for s in self.image.shape[1:])
        size = f"drawn {self.factor}× enlarged from {shape} voxels" if self.factor > 1 else f"{shape} voxels"
        return f"{self.title + ': ' if self.title else ''}{self.sequence}<br><sup>{size}</sup>"

    def _states(self) -> list[dict]:
        """Per trace, in figure order (per plane: the image, ground-truth outlines, prediction fills, each
        region in ``regions`` order), the properties the controls change."""
        volume = self.volume(self.sequence)
        _, lo, hi = self._volumes[self.sequence]
        states = []
        for axis in range(3):
            index = self.cursor[axis]
            states.append(
                {
                    "z": take(volume, axis, index),
                    "zmin": lo,
                    "zmax": hi,
                    "hovertemplate": f"{self.sequence} %{{z:.2f}}<extra></extra>",
                }
            )
            for kind, fill in (("target", False), ("prediction", True)):
                overlay = self._shown_masks[kind]
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

    def legend_traces(self) -> list[go.Scatter]:
        """Legend entries (no data): per region its colour, as an outline (ground truth) and filled (prediction),
        only for the overlays the viewer has."""
        entries = []
        for kind, symbol, has in (
            ("ground truth (outline)", "square-open", self.target is not None),
            ("prediction (filled)", "square", self.prediction is not None),
        ):
            if not has:
                continue
            for region in self.regions:
                words = self.descriptions.get(region)
                entries.append(
                    go.Scatter(
                        x=[None],
                        y=[None],
                        mode="markers",
                        marker={"symbol": symbol, "size": 12, "color": REGION_COLOURS.get(region, "#ffffff"),
                                "line": {"width": 2}},  # fmt: skip
                        name=f"{region}{f' ({words})' if words else ''}",
                        legendgroup=kind,
                        legendgrouptitle_text=kind,
                        hoverinfo="skip",
                    )
                )
        return entries

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
        for entry in self.legend_traces():
            fig.add_trace(entry, row=1, col=1)
        fig.update_layout(
            **title_layout(self._title(), 420, subplot_titles=True),
            margin={"b": 10, "l": 10, "r": 10},
            showlegend=bool(self.target is not None or self.prediction is not None),
            legend={"orientation": "v", "x": 1.0, "xanchor": "left", "y": 1.0, "groupclick": "toggleitem",
                    "font": {"size": 12}},  # fmt: skip
        )
        fig.update_layout(margin_r=200 if fig.layout.showlegend else 10)
        return fig

    def overlay_slice(self, kind: str, region: str, axis: int) -> np.ndarray | None:
        """The 2-D mask drawn for ``kind`` ("target" / "prediction") and ``region`` in plane ``axis``, at the
        display resolution and the current cursor."""
        overlay = self._shown_masks[kind]
        return None if overlay is None else take(overlay[self.regions.index(region)], axis, self.cursor[axis])

    def _build(self) -> ipw.Widget:
        self._live = live_figure(self.figure())
        self._syncing = False
        self.controls = {
            "sequence": ipw.Dropdown(options=self.sequences, value=self.sequence, description="sequence"),
            "opacity": ipw.FloatSlider(value=self.opacity, min=0, max=1, step=0.05, description="opacity"),
            **{
                plane: ipw.IntSlider(
                    value=self.cursor[axis],
                    min=0,
                    max=self.display_shape[axis] - 1,
                    description=plane,
                    continuous_update=True,
                    layout=SLIDER_LAYOUT,
                    style={"description_width": "60px"},
                )
                for axis, plane in enumerate(PLANES)
            },
            **{
                region: ipw.Checkbox(value=True, description=region, indent=False, layout={"width": "60px"})
                for region in self.regions
            },
        }

        def changed(_change) -> None:
            if self._syncing:
                return
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
                ipw.HBox([c[p] for p in PLANES], layout={"width": "100%"}),
                self._live,
            ]
        )
