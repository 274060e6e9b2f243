"""Interactive views of mckd_lab runs, models and cases (ipywidgets + plotly).

Every view has ``figure()`` (a static ``go.Figure``, kept by papermill-executed notebooks) and ``widget`` (the
live ipywidgets box; displaying the view shows it). This package imports mckd_lab, never the reverse.
"""

from widgets.attributions import AttributionView
from widgets.dashboard import ExperimentsDashboard
from widgets.drop import ModalityDropExplorer
from widgets.features import DistilledFeatures
from widgets.subsets import SubsetTableView
from widgets.viewer import SegmentationViewer
from widgets.weights import ImportanceWeightsView

__all__ = [
    "AttributionView",
    "DistilledFeatures",
    "ExperimentsDashboard",
    "ImportanceWeightsView",
    "ModalityDropExplorer",
    "SegmentationViewer",
    "SubsetTableView",
]
