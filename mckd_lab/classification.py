"""ADNI classification, by its old address (L5): the task is ``mckd_lab.tasks.classification``, its recipe
``mckd_lab.recipes.adni_config``, run-level calls ``mckd_lab.runs``. Re-exported so that code written before
the move keeps working; new code imports from those modules."""

from mckd_lab.metrics import METRICS, balanced_accuracy, classification_metrics
from mckd_lab.recipes import adni_config
from mckd_lab.runs import evaluate_run, predict_run, render_table
from mckd_lab.tasks.classification import (
    SUBSET_RULE,
    ClassificationTask,
    Subject,
    SubjectPrediction,
    class_weights,
    evaluate_model,
    load_scaler,
    predict_probabilities,
    restrict,
)


def predict_subject(run, csv, rid: int) -> SubjectPrediction:
    """Class probabilities of subject ``rid`` of ``csv`` (None: the run's own table): ``predict_run``."""
    return predict_run(run, rid=rid, data=csv)


__all__ = [
    "METRICS", "SUBSET_RULE", "ClassificationTask", "Subject", "SubjectPrediction", "adni_config",
    "balanced_accuracy", "class_weights", "classification_metrics", "evaluate_model", "evaluate_run",
    "load_scaler", "predict_probabilities", "predict_subject", "render_table", "restrict",
]  # fmt: skip
