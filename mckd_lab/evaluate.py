"""Evaluation over every subset of modalities (L4): the entry points, and where each piece lives.

    evaluate_run(run_or_folder, data=None)  # the all-subsets table, through the run's task (mckd_lab.runs)
    render_table(result)                    # that table as text, by the task that made it

The metrics and their conventions are ``mckd_lab.metrics`` (Dice, HD95, classification metrics); the BraTS
table (``SubsetTable``, ``evaluate_cases``, ``evaluate_case``, ``report_regions``) is the segmentation task's
(``mckd_lab.tasks.segmentation``), ADNI's is the classification task's. Names are re-exported here so that
``from mckd_lab.evaluate import ...`` keeps working.
"""

from mckd_lab.metrics import (
    ABSENT_MARK,
    DICE_CONVENTION,
    HD95_CONVENTION,
    HD95_ONE_EMPTY,
    PRESENT_MARK,
    dice,
    hd95,
)
from mckd_lab.rundir import write_json_atomic
from mckd_lab.runs import evaluate_run, render_table
from mckd_lab.tasks.segmentation import (
    SubsetTable,
    describe_protocol,
    evaluate_case,
    evaluate_cases,
    report_regions,
)

__all__ = [
    "ABSENT_MARK", "DICE_CONVENTION", "HD95_CONVENTION", "HD95_ONE_EMPTY", "PRESENT_MARK", "SubsetTable",
    "describe_protocol", "dice", "evaluate_case", "evaluate_cases", "evaluate_run", "hd95", "render_table",
    "report_regions", "write_json_atomic",
]  # fmt: skip
