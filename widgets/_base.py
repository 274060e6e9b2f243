"""What every view shares: a static figure, a live widget built on first use, and the colours."""

from __future__ import annotations

import functools

import anywidget
import ipywidgets as ipw
import plotly.graph_objects as go

# Regions in the paper's report order; colours stay the same in every view.
REGION_COLOURS = {"ET": "#d62728", "TC": "#ff7f0e", "WT": "#2ca02c"}
MODALITY_COLOURS = ("#1f77b4", "#9467bd", "#e377c2", "#17becf", "#8c564b", "#bcbd22", "#7f7f7f", "#2ca02c")


# Plotly draws its toolbar (the modebar) in a row about 24 px high at the figure's top right. Titles go below
# that row, left-aligned, so that no title can run under the toolbar whatever its length. Plotly anchors a title
# of several lines by its first line's baseline, whatever ``yanchor`` says (measured in Chromium: the text
# starts ~15 px above the anchor and each further ``<sup>`` line adds ~22 px below it).
TOOLBAR_PX = 30
TITLE_ANCHOR_PX = TOOLBAR_PX + 16  # from the figure's top to the title's first baseline
SUBPLOT_TITLE_PX = 26  # the band above the plots that subplot titles sit in


def modality_colour(index: int) -> str:
    return MODALITY_COLOURS[index % len(MODALITY_COLOURS)]


def title_layout(text: str, height: int, subplot_titles: bool = False) -> dict:
    """Layout keys for a figure of ``height`` px whose title sits in the row below the plotly toolbar: ``title``
    (left-aligned, its first line ``TITLE_ANCHOR_PX`` below the top edge), ``height``, and the top margin that
    holds the title's ``<br>`` lines and, with ``subplot_titles``, the band of subplot titles below them. Use as
    ``fig.update_layout(**title_layout(text, 400))``; give other margins without ``t``."""
    lines = text.count("<br>") + 1 if text else 1
    bottom = TITLE_ANCHOR_PX + (8 if lines == 1 else 10 + 22 * (lines - 2))
    return {
        "title": {
            "text": text,
            "x": 0.0,
            "xanchor": "left",
            "xref": "paper",
            "y": 1 - TITLE_ANCHOR_PX / height,
            "yanchor": "top",
            "yref": "container",
            "font": {"size": 15},
        },
        "height": height,
        "margin_t": bottom + 12 + (SUBPLOT_TITLE_PX if subplot_titles else 0),
    }


def live_figure(fig: go.Figure) -> go.FigureWidget:
    """A ``FigureWidget`` of ``fig`` that takes the width of the notebook's output (plotly's ``responsive``
    mode): drawn before JupyterLab has laid out its output, a figure widget otherwise keeps plotly's default
    700 px, half the width of a wide notebook (``FitWidth`` tells it when the width is known)."""
    live = go.FigureWidget(fig)
    live._config = {**live._config, "responsive": True}
    return live


class FitWidth(anywidget.AnyWidget):
    """An invisible widget that, whenever the box holding it changes size (first layout included), sends the
    page a ``resize`` event, on which plotly redraws its responsive figures at their container's width."""

    _esm = """
    export default {
      render({ el }) {
        el.style.height = "0px";
        const fire = () => window.dispatchEvent(new Event("resize"));
        const observer = new ResizeObserver(fire);
        const watch = () => el.parentElement ? observer.observe(el.parentElement) : requestAnimationFrame(watch);
        watch();
        return () => observer.disconnect();
      },
    };
    """


class View:
    """A view of mckd_lab objects.

    ``figure()`` returns a static ``go.Figure`` of the current state (what a papermill-executed notebook
    keeps); ``widget`` is the live ipywidgets box, built on first use; displaying the view shows the widget.
    """

    def figure(self) -> go.Figure:
        raise NotImplementedError

    def _build(self) -> ipw.Widget:
        raise NotImplementedError

    @functools.cached_property
    def widget(self) -> ipw.Widget:
        """The live box, with the CSS class ``mckd-<view class, lower case>`` (browser tests look for it)."""
        box = self._build()
        box.children = (*box.children, FitWidth())
        box.add_class(f"mckd-{type(self).__name__.lower()}")
        return box

    def show(self, live: bool = True) -> ipw.Widget | go.Figure:
        """The live widget, or the static figure (``live=False``: batch runs, where no kernel stays)."""
        return self.widget if live else self.figure()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def sync_figure(live: go.FigureWidget, fresh: go.Figure) -> None:
    """Copy ``fresh``'s traces and layout into ``live`` (same trace list) in one batched message."""
    if len(live.data) != len(fresh.data):
        raise ValueError(f"live figure has {len(live.data)} traces, the new state {len(fresh.data)}")
    with live.batch_update():
        for old, new in zip(live.data, fresh.data, strict=True):
            old.update(new.to_plotly_json(), overwrite=True)
        live.layout = fresh.layout


def overlay_scale(colour: str) -> list:
    """A heatmap colour scale drawing 0 transparent and 1 in ``colour`` (zmin 0, zmax 1): masks need no NaN,
    which JSON (the widget messages) cannot carry."""
    return [[0, "rgba(0,0,0,0)"], [0.5, "rgba(0,0,0,0)"], [0.5, colour], [1, colour]]
