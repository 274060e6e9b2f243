"""Prediction: label conversion, encode-once == independent passes, NIfTI written on the input's grid."""

import nibabel as nib
import numpy as np
import pytest
import torch

from mckd_lab.data.brats import load_case, write_segmentation
from mckd_lab.data.cards import load_card
from mckd_lab.data.missing import all_subsets
from mckd_lab.infer import (
    SubsetPredictor,
    predict_case,
    predict_subsets,
    regions_to_labels,
    sliding_window,
)
from mckd_lab.models import build_segmentation_network

CARD = load_card("brats")


def tiny_net(seed: int = 0):
    torch.manual_seed(seed)
    return build_segmentation_network(CARD.modality_names, channels=(4, 8)).eval()


def test_regions_to_labels_on_a_hand_made_array():
    # 5 voxels along W: background, oedema only (WT), core without ET (WT+TC), ET (all three), ET alone.
    et = [0, 0, 0, 1, 1]
    wt = [0, 1, 1, 1, 0]
    tc = [0, 0, 1, 1, 0]
    regions = np.array([et, wt, tc], bool).reshape(3, 1, 1, 5)  # card channel order ET, WT, TC
    np.testing.assert_array_equal(regions_to_labels(regions, CARD)[0, 0], [0, 2, 1, 4, 4])


def test_regions_to_labels_round_trips_card_labels():
    labels = np.random.default_rng(0).choice([0, 1, 2, 4], size=(4, 5, 6)).astype(np.uint8)
    regions = np.stack([np.isin(labels, r.labels) for r in CARD.regions])
    np.testing.assert_array_equal(regions_to_labels(regions, CARD), labels)


def test_encode_once_equals_fifteen_independent_sliding_window_passes():
    net = tiny_net()
    image = torch.randn(4, 20, 24, 16)
    image[3] = 0  # t2 absent from this case
    roi = (16, 16, 16)  # several overlapping windows along D and H
    subsets = all_subsets(4)
    once = predict_subsets(net, image, subsets, roi)
    assert once.shape == (15, 3, 20, 24, 16)
    with torch.no_grad():
        for s, subset in enumerate(subsets):
            present = torch.tensor(subset)

            def forward(w, present=present):
                return torch.sigmoid(net(w, present.expand(w.shape[0], -1)).logits)

            independent = sliding_window(forward, image[None], roi)[0]
            torch.testing.assert_close(once[s], independent, atol=1e-5, rtol=1e-5)


def test_encoder_runs_once_per_window_and_decoder_once_per_subset():
    net = tiny_net()
    calls = {"encode": [], "encode_zero": [], "decode": []}  # batch size of each call
    for name, sizes in calls.items():
        method = getattr(net, name)

        def counted(x, *args, _method=method, _sizes=sizes, **kwargs):
            _sizes.append(x.bottleneck.shape[0] if hasattr(x, "bottleneck") else x.shape[0])
            return _method(x, *args, **kwargs)

        setattr(net, name, counted)
    predictor = SubsetPredictor(net, all_subsets(4), decode_batch=16)
    with torch.no_grad():
        out = predictor(torch.randn(2, 4, 16, 16, 16))
        predictor(torch.randn(2, 4, 16, 16, 16))  # a second window: the zero response is reused
    assert out.shape == (2, 45, 16, 16, 16)
    # 2 windows: the encoder once each, the zero response once; 15 subsets x 2 windows, 8 subsets a call
    assert calls == {"encode": [2, 2], "encode_zero": [1], "decode": [16, 14, 16, 14]}


def test_empty_subset_is_the_zero_input_response():
    net = tiny_net()
    image = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        empty = SubsetPredictor(net, [(False,) * 4])(image)
        expected = torch.sigmoid(net(torch.zeros_like(image), torch.ones(2, 4, dtype=torch.bool)).logits)
    torch.testing.assert_close(empty, expected)


def write_case(root, case_id="Brats18_TCIA01_1_1", shape=(18, 20, 14), missing=()):
    """A hand-made BraTS2018 case folder on an oblique, anisotropic grid, with a small labelled tumour."""
    rng = np.random.default_rng(0)
    affine = np.array([[0.9, 0.1, 0, -40.0], [0, 1.1, 0, 12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    folder = root / case_id
    folder.mkdir(parents=True)
    brain = np.zeros(shape, bool)
    brain[2:16, 3:18, 1:13] = True
    for m in CARD.modality_names:
        if m not in missing:
            data = np.where(brain, rng.random(shape) + 1, 0).astype(np.float32)
            nib.save(nib.Nifti1Image(data, affine), folder / f"{case_id}_{m}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[5:10, 6:12, 4:8] = 2
    seg[6:9, 7:10, 5:7] = 4
    nib.save(nib.Nifti1Image(seg, affine), folder / f"{case_id}_seg.nii.gz")
    return folder, affine, shape


def test_prediction_nifti_has_the_inputs_shape_and_affine(tmp_path):
    folder, affine, shape = write_case(tmp_path)
    case = load_case(folder)
    pred = predict_case(tiny_net(), case, roi=(16, 16, 16), present=(True, False, True, False))
    assert pred.probabilities.shape == (3, *case.image.shape[1:])
    np.testing.assert_array_equal(pred.regions, pred.probabilities > 0.5)
    np.testing.assert_array_equal(pred.labels, regions_to_labels(pred.regions, CARD))
    out = write_segmentation(pred.labels, case, tmp_path / "seg.nii.gz")
    img = nib.load(out)
    assert img.shape == shape
    np.testing.assert_allclose(img.affine, affine)
    written = np.asarray(img.dataobj)
    assert set(np.unique(written)) <= {0, 1, 2, 4}
    assert (written != 0).sum() == (pred.labels != 0).sum()  # outside the brain crop stays background


def test_predict_case_refuses_a_modality_the_case_lacks(tmp_path):
    folder, _, _ = write_case(tmp_path, missing=("t1ce",))
    with pytest.warns(UserWarning, match="t1ce"):
        case = load_case(folder)
    with pytest.raises(
        ValueError, match=r"Brats18_TCIA01_1_1: cannot predict with t1ce; the case has flair, t1, t2"
    ):
        predict_case(tiny_net(), case, roi=(16, 16, 16), present=(True, False, True, False))
