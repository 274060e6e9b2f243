"""Attributions: exact Shapley maths on hand-made games, then on real (tiny) models through Captum.

The method classes (``ExactModalityShapley``, ``CaptumModalityShapley``, ``VoxelIntegratedGradients``,
``VoxelOcclusion``, ``TabularIntegratedGradients``) are tested directly; some tests go through the function
forms (``modality_shapley``, ``captum_modality_attribution``, ``voxel_attribution``,
``tabular_integrated_gradients``), which must keep working."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation, IntegratedGradients, ShapleyValues
from test_evaluate import train_tiny_run
from test_infer import write_case
from torch import nn

from mckd_lab.classification import adni_config
from mckd_lab.data.brats import load_case, scan_folder
from mckd_lab.data.cards import load_card
from mckd_lab.evaluate import dice
from mckd_lab.explain import (
    CaptumModalityShapley,
    ExactModalityShapley,
    RegionLogit,
    TabularIntegratedGradients,
    VoxelIntegratedGradients,
    VoxelOcclusion,
    captum_modality_attribution,
    exact_shapley,
    modality_shapley,
    subsets_of,
    tabular_integrated_gradients,
    voxel_attribution,
)
from mckd_lab.infer import predict_subsets
from mckd_lab.models import ClassificationHead, MultiModalNet, build_segmentation_network
from mckd_lab.models.compact import CompactEncoder
from mckd_lab.runs import explain_run
from mckd_lab.tasks import make_task
from mckd_lab.train import train

# --- Shapley maths on hand-made games -----------------------------------------------------------------------


def _game(fn, players):
    return {s: fn(s) for s in subsets_of(players)}


def test_exact_shapley_of_a_hand_made_game():
    # 3 players (modalities 0, 1, 2 of 4; modality 3 absent). v = 6 * [0 in S] + 2 * [1 in S and 2 in S].
    players = (True, True, True, False)
    phi = exact_shapley(_game(lambda s: 6.0 * s[0] + 2.0 * (s[1] and s[2]), players), players)
    # player 0 is alone in the first term: 6; players 1 and 2 split the 2 of the pair term: 1 each; absent: 0.
    np.testing.assert_allclose(phi, [6.0, 1.0, 1.0, 0.0])


def test_exact_shapley_glove_game_by_hand():
    # v = 1 when player 0 and at least one of players 1, 2 are in S. Known values: 2/3, 1/6, 1/6.
    players = (True, True, True)
    phi = exact_shapley(_game(lambda s: float(s[0] and (s[1] or s[2])), players), players)
    np.testing.assert_allclose(phi, [2 / 3, 1 / 6, 1 / 6])


def test_exact_shapley_efficiency_symmetry_null_player_on_vector_values():
    rng = np.random.default_rng(1)
    players = (True, True, True, True)
    table = {s: rng.normal(size=3) for s in subsets_of(players)}  # a random game, 3 outputs (regions)
    phi = exact_shapley(table, players)
    assert phi.shape == (4, 3)
    np.testing.assert_allclose(phi.sum(0), table[players] - table[(False,) * 4])  # efficiency

    sym = {s: np.array([s[0] + s[1] + 3.0 * s[2] * s[3]]) for s in subsets_of(players)}  # 0 <-> 1, 2 <-> 3
    phi = exact_shapley(sym, players)
    assert phi[0] == pytest.approx(phi[1]) and phi[2] == pytest.approx(phi[3])

    null = {s: np.array([float(s[0] + 2 * s[2])]) for s in subsets_of(players)}  # player 1 and 3 add nothing
    np.testing.assert_allclose(exact_shapley(null, players)[:, 0], [1.0, 0.0, 2.0, 0.0])


def test_exact_shapley_names_a_missing_subset():
    players = (True, True)
    table = _game(lambda s: float(sum(s)), players)
    del table[(True, False)]
    with pytest.raises(KeyError, match=r"subset \(True, False\)"):
        exact_shapley(table, players)


def test_subsets_of_players_in_canonical_order():
    assert subsets_of((True, False, True)) == [
        (False, False, False),
        (True, False, False),
        (False, False, True),
        (True, False, True),
    ]


# --- on real (tiny) networks --------------------------------------------------------------------------------

CARD = load_card("brats")
REGIONS = CARD.region_names  # network order ET, WT, TC
ROI = (16, 16, 16)


def tiny_net(seed: int = 0):
    torch.manual_seed(seed)
    return build_segmentation_network(CARD.modality_names, channels=(4, 8)).eval()


def case_image(seed: int = 0, shape=(16, 16, 16), absent=(3,)):
    image = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed))
    image[list(absent)] = 0
    return image, tuple(i not in absent for i in range(4))


def test_modality_shapley_efficiency_and_absent_modality_exactly_zero():
    image, present = case_image()
    result = modality_shapley(tiny_net(), image, present, REGIONS, value="probability", roi=ROI)
    assert result.values.shape == (3, 4)
    assert np.all(result.values[:, 3] == 0.0)  # t2 is absent from the case
    np.testing.assert_allclose(result.values.sum(1), result.full - result.baseline, atol=1e-9)
    # the end points are the predictions with every present modality, and with none (zero input, all slots)
    probs = (
        predict_subsets(tiny_net(), image, [present, (False,) * 4], ROI).flatten(2).mean(2).double().numpy()
    )
    np.testing.assert_allclose(result.full, probs[0], atol=1e-6)
    np.testing.assert_allclose(result.baseline, probs[1], atol=1e-6)
    out = result.to_dict()
    assert set(out) >= {"shapley", "baseline"} and out["shapley"]["ET"]["t2"] == 0.0
    assert out["present"] == ["flair", "t1", "t1ce"]


def test_exact_modality_shapley_is_exact_shapley_over_the_subset_predictions():
    net = tiny_net()
    image, present = case_image(8)
    result = ExactModalityShapley(net, outputs=REGIONS, value="probability").attribute(
        image, present, roi=ROI
    )
    # the game written out: v(S) = mean region probability with only S given, for every subset of the players
    subsets = subsets_of(present)
    v = predict_subsets(net, image, subsets, ROI).flatten(2).mean(2).double().numpy()
    np.testing.assert_array_equal(result.values, exact_shapley(dict(zip(subsets, v, strict=True)), present).T)
    np.testing.assert_array_equal(result.baseline, v[0])  # the empty set
    np.testing.assert_array_equal(result.full, v[-1])  # every present modality
    assert result.method == "exact" and result.outputs == tuple(REGIONS) and result.present == present
    # the function form is the same computation
    old = modality_shapley(net, image, present, REGIONS, value="probability", roi=ROI)
    np.testing.assert_array_equal(old.values, result.values)


def test_modality_shapley_with_dice_value_sums_to_dice_gain():
    image, present = case_image(1, absent=())
    target = (torch.rand(3, 16, 16, 16, generator=torch.Generator().manual_seed(2)) < 0.5).numpy()
    result = modality_shapley(tiny_net(), image, present, REGIONS, target=target, value="dice", roi=ROI)
    full = predict_subsets(tiny_net(), image, [present], ROI)[0].numpy() > 0.5
    np.testing.assert_allclose(result.full, dice(full, target))
    np.testing.assert_allclose(result.values.sum(1), result.full - result.baseline, atol=1e-9)
    with pytest.raises(ValueError, match="value='dice' needs a segmentation case with labels"):
        modality_shapley(tiny_net(), image, present, REGIONS, value="dice", roi=ROI)


class SymmetricHead(nn.Module):
    """Sums the M bottlenecks before a 1x1 convolution: the output cannot tell modalities apart."""

    def __init__(self, m: int, c: int):
        super().__init__()
        self.m, self.conv = m, nn.Conv3d(c, 3, 1)

    def forward(self, bottleneck, skips):
        x = bottleneck.view(bottleneck.shape[0], self.m, -1, *bottleneck.shape[2:]).sum(1)
        return F.interpolate(self.conv(x), scale_factor=4, mode="trilinear")


def test_modality_shapley_symmetry_on_a_model_symmetric_by_construction():
    torch.manual_seed(0)
    net = MultiModalNet([CompactEncoder(1, (4, 8))], SymmetricHead(4, 8), CARD.modality_names).eval()
    image, present = case_image(3, absent=())
    image[3] = image[0]  # t2 == flair: the two players are interchangeable
    result = modality_shapley(net, image, present, REGIONS, value="probability", roi=ROI)
    np.testing.assert_allclose(result.values[:, 3], result.values[:, 0], atol=1e-7)
    assert (
        np.abs(result.values[:, 1] - result.values[:, 0]).max() > 1e-4
    )  # t1 differs: symmetry is not trivial


def test_captum_shapley_values_equal_the_exact_encode_once_values():
    net, roi = tiny_net(), (8, 8, 8)
    image, present = case_image(4, shape=roi)
    exact = ExactModalityShapley(net, outputs=REGIONS, value="probability").attribute(image, present, roi=roi)
    captum = CaptumModalityShapley(
        net, outputs=REGIONS, value="probability", algorithm=ShapleyValues
    ).attribute(image, roi=roi)
    assert captum.method == "ShapleyValues" and captum.present == present
    np.testing.assert_allclose(captum.values, exact.values, atol=1e-5)
    np.testing.assert_allclose(captum.baseline, exact.baseline, atol=1e-6)


def test_captum_feature_ablation_is_the_leave_one_out_of_the_same_game():
    net = tiny_net()
    image, present = case_image(5)
    ablation = CaptumModalityShapley(
        net, outputs=REGIONS, value="probability", algorithm=FeatureAblation
    ).attribute(image, present, roi=ROI)
    leave_out = [tuple(p and j != i for j, p in enumerate(present)) for i in range(3)]
    probs = predict_subsets(net, image, [present, *leave_out], ROI).flatten(2).mean(2).double().numpy()
    np.testing.assert_allclose(ablation.values[:, :3], (probs[0] - probs[1:]).T, atol=1e-5)
    assert np.all(ablation.values[:, 3] == 0.0)
    # the function form, with its string switch, is the same computation
    old = captum_modality_attribution(net, image, REGIONS, value="probability", roi=ROI, method="ablation")
    np.testing.assert_array_equal(old.values, ablation.values)
    assert old.method == ablation.method == "FeatureAblation"


def test_integrated_gradients_completeness_and_absent_modality():
    net, roi = tiny_net(), (8, 8, 8)
    image, present = case_image(6, shape=(12, 8, 8))  # two sliding windows along D
    ig = VoxelIntegratedGradients(net, outputs=REGIONS, n_steps=64, internal_batch_size=16).attribute(
        image, present, "WT", roi
    )
    assert ig.attribution.shape == (4, 12, 8, 8) and ig.method == "IntegratedGradients"
    assert np.all(ig.attribution[3] == 0.0)
    forward = RegionLogit(net, present, REGIONS.index("WT"), roi)
    with torch.no_grad():
        gain = float(forward(image[None]) - forward(torch.zeros_like(image)[None]))
    assert ig.attribution.sum() - gain == pytest.approx(ig.delta, abs=1e-3 * abs(gain))
    assert abs(ig.delta) < 0.05 * abs(gain)  # measured 0.1% here (plain Captum steps, path_power=1: ~90%)


def test_integrated_gradients_with_path_power_one_is_plain_captum():
    net, roi = tiny_net(), (8, 8, 8)
    image, present = case_image(9, shape=roi)
    ig = VoxelIntegratedGradients(net, outputs=REGIONS, n_steps=8, path_power=1.0).attribute(
        image, present, "TC", roi
    )
    # p = 1: the path is sampled where Captum samples it, so the maps are Captum's on the region's logit
    forward = RegionLogit(net, present, REGIONS.index("TC"), roi)
    attr, delta = IntegratedGradients(forward).attribute(
        image[None], baselines=0.0, n_steps=8, internal_batch_size=4, return_convergence_delta=True
    )
    np.testing.assert_allclose(ig.attribution[:3], attr[0, :3].detach().numpy(), rtol=1e-5, atol=1e-9)
    assert np.all(ig.attribution[3] == 0.0) and ig.delta == pytest.approx(float(delta), rel=1e-5)


def test_occlusion_with_one_window_per_modality_is_the_leave_one_out(tmp_path):
    net = tiny_net()
    image, present = case_image(7)
    occ = VoxelOcclusion(net, outputs=REGIONS, window=16).attribute(image, present, "ET", ROI)
    assert occ.method == "Occlusion" and occ.delta is None
    forward = RegionLogit(net, present, REGIONS.index("ET"), ROI)
    with torch.no_grad():
        full = float(forward(image[None]))
        for m in range(3):
            dropped = image.clone()
            dropped[m] = 0
            np.testing.assert_allclose(occ.attribution[m], full - float(forward(dropped[None])), rtol=1e-4)
    np.testing.assert_array_equal(occ.attribution[3], 0.0)
    old = voxel_attribution(net, image, present, "ET", REGIONS, ROI, method="occlusion", window=16)
    np.testing.assert_array_equal(old.attribution, occ.attribution)


def test_voxel_maps_save_as_nifti_on_the_case_grid(tmp_path):
    folder, affine, shape = write_case(tmp_path / "data")
    case = load_case(folder)
    ig = voxel_attribution(tiny_net(), case.image, case.present, "TC", REGIONS, ROI, n_steps=4)
    paths = ig.save_nifti(case, tmp_path / "maps", CARD.modality_names)
    assert [p.name for p in paths] == [
        f"Brats18_TCIA01_1_1_IntegratedGradients_TC_{m}.nii.gz" for m in CARD.modality_names
    ]
    img = nib.load(paths[2])
    assert img.shape == shape and np.allclose(img.affine, affine)
    np.testing.assert_allclose(case.geometry.uncrop(ig.attribution[2]), np.asarray(img.dataobj), rtol=1e-6)


# --- tabular (ADNI-like) ------------------------------------------------------------------------------------


class TabularEncoder(nn.Module):
    def __init__(self, f: int, c: int = 4):
        super().__init__()
        self.linear = nn.Linear(f, c)

    def forward(self, x):
        return torch.tanh(self.linear(x)), []


def tabular_net():
    torch.manual_seed(0)
    widths = {"imaging": 3, "genomic": 2, "clinical": 4}
    net = MultiModalNet([TabularEncoder(f) for f in widths.values()], ClassificationHead(12, 3), list(widths))
    sample = {
        m: torch.randn(f, generator=torch.Generator().manual_seed(i))
        for i, (m, f) in enumerate(widths.items())
    }
    return net.eval(), sample


def test_tabular_integrated_gradients_per_feature_and_modality():
    net, sample = tabular_net()
    present = (True, False, True)
    ig = tabular_integrated_gradients(net, sample, present, target=2, n_steps=32)
    assert [a.shape for a in ig.features.values()] == [(3,), (2,), (4,)]
    assert np.all(ig.features["genomic"] == 0.0) and ig.per_modality["genomic"] == 0.0
    assert ig.per_modality["clinical"] == pytest.approx(ig.features["clinical"].sum())
    mask = torch.tensor([present])
    with torch.no_grad():
        gain = float(
            net(sample_batch(sample), mask).logits[0, 2] - net(sample_batch(sample, 0.0), mask).logits[0, 2]
        )
    total = sum(ig.per_modality.values())
    assert total - gain == pytest.approx(ig.delta, abs=1e-5) and abs(ig.delta) < 0.05 * abs(gain)


def sample_batch(sample, scale=1.0):
    return {m: scale * v[None] for m, v in sample.items()}


class LinearHead(nn.Module):
    def __init__(self, c: int, k: int):
        super().__init__()
        self.linear = nn.Linear(c, k)

    def forward(self, bottleneck, skips=()):
        return self.linear(bottleneck)


class LinearEncoder(nn.Linear):
    def forward(self, x):
        return super().forward(x), []  # the encoder contract: (bottleneck, skips)


def test_tabular_integrated_gradients_of_a_linear_network_is_input_times_weight():
    # Linear encoders, a linear head, and filling a missing slot (a mean of the present ones) is linear too:
    # logit = w . x + b, so Integrated Gradients from 0 is exactly x_i * w_i, whatever the number of steps.
    torch.manual_seed(0)
    widths = {"imaging": 3, "genomic": 2, "clinical": 4}
    net = MultiModalNet(
        [LinearEncoder(f, 4) for f in widths.values()], LinearHead(12, 3), list(widths)
    ).eval()
    sample = {
        m: torch.randn(f, generator=torch.Generator().manual_seed(i))
        for i, (m, f) in enumerate(widths.items())
    }
    present, given = (True, False, True), ("imaging", "clinical")
    ig = TabularIntegratedGradients(net, n_steps=4).attribute(sample, present, target=1)
    x = {m: sample[m][None].clone().requires_grad_() for m in given}
    batch = {m: x[m] if m in given else torch.zeros(1, f) for m, f in widths.items()}  # genomic not given
    w = torch.autograd.grad(net(batch, torch.tensor([present])).logits[0, 1], [x[m] for m in given])
    for m, w_m in zip(given, w, strict=True):
        np.testing.assert_allclose(ig.features[m], (sample[m] * w_m[0]).numpy(), rtol=1e-5, atol=1e-7)
    assert np.all(ig.features["genomic"] == 0.0) and ig.delta == pytest.approx(0.0, abs=1e-5)
    old = tabular_integrated_gradients(net, sample, present, target=1, n_steps=4)
    assert old.per_modality == ig.per_modality


def test_tabular_modality_shapley_equals_captum_shapley_values():
    net, sample = tabular_net()
    classes, softmax = ("CN", "MCI", "AD"), make_task("adni").probabilities  # the classifier's rule
    exact = modality_shapley(
        net, sample, (True, True, True), classes, value="probability", probabilities=softmax
    )
    np.testing.assert_allclose(exact.values.sum(0), 0.0, atol=1e-6)  # class probabilities sum to 1
    captum = captum_modality_attribution(
        net, sample, classes, value="probability", method="shapley", probabilities=softmax
    )
    np.testing.assert_allclose(captum.values, exact.values, atol=1e-6)


def test_captum_modality_shapley_plays_only_the_present_modalities():
    net, sample = tabular_net()  # every input is non-zero; present takes genomic out of the game
    present = (True, False, True)
    exact = ExactModalityShapley(net, outputs=("CN", "MCI", "AD"), value="probability").attribute(
        sample, present
    )
    captum = CaptumModalityShapley(
        net, outputs=("CN", "MCI", "AD"), value="probability", algorithm=ShapleyValues
    ).attribute(sample, present)
    assert captum.present == present and np.all(captum.values[:, 1] == 0.0)
    np.testing.assert_allclose(captum.values, exact.values, atol=1e-6)
    np.testing.assert_allclose(captum.full, exact.full, atol=1e-6)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda net: ExactModalityShapley(net, outputs=REGIONS, value="auc"), "unknown value 'auc'"),
        (
            lambda net: CaptumModalityShapley(net, outputs=REGIONS, algorithm=IntegratedGradients),
            "IntegratedGradients",
        ),
        (lambda net: CaptumModalityShapley(net, outputs=REGIONS, n_samples=0), "n_samples must be positive"),
        (lambda net: VoxelIntegratedGradients(net, outputs=REGIONS, n_steps=0), "n_steps must be positive"),
        (lambda net: VoxelIntegratedGradients(net, outputs=REGIONS, path_power=0.0), "path_power must be"),
        (lambda net: VoxelOcclusion(net, outputs=REGIONS, window=0), "window must be positive"),
        (lambda net: VoxelOcclusion(net, outputs=REGIONS, internal_batch_size=0), "internal_batch_size must"),
        (lambda net: TabularIntegratedGradients(net, n_steps=-1), "n_steps must be positive"),
    ],
)
def test_settings_are_checked_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build(tiny_net())


def test_voxel_attribution_names_an_unknown_region():
    image, present = case_image()
    with pytest.raises(ValueError, match="unknown region 'NCR'; the network's outputs are ET, WT, TC"):
        VoxelOcclusion(tiny_net(), outputs=REGIONS).attribute(image, present, "NCR", ROI)


# --- a trained run ------------------------------------------------------------------------------------------


def test_explain_run_on_a_case_gives_shapley_per_region_and_nifti_maps(tmp_path):
    run = train_tiny_run(tmp_path / "run")
    case_dir = scan_folder(run.run_dir / "phantoms")[1][0]
    result = explain_run(run.run_dir, case=case_dir, out=tmp_path / "maps", n_steps=2)
    assert result["case"] == case_dir.name and result["value"] == "dice"
    assert list(result["shapley"]) == ["ET", "WT", "TC"] and list(result["shapley"]["ET"]) == list(
        CARD.modality_names
    )
    for region, values in result["shapley"].items():  # efficiency, to the rounding of the JSON (1e-6)
        gain = result["full"][region] - result["baseline"][region]
        assert sum(values.values()) == pytest.approx(gain, abs=1e-5)
    maps = result["integrated_gradients"]
    assert list(maps) == ["ET", "TC", "WT"] and all(len(m["files"]) == 4 for m in maps.values())
    assert (tmp_path / "maps" / f"{case_dir.name}_explain.json").exists()
    with pytest.raises(ValueError, match="--case"):
        explain_run(run.run_dir)


def test_explain_run_on_an_adni_subject_gives_shapley_per_class_and_feature_ig(tmp_path):
    config = adni_config(
        subjects=200, epochs=1, batch_size=32, **{"runtime.progress": False, "model.channels": [8, 8]}
    )
    run = train(config, tmp_path / "run")
    rid = int(json.loads((run.run_dir / "splits.json").read_text())["test"][0])
    result = explain_run(run.run_dir, rid=rid, out=tmp_path / "out")
    assert result["rid"] == rid and result["value"] == "probability"
    assert list(result["shapley"]) == ["CN", "MCI", "AD"]
    for k in ("CN", "MCI", "AD"):  # efficiency per class
        gain = result["full"][k] - result["baseline"][k]
        assert sum(result["shapley"][k].values()) == pytest.approx(gain, abs=1e-5)
    assert result["predicted"] == max(result["full"], key=result["full"].get)
    ig = result["integrated_gradients"]
    assert ig["class"] == result["predicted"] and list(ig["features"]["genetic"]) == ["APOE4"]
    assert ig["per_modality"]["clinical"] == pytest.approx(sum(ig["features"]["clinical"].values()))
    assert (tmp_path / "out" / f"rid{rid}_explain.json").exists()
