"""Interactive views of mckd_lab runs, models and cases (ipywidgets + plotly).

Every view has ``figure()`` (a static ``go.Figure``, kept by papermill-executed notebooks), ``widget`` (the
live ipywidgets box, built on first use) and ``show(live)`` (the one or the other). This package imports
mckd_lab, never the reverse. What notebooks call::

    ImportanceWeightsView(run.history)                     # or names=card.modality_names, then
    train(config, run_dir, callbacks=[weights.append])      # ... the figure follows the training live
    SegmentationViewer(case.image, card.modality_names, card.region_names, target=case.target)
    ModalityDropExplorer(run.model, case.image, case.target, available=case.present, card=card)
    DistilledFeatures(run.model, [c.image for c in cases], [c.case_id for c in cases],
                      [c.present for c in cases], card=card)
    AttributionView(shapley, [voxel_map], card=card)        # results of mckd_lab.explain
    SubsetTableView(run.metrics, on_select=explorer.select)  # a row shows that subset in the explorer
    ExperimentsDashboard(load_results(sweep_dir))          # or a sweep folder / results.csv path
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
