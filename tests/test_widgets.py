"""The widget views, built from real library objects: a tiny training run on phantoms (its history, model and
cases read back by the BraTS loader), explain results and evaluation tables. Each test moves a control and
checks the figure data against values computed here by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from mckd_lab.classification import adni_config
from mckd_lab.classification import evaluate_run as evaluate_classification
from mckd_lab.config import RunConfig
from mckd_lab.data.cards import load_card
from mckd_lab.data.missing import all_subsets
from mckd_lab.evaluate import SubsetTable
from mckd_lab.explain import modality_shapley, tabular_integrated_gradients, voxel_attribution
from mckd_lab.recipes import split_cases
from mckd_lab.train import train
from widgets import (
    AttributionView,
    DistilledFeatures,
    ExperimentsDashboard,
    ImportanceWeightsView,
    ModalityDropExplorer,
    SegmentationViewer,
    SubsetTableView,
)

CARD = load_card("brats")
NAMES = CARD.modality_names  # flair, t1, t1ce, t2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MCKD run on phantoms (2 warm-up + 2 missing-modality iterations, a meta step each), trained with
    a live importance-weights view attached as the trainer's callback."""
    config = RunConfig().with_overrides(
        {
            "data.phantom_cases": 4, "data.phantom_size": 32, "data.crop": [32, 32, 32],
            "data.heldout_cases": 1, "data.test_fraction": 0.25, "model.channels": [8, 16, 32],
            "optim.iterations": 4, "optim.warmup_iterations": 2, "method.meta_every_warmup": 1,
            "method.meta_every_missing": 1, "method.meta_batches": 1, "runtime.progress": False,
        }
    )  # fmt: skip
    view = ImportanceWeightsView(names=NAMES)
    view.widget  # noqa: B018 - live before training starts
    run = train(config, tmp_path_factory.mktemp("run") / "run", callbacks=[view.append])
    return run, view


@pytest.fixture(scope="module")
def model(trained):
    return trained[0].model


@pytest.fixture(scope="module")
def cases(trained):
    run = trained[0]
    return split_cases(run, "test") + split_cases(run, "train")


def forward_probabilities(model, image: np.ndarray, present) -> np.ndarray:
    """The model's own forward pass (zeroed inputs), the reference for the explorer's encode-once path; the
    volume is zero-padded at the end of each axis to a multiple of the network's stride 8, then cropped."""
    keep = torch.tensor([present])
    shape = image.shape[1:]
    padded = np.zeros((4, *(-(-s // 8) * 8 for s in shape)), np.float32)
    padded[:, : shape[0], : shape[1], : shape[2]] = image
    x = torch.as_tensor(padded)[None] * keep[..., None, None, None]
    with torch.no_grad():
        return torch.sigmoid(model(x, keep).logits)[0, :, : shape[0], : shape[1], : shape[2]].numpy()


def hand_dice(p: np.ndarray, t: np.ndarray) -> float:
    return 1.0 if p.sum() + t.sum() == 0 else 2 * (p & t).sum() / (p.sum() + t.sum())


# --- importance weights -------------------------------------------------------------------------------------


def history(iterations: int = 40, meta_every: int = 10, warmup: int = 20) -> list[dict]:
    records = []
    for it in range(1, iterations + 1):
        stage = "warmup" if it <= warmup else "missing"
        records.append({"kind": "train", "iteration": it, "stage": stage, "loss": 1.0, "subset": "flair"})
        if it % meta_every == 0:
            w = np.array([1.0, 2.0, 3.0, 4.0 + it])
            records.append(
                {
                    "kind": "meta",
                    "iteration": it,
                    "importance": dict(zip(NAMES, w / w.sum(), strict=True)),
                    "meta_loss": 0.1,
                }
            )
    return records


def test_weights_one_trace_per_modality_with_history_values():
    fig = ImportanceWeightsView(history()).figure()
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == list(NAMES)
    t2 = fig.data[3]
    assert list(t2.x) == [10, 20, 30, 40]
    np.testing.assert_allclose(t2.y, [14 / 20, 24 / 30, 34 / 40, 44 / 50])  # (4 + it) / (10 + it)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(s.x0, s.x1) for s in rects] == [(1, 20), (21, 40)]  # warm-up, then missing modalities


def test_weights_of_a_real_run_live_and_static(trained):
    run, view = trained
    metas = run.records("meta")
    assert len(metas) == 4  # one meta step per iteration
    live = view.widget.children[0]
    static = ImportanceWeightsView(run.history).figure()
    for fig in (live, static):
        assert [t.name for t in fig.data] == list(NAMES)
        for m, name in enumerate(NAMES):
            assert list(fig.data[m].x) == [r["iteration"] for r in metas]
            np.testing.assert_allclose(fig.data[m].y, [r["importance"][name] for r in metas])
        assert [(s.x0, s.x1) for s in fig.layout.shapes if s.type == "rect"] == [(0, 1), (2, 3)]


# --- segmentation viewer ------------------------------------------------------------------------------------


def test_viewer_slices_sequences_and_overlays(cases):
    case = cases[0]
    viewer = SegmentationViewer(
        case.image, NAMES, CARD.region_names, target=case.target, prediction=case.target
    )
    wt = case.target[1]
    assert viewer.cursor == [int(round(c)) for c in np.argwhere(wt).mean(0)]
    viewer.widget  # noqa: B018 - builds the controls
    live = viewer._live
    viewer.controls["sequence"].value = "t1ce"
    viewer.controls["axial"].value = 5
    np.testing.assert_array_equal(live.data[0].z, case.image[2, 5].T)  # axial: H across, W up
    # per plane: image, then ground truth (ET, WT, TC) as outlines, then predictions filled
    gt_wt = viewer.overlay_slice("target", "WT", 0)
    np.testing.assert_array_equal(gt_wt, wt[5].T)
    assert live.data[2].name == "WT ground truth" and live.data[5].name == "WT prediction"
    drawn_fill = np.asarray(live.data[5].z) == 1
    np.testing.assert_array_equal(drawn_fill, wt[5].T)
    drawn_outline = np.asarray(live.data[2].z) == 1
    assert drawn_outline.sum() < wt[5].sum() or wt[5].sum() < 9  # an outline of a blob is thinner than it
    viewer.controls["WT"].value = False
    assert live.data[2].visible is False and live.data[5].visible is False
    assert live.data[1].visible is True  # ET stays


def test_outline_of_a_square_is_its_border():
    from widgets.viewer import outline

    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    assert outline(mask).sum() == 12 and not outline(mask)[3:5, 3:5].any()


# --- modality drop explorer ---------------------------------------------------------------------------------


def test_drop_explorer_equals_forward_and_updates_on_toggle(cases, model):
    case = cases[0]
    explorer = ModalityDropExplorer(model, case.image, case.target, available=case.present, card=CARD)
    explorer.widget  # noqa: B018
    np.testing.assert_allclose(
        explorer.probabilities, forward_probabilities(model, case.image, (True,) * 4), atol=1e-5
    )
    et_before = np.asarray(explorer.viewer._live.data[4].z)  # axial ET prediction: 1 inside, 0 outside
    explorer.checkboxes["t1ce"].value = False
    present = (True, True, False, True)
    assert explorer.present == present and explorer.filled() == ("t1ce",)
    expected = forward_probabilities(model, case.image, present)
    np.testing.assert_allclose(explorer.probabilities, expected, atol=1e-5)
    et_after = np.asarray(explorer.viewer._live.data[4].z)
    axial = explorer.viewer.cursor[0]
    np.testing.assert_array_equal(et_after, (expected[0, axial] > 0.5).T)
    assert not np.array_equal(et_before, et_after)
    pred = expected > 0.5
    scores = explorer.dice()
    for r, region in enumerate(CARD.region_names):
        assert scores[region] == pytest.approx(hand_dice(pred[r], case.target[r].astype(bool)))
    assert f"{scores['ET']:.3f}" in explorer._report.value and "filled</b>" in explorer._report.value


def test_drop_explorer_keeps_one_modality_and_respects_the_case(cases, model):
    case = cases[1]
    explorer = ModalityDropExplorer(model, case.image, case.target, available=(True, True, True, False))
    explorer.widget  # noqa: B018
    assert explorer.checkboxes["t2"].disabled and explorer.present == (True, True, True, False)
    with pytest.raises(ValueError, match="no t2"):
        explorer.select((False, False, False, True))
    explorer.select((False, True, False, False))
    assert [explorer.checkboxes[m].value for m in NAMES] == [False, True, False, False]
    explorer.checkboxes["t1"].value = False  # the last one: put back
    assert explorer.checkboxes["t1"].value and explorer.present == (False, True, False, False)


@pytest.fixture(scope="module")
def adni_run(tmp_path_factory):
    """A tiny ADNI classification run (synthetic cohort of 150 subjects, one epoch)."""
    config = adni_config(subjects=150, epochs=1, **{"runtime.progress": False})
    return train(config, tmp_path_factory.mktemp("adni") / "run")


def test_drop_explorer_class_probabilities_adni(adni_run):
    card = load_card("adni")
    subject = split_cases(adni_run, "test")[0]
    model = adni_run.model

    def forward(present) -> np.ndarray:
        keep = torch.tensor([present])
        inputs = {m: torch.as_tensor(subject.image[m])[None] for m in card.modality_names}
        with torch.no_grad():
            return torch.softmax(model(model.zero_missing(inputs, keep), keep).logits, 1)[0].numpy()

    explorer = ModalityDropExplorer(
        model, subject.image, subject.target, available=subject.present, card=card
    )
    available = tuple(bool(p) for p in subject.present)
    np.testing.assert_allclose(explorer.probabilities, forward(available), atol=1e-6)
    explorer.widget  # noqa: B018
    dropped = next(m for m, p in zip(card.modality_names, available, strict=True) if p)
    explorer.checkboxes[dropped].value = False
    present = tuple(p and m != dropped for m, p in zip(card.modality_names, available, strict=True))
    live = explorer._live
    np.testing.assert_allclose(live.data[1].y, forward(present), atol=1e-6)
    np.testing.assert_allclose(live.data[0].y, forward(available), atol=1e-6)  # the all-available bars stay
    assert list(live.data[0].x)[subject.target].endswith("(true)")
    assert dropped in explorer.filled() and "mckd-probabilities" in explorer._report.value


def test_attributions_tabular_adni(adni_run):
    card = load_card("adni")
    subject = split_cases(adni_run, "test")[0]
    ig = tabular_integrated_gradients(
        adni_run.model, subject.image, subject.present, subject.target, n_steps=4
    )
    fig = AttributionView(tabular=ig, card=card).figure()
    assert list(fig.data[0].x) == list(card.modality_names)
    np.testing.assert_allclose(fig.data[0].y, [ig.per_modality[m] for m in card.modality_names])
    imaging = fig.data[1]
    assert list(imaging.x) == list(card.modality("imaging").columns)  # one bar per feature, named by the card
    np.testing.assert_allclose(imaging.y, ig.features["imaging"])


# --- subset table -------------------------------------------------------------------------------------------


def test_subset_table_heatmap_and_row_choice(cases, model):
    subsets = all_subsets(4)
    rng = np.random.default_rng(0)
    dice = rng.uniform(size=(2, 15, 3))
    table = SubsetTable(NAMES, ("ET", "TC", "WT"), subsets, ["a", "b"], dice).to_dict()
    explorer = ModalityDropExplorer(model, cases[0].image, cases[0].target)
    view = SubsetTableView(table, on_select=explorer.select)
    fig = view.figure()
    np.testing.assert_allclose(np.asarray(fig.data[0].z[:15], float), 100 * dice.mean(0), atol=1e-3)
    np.testing.assert_allclose(np.asarray(fig.data[0].z[15], float), 100 * dice.mean((0, 1)), atol=1e-3)
    assert list(fig.data[0].y[:4]) == list(NAMES) and fig.data[0].y[15] == "mean"
    view.widget  # noqa: B018
    view._chooser.value = "flair+t1ce"
    assert explorer.present == (True, False, True, False)
    assert view._live.layout.shapes[0].y0 == subsets.index((True, False, True, False)) - 0.5


def test_subset_table_of_an_adni_run(adni_run):
    table = evaluate_classification(adni_run)
    fig = SubsetTableView(table).figure()
    assert list(fig.data[0].x) == ["accuracy", "balanced_accuracy", "macro_f1", "auc"]
    imaging_alone = table["subsets"][0]
    expected = [None if imaging_alone[m] is None else 100 * imaging_alone[m] for m in fig.data[0].x]
    assert list(fig.data[0].z[0]) == pytest.approx(expected)
    assert fig.data[0].y[-1] == "mean" and "score %" in fig.data[0].colorbar.title.text


# --- experiments dashboard ----------------------------------------------------------------------------------


def test_dashboard_groups_runs_by_strategy():
    rows = [
        {"run": f"{m}-{s}", "notebook": "01.ipynb", "method": m, "seed": s, "status": "done",
         "metrics.mean.dice.ET": 0.5 + 0.1 * k + 0.02 * s, "metrics.mean.dice.WT": 0.8 - 0.1 * k}
        for k, m in enumerate(["mckd", "none", "uniform"]) for s in range(3)
    ] + [{"run": "x", "notebook": "01.ipynb", "method": "lckd", "seed": 0, "status": "failed"}]  # fmt: skip
    view = ExperimentsDashboard(pd.DataFrame(rows))
    assert view.by == "method" and view.metric == "metrics.mean.dice.ET"
    fig = view.figure()
    assert list(fig.data[0].x) == ["mckd", "none", "uniform"]  # the failed run is left out
    np.testing.assert_allclose(fig.data[0].y, [0.52, 0.62, 0.72])
    np.testing.assert_allclose(fig.data[0].error_y.array, [0.02] * 3)  # sample std of (0, .02, .04)
    assert len(fig.data[1].y) == 9
    view.widget  # noqa: B018
    view.controls["metric"].value = "metrics.mean.dice.WT"
    np.testing.assert_allclose(view._live.data[0].y, [0.8, 0.7, 0.6])


# --- distilled features -------------------------------------------------------------------------------------


def test_distilled_features_pairs_and_filled_distances(model):
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(4, 16, 16, 16)).astype(np.float32) for _ in range(3)]
    view = DistilledFeatures(model, images, case_ids=["a", "b", "c"])
    with torch.no_grad():
        f = [model.encode(torch.as_tensor(x)[None]).bottleneck[0] for x in images]
    l_02 = np.mean([(g[0] - g[2]).abs().mean().item() for g in f])
    assert view.pairs[0, 2] == pytest.approx(l_02, rel=1e-5) and view.pairs[2, 0] == pytest.approx(
        l_02, rel=1e-5
    )
    assert np.all(np.diag(view.pairs) == 0)
    d_t2 = np.mean([(g[:3].mean(0) - g[3]).abs().mean().item() for g in f])
    assert view.subset_distances((True, True, True, False)) == {"t2": pytest.approx(d_t2, rel=1e-5)}
    fig = view.figure()
    assert list(fig.data[1].x) == ["t2"] and len(fig.data[2].x) == 3  # flair real: one point per case
    view.widget  # noqa: B018
    view.controls["present"].value = (False, False, True, False)  # only t1ce: flair, t1, t2 filled
    assert list(view._live.data[1].x) == ["flair", "t1", "t2"]
    d_flair = np.mean([(g[2] - g[0]).abs().mean().item() for g in f])  # filled from t1ce alone = l_20
    assert view._live.data[1].y[0] == pytest.approx(d_flair, rel=1e-5)
    assert view._live.data[1].y[0] == pytest.approx(view.pairs[2, 0], rel=1e-5)

    lacking = DistilledFeatures(
        model, images, available=[(True,) * 4, (True,) * 4, (True, True, True, False)]
    )
    d_t2_ab = np.mean([(g[:3].mean(0) - g[3]).abs().mean().item() for g in f[:2]])  # case c has no t2
    assert lacking.subset_distances((True, True, True, False)) == {"t2": pytest.approx(d_t2_ab, rel=1e-5)}
    assert lacking.pairs[0, 3] == pytest.approx(np.mean([(g[0] - g[3]).abs().mean().item() for g in f[:2]]))
    assert len(lacking.figure().data[2 + 2 * 3 + 1].x) == 2  # t2 filled: cases a and b only


def test_distilled_features_of_loader_cases_of_any_size(model, cases):
    assert {c.image.shape[1:] for c in cases} != {(32, 32, 32)}  # brain crops: padded for the network
    view = DistilledFeatures(
        model, [c.image for c in cases], [c.case_id for c in cases], [c.present for c in cases]
    )
    assert view.pairs.shape == (4, 4) and np.isfinite(view.pairs).all()
    assert len(view.figure().data[2].x) == len(cases)


# --- attributions -------------------------------------------------------------------------------------------


def test_attributions_bars_and_maps_from_explain(cases, model):
    case = cases[0]
    roi = (32, 32, 32)
    shapley = modality_shapley(
        model, case.image, case.present, CARD.region_names, value="probability", roi=roi
    )
    ig = voxel_attribution(model, case.image, case.present, "ET", CARD.region_names, roi, n_steps=2)
    view = AttributionView(shapley, [ig])
    fig = view.figure()
    np.testing.assert_allclose(fig.data[0].y, shapley.values[0])  # ET's Shapley value per modality
    np.testing.assert_allclose(fig.data[1].y, shapley.values[2])  # TC: bars in the paper's order ET, TC, WT
    assert [t.name for t in fig.data[:3]] == ["ET (probability)", "TC (probability)", "WT (probability)"]
    view.widget  # noqa: B018
    view.controls["plane"].value = "coronal"
    view.controls["slice"].value = 4
    np.testing.assert_array_equal(view._live.data[3 + 2].z, ig.attribution[2][:, :, 4])  # t1ce, coronal 4
