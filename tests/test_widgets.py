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
from mckd_lab.recipes import describe_config, split_cases, train_or_reuse
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


def test_a_reused_run_draws_the_weights_a_fresh_run_drew(tmp_path):
    """Notebooks call ``train_or_reuse(config, run_dir, callbacks=[view.append])``: run again (a finished run,
    nothing trains) or after an interruption (continued from the checkpoint), the view must get the same
    records and draw the same figure as the first time (issue 15, point 2)."""
    config = RunConfig().with_overrides(
        {
            "data.phantom_cases": 4, "data.phantom_size": 32, "data.crop": [32, 32, 32],
            "data.heldout_cases": 1, "data.test_fraction": 0.25, "model.channels": [4, 8],
            "optim.iterations": 3, "optim.warmup_iterations": 1, "method.meta_every_warmup": 1,
            "method.meta_every_missing": 1, "method.meta_batches": 1, "runtime.progress": False,
            "runtime.checkpoint_every": 2,
        }
    )  # fmt: skip

    def interrupt(record: dict) -> None:
        if record["iteration"] == 2:
            raise KeyboardInterrupt  # the student stops the cell after the checkpoint of iteration 2

    with pytest.raises(KeyboardInterrupt):
        train_or_reuse(config, tmp_path / "run", callbacks=[interrupt])
    assert not (tmp_path / "run" / "model.pt").exists()
    continued = ImportanceWeightsView(names=NAMES)
    continued.widget  # noqa: B018 - live, as in JupyterLab
    run = train_or_reuse(config, tmp_path / "run", callbacks=[continued.append])
    assert [r["iteration"] for r in continued.history if r["kind"] == "meta"] == [0, 1, 2]
    assert continued.history == run.history  # records before the checkpoint replayed, then trained ones

    reused = ImportanceWeightsView(names=NAMES)
    reused.widget  # noqa: B018
    again = train_or_reuse(config, tmp_path / "run", callbacks=[reused.append])
    assert again.iteration == run.iteration == 3 and reused.history == run.history
    expected = ImportanceWeightsView(run.history).figure()
    for live in (continued.widget.children[0], reused.widget.children[0]):
        assert [list(t.y) for t in live.data] == [list(t.y) for t in expected.data] and len(live.data[0].y) == 3
        assert "no meta step" not in live.layout.title.text


def test_describe_config_is_short_and_names_what_differs():
    from mckd_lab.recipes import adni_config, brats_config

    text = describe_config(brats_config(iterations=1000, cases=16, size=32))
    assert len(text.splitlines()) <= 6 and max(len(line) for line in text.splitlines()) <= 110
    assert "task=brats" in text and "iterations=1000" in text and "crop=32×32×32" in text
    assert "name=mckd" in text and "backbone" not in text  # a default is not repeated
    assert "task=adni" in describe_config(adni_config(epochs=2, subjects=200))


# --- titles below the toolbar -------------------------------------------------------------------------------


def test_title_layout_keeps_titles_below_the_toolbar_row():
    """Where titles land is measured in Chromium by tests/test_browser.py; here, the arithmetic."""
    from widgets._base import SUBPLOT_TITLE_PX, TITLE_ANCHOR_PX, TOOLBAR_PX, title_layout

    one, two = title_layout("a", 400), title_layout("a<br><sup>b</sup><br><sup>c</sup>", 400, subplot_titles=True)
    for layout in (one, two):
        fig = go.Figure()
        fig.update_layout(**layout)
        assert fig.layout.title.yref == "container" and fig.layout.title.xanchor == "left"
        assert (1 - fig.layout.title.y) * 400 == pytest.approx(TITLE_ANCHOR_PX) and TITLE_ANCHOR_PX > TOOLBAR_PX
        assert fig.layout.height == 400 and fig.layout.margin.t > TITLE_ANCHOR_PX
    assert two["margin_t"] >= one["margin_t"] + 22 + SUBPLOT_TITLE_PX  # more lines and subplot titles: room


# --- segmentation viewer ------------------------------------------------------------------------------------


def test_viewer_slices_sequences_and_overlays(cases):
    case = cases[0]
    viewer = SegmentationViewer(
        case.image, NAMES, CARD.region_names, target=case.target, prediction=case.target, display_min=None
    )
    wt = case.target[1]
    assert viewer.cursor == [int(round(c)) for c in np.argwhere(wt).mean(0)]
    viewer.widget  # noqa: B018 - builds the controls
    live = viewer._live
    viewer.controls["sequence"].value = "t1ce"
    viewer.controls["axial"].value = 5
    t1ce = case.image[2, 5]  # axial: H across, W up; black (the scale's minimum) outside the brain
    np.testing.assert_allclose(live.data[0].z, np.where(t1ce != 0, t1ce, live.data[0].zmin).T, rtol=1e-6)
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


def test_viewer_draws_a_small_case_enlarged_with_a_legend(cases):
    case = cases[0]
    assert max(case.image.shape[1:]) < 64  # a 32^3 phantom's brain crop
    viewer = SegmentationViewer(case.image, NAMES, CARD.region_names, target=case.target)
    k = viewer.factor
    assert k >= 2 and min(viewer.display_shape) >= 64 and viewer.display_shape == tuple(
        k * s for s in case.image.shape[1:]
    )
    fig = viewer.figure()
    axial = np.asarray(fig.data[0].z)
    assert axial.shape == (viewer.display_shape[2], viewer.display_shape[1])  # (W, H) drawn
    # the ground truth drawn is the case's mask, each voxel a k x k block (interpolated, cut at 0.5)
    wt = viewer.overlay_slice("target", "WT", 0)
    native = case.target[1][viewer.cursor[0] // k].T.astype(bool)
    block = np.kron(native, np.ones((k, k), bool))
    assert (wt != block).mean() < 0.1 and wt.sum() == pytest.approx(block.sum(), rel=0.25)
    assert "enlarged" in fig.layout.title.text and f"{k}×" in fig.layout.title.text
    # a legend: which colour is which region, which overlay is which
    legend = [t for t in fig.data if t.showlegend is not False and isinstance(t, go.Scatter)]
    assert {t.legendgroup for t in legend} == {"ground truth (outline)"}  # no prediction given
    assert sorted(t.name.split()[0] for t in legend) == ["ET", "TC", "WT"]
    assert any("enhancing tumour" in t.name for t in legend) and fig.layout.showlegend


def test_outline_of_a_square_is_its_border():
    from widgets.viewer import outline

    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    assert outline(mask).sum() == 12 and not outline(mask)[3:5, 3:5].any()


# --- modality drop explorer ---------------------------------------------------------------------------------


def test_drop_explorer_equals_forward_and_updates_on_toggle(cases, model):
    case = cases[0]
    explorer = ModalityDropExplorer(
        model, case.image, case.target, available=case.present, card=CARD, display_min=None
    )
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


def test_drop_explorer_viewer_follows_the_ticked_sequences(cases, model):
    case = cases[0]
    explorer = ModalityDropExplorer(model, case.image, case.target, available=case.present, card=CARD)
    explorer.widget  # noqa: B018
    viewer = explorer.viewer
    assert viewer.sequence == "flair" and viewer.factor >= 2
    explorer.checkboxes["flair"].value = False
    assert viewer.sequence == "t1" and viewer.controls["sequence"].value == "t1"
    assert "flair" not in viewer.controls["sequence"].options  # a missing sequence cannot be shown
    np.testing.assert_allclose(np.asarray(viewer._live.data[0].z), viewer.volume("t1")[viewer.cursor[0]].T)
    drawn = viewer.volume("t1")  # black outside the brain: the darkest grey of the scale
    assert drawn[0, 0, 0] == pytest.approx(viewer._live.data[0].zmin) and (drawn > drawn.min()).mean() > 0.3
    explorer.checkboxes["flair"].value = True
    assert "flair" in viewer.controls["sequence"].options and viewer.sequence == "t1"  # stays where it was
    # the prediction drawn is the enlarged one of the current subset
    k, axial = viewer.factor, viewer.cursor[0]
    drawn = np.asarray(viewer._live.data[4].z) == 1  # axial ET prediction
    native = (explorer.probabilities[0] > 0.5)[axial // k].T
    assert drawn.shape == (k * native.shape[0], k * native.shape[1])
    assert (drawn != np.kron(native, np.ones((k, k), bool))).mean() < 0.1


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


def test_rendered_table_folds_patterns_too_rare_to_mean_anything(adni_run):
    from widgets.subsets import rendered_table, table_markdown

    table = evaluate_classification(adni_run)
    rare = [p for p in table["patterns"] if p["n"] < 10]
    text = table_markdown(table, min_n=10)
    kept = [p for p in table["patterns"] if p["n"] >= 10]
    assert all(f"\n| {p['pattern']} | {p['n']} |" in text for p in kept)
    assert not any(f"\n| {p['pattern']} | {p['n']} |" in text for p in rare)
    if rare:
        assert f"({sum(p['n'] for p in rare)} in all)" in text and "fewer than 10" in text
    everything = table_markdown(table, min_n=1)
    assert all(f"\n| {p['pattern']} | {p['n']} |" in everything for p in table["patterns"])
    assert rendered_table(table)._repr_markdown_() == text  # a Markdown object: the notebook renders it


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
    # paired by seed against none: ET is 0.5 + 0.1 k + 0.02 s, so every seed differs by -0.1 (mckd) and +0.1
    paired = view.paired(metric="metrics.mean.dice.ET")
    assert list(paired.index) == ["mckd - none", "uniform - none"] and list(paired["seeds"]) == [3, 3]
    np.testing.assert_allclose(paired[["mean", "min", "max"]].to_numpy(), [[-0.1] * 3, [0.1] * 3], atol=1e-12)
    wt = view.paired(baseline="mckd")  # the metric picked in the view: WT is 0.8 - 0.1 k
    np.testing.assert_allclose(wt["mean"], [-0.1, -0.2])  # none - mckd, uniform - mckd
    with pytest.raises(KeyError, match="lckd"):
        view.paired(baseline="lckd")  # its only run failed


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
    view = AttributionView(shapley, [ig], display_min=None)
    fig = view.figure()
    np.testing.assert_allclose(fig.data[0].y, shapley.values[0])  # ET's Shapley value per modality
    np.testing.assert_allclose(fig.data[1].y, shapley.values[2])  # TC: bars in the paper's order ET, TC, WT
    assert [t.name for t in fig.data[:3]] == ["φ for ET", "φ for TC", "φ for WT"]
    assert fig.layout.yaxis.title.text == "Shapley value φ (probability)" and "Shapley" in fig.layout.title.text
    # the maps in per cent of |F(x) - F(0)|: all of them sum to 100 % of it, less the convergence gap
    change = ig.attribution.sum() - ig.delta
    relative = 100 * ig.attribution / abs(change)
    assert relative.sum() == pytest.approx(100 * np.sign(change) * (1 + ig.delta / change), rel=1e-4)
    view.widget  # noqa: B018
    view.controls["plane"].value = "coronal"
    view.controls["slice"].value = 4
    np.testing.assert_allclose(view._live.data[3 + 2].z, relative[2][:, :, 4], rtol=1e-5)  # t1ce, coronal 4
    assert "% of |F(x) − F(0)|" in view._live.data[3 + 3].colorbar.title.text
    assert f"{abs(ig.delta / change):.1%}" in view._live.layout.title.text  # the completeness gap, stated


def test_attribution_maps_over_the_anatomy_with_the_tumour_outline(cases, model):
    from widgets.attributions import completeness

    case = cases[0]
    ig = voxel_attribution(model, case.image, case.present, "WT", CARD.region_names, (32, 32, 32), n_steps=2)
    view = AttributionView(maps=[ig], image=case.image, target=case.target)
    k = view.factor
    fig = view.figure()
    # per sequence panel: its anatomy (grey), the map, the WT outline; then the outline's legend entry
    anatomy, drawn, ring = fig.data[1], fig.data[2], fig.data[3]
    assert anatomy.colorscale[0][1].startswith("rgb") and np.asarray(anatomy.z).shape == np.asarray(drawn.z).shape
    np.testing.assert_allclose(np.asarray(anatomy.z), view._anatomy[0][0][view.index].T, rtol=1e-6)
    wt = np.kron(case.target[1][view.index // k].T, np.ones((k, k))) > 0
    assert np.asarray(ring.z).sum() > 0 and (np.asarray(ring.z).astype(bool) & ~wt).sum() <= k * wt.shape[0]
    bound = view.drawn_map()[2]
    assert drawn.zmax == bound == -drawn.zmin and bound < np.abs(view.drawn_map()[0]).max() + 1e-9
    assert fig.data[-1].name == "WT ground-truth outline" and "gap of" in completeness(ig)
