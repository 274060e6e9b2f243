"""BraTS datasets: batch contract, foreground-biased crops, augmentation keeping image and target aligned,
real and requested missingness, seeded loaders, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from brats_files import CASE_IDS, synthetic_volumes, write_case

import mckd_lab.data.datasets as datasets
from mckd_lab.data.brats import BratsError
from mckd_lab.data.datasets import brats_dataset, make_loader


@pytest.fixture
def folder(tmp_path):
    """Two BraTS2020 cases whose FLAIR is 100 in the brain and 200 in the tumour (no noise): after z-scoring,
    FLAIR > 0 exactly on whole-tumour voxels, so crops and flips must keep image and target aligned."""
    for seed, case_id in enumerate(CASE_IDS["brats2020"]):
        volumes, label = synthetic_volumes(seed)
        volumes["flair"] = np.where(volumes["flair"] > 0, 100 + 100 * (label > 0), 0).astype(np.float32)
        write_case(tmp_path, "brats2020", case_id, volumes, label)
    return tmp_path


def test_training_batch_follows_the_contract(folder):
    batch = next(iter(make_loader(brats_dataset(folder, crop_size=(4, 6, 6)), batch_size=2, seed=0)))
    assert batch["image"].shape == (2, 4, 4, 6, 6) and batch["image"].dtype == torch.float32
    assert batch["target"].shape == (2, 3, 4, 6, 6) and batch["target"].dtype == torch.float32
    assert batch["present"].dtype == torch.bool and batch["present"].tolist() == [[True] * 4] * 2
    assert sorted(batch["case_id"]) == sorted(CASE_IDS["brats2020"])
    assert type(batch["image"]) is torch.Tensor  # plain tensors, not MONAI MetaTensors


def test_crops_flips_and_scaling_keep_image_and_target_aligned(folder):
    dataset = brats_dataset(folder, crop_size=(5, 5, 5))
    for sample in (dataset[i % 2] for i in range(20)):
        whole_tumour = sample["target"][1].bool()
        np.testing.assert_array_equal(sample["image"][0] > 0, whole_tumour)
        assert torch.equal(
            sample["target"][0].bool(), sample["target"][0].bool() & whole_tumour
        )  # ET inside WT


def test_crop_centres_are_tumour_with_the_foreground_probability(folder):
    # a 1x1x1 crop is its centre voxel: tumour with probability foreground_prob
    def tumour_fraction(p, draws=200):
        dataset = brats_dataset(folder, crop_size=(1, 1, 1), foreground_prob=p)
        dataset.transform.set_random_state(3)
        return np.mean([float(dataset[i % 2]["target"][1].sum()) for i in range(draws)])

    assert tumour_fraction(1.0, 50) == 1.0 and tumour_fraction(0.0, 50) == 0.0
    assert 0.4 <= tumour_fraction(0.5) <= 0.6  # 200 draws: 3 standard deviations is 0.11


def test_crop_larger_than_the_case_is_padded_with_zeros(folder):
    sample = brats_dataset(folder, crop_size=(12, 16, 16))[0]  # the brain box is 7 x 11 x 9
    assert sample["image"].shape == (4, 12, 16, 16) and sample["target"].shape == (3, 12, 16, 16)
    assert (sample["image"][:, 0] == 0).all()


def test_seeded_loaders_replay_exactly(folder):
    dataset = brats_dataset(folder, crop_size=(4, 6, 6))

    def epoch(seed):
        return [b["image"] for b in make_loader(dataset, batch_size=1, seed=seed)]

    first, again, other = epoch(7), epoch(7), epoch(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_present_defaults_to_real_availability_and_missing_stays_zero(folder):
    t2 = folder / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii.gz"
    t2.unlink()
    with pytest.warns(UserWarning, match="BraTS20_Training_002: no file for t2"):
        dataset = brats_dataset(folder, crop_size=(4, 6, 6))
    for _ in range(5):  # intensity scaling must not lift the missing modality off zero
        sample = dataset[1]
        assert sample["present"].tolist() == [True, True, True, False] and not sample["image"][3].any()


def test_requested_subset_zeroes_the_other_modalities(folder):
    whole = brats_dataset(folder, train=False, present="flair+t1ce", cache=False)[0]
    assert whole["present"].tolist() == [True, False, True, False]
    assert whole["image"][[0, 2]].abs().sum(dim=(1, 2, 3)).gt(0).all() and not whole["image"][[1, 3]].any()
    assert whole["image"].shape == (4, 7, 11, 9)  # the whole brain box, uncropped
    (folder / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii.gz").unlink()
    with pytest.raises(BratsError, match="case BraTS20_Training_001: none of the requested modalities"):
        with pytest.warns(UserWarning):
            brats_dataset([folder / "BraTS20_Training_001"], train=False, present="t1ce", cache=False)[0]


def test_training_needs_labels_evaluation_does_not(tmp_path):
    volumes, _ = synthetic_volumes(0)
    case_dir = write_case(tmp_path, "brats2021", "BraTS2021_00001", volumes, None)
    with pytest.raises(BratsError, match="BraTS2021_00001: no seg file, so it cannot be used for training"):
        brats_dataset([case_dir], cache=False)[0]
    sample = brats_dataset([case_dir], train=False, cache=False)[0]
    assert "target" not in sample and sample["image"].shape == (4, 7, 11, 9)


@pytest.mark.parametrize("cache, reads", [(True, 2), (False, 6)])
def test_cache_reads_each_case_once(folder, monkeypatch, cache, reads):
    calls, real_load = [], datasets.load_case

    def counting_load(case_dir, **kwargs):
        calls.append(case_dir)
        return real_load(case_dir, **kwargs)

    monkeypatch.setattr(datasets, "load_case", counting_load)
    dataset = brats_dataset(folder, crop_size=(4, 6, 6), cache=cache)
    for _ in range(3):  # three epochs over two cases
        list(make_loader(dataset, batch_size=2))
    assert len(calls) == reads


@pytest.mark.parametrize("train", [True, False])  # evaluation: the whole transform is cached
def test_epochs_and_samples_leave_the_cache_unchanged(folder, train):
    def tensor(v):
        return torch.as_tensor(v).as_subclass(torch.Tensor).clone()

    def snapshot(case):  # the region crop indices are a list of arrays, one per class: concatenated here
        return {
            k: v
            if isinstance(v, str)
            else torch.cat([tensor(a) for a in v])
            if isinstance(v, list)
            else tensor(v)
            for k, v in case.items()
        }

    dataset = brats_dataset(folder, train=train, crop_size=(8, 12, 12))
    before = [snapshot(case) for case in dataset.cases]
    for seed in range(3):
        list(make_loader(dataset, batch_size=2, seed=seed))
    for i in range(4):
        dataset[i % 2]["image"].mul_(0)  # a sample is the caller's to modify
    for case, saved in zip(dataset.cases, before, strict=True):
        assert snapshot(case).keys() == saved.keys()
        assert all(
            v == saved[k] if isinstance(v, str) else torch.equal(v, saved[k])
            for k, v in snapshot(case).items()
        )
