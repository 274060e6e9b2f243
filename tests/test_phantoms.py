"""Synthetic BraTS-like phantoms and their grid: anatomy, tumour, contrast, determinism, the BraTS 2018 layout."""

from __future__ import annotations

import dataclasses
import json
import re

import nibabel as nib
import numpy as np
import pytest

from mckd_lab.data import anatomy, phantoms
from mckd_lab.data.anatomy import bias_field, bias_terms, check_size, mni_anatomy, phantom_affine, save_nifti
from mckd_lab.data.brats import AXES, load_case, scan_folder
from mckd_lab.data.cards import load_card
from mckd_lab.data.phantoms import (
    PhantomParams,
    generate_phantoms,
    make_phantom,
    region_contrast,
    render_phantom,
    sample_phantom_params,
)

MODALITIES = ("flair", "t1", "t1ce", "t2")


def test_card_matches_brats_card():
    ours, brats = load_card("brats_phantoms"), load_card("brats")
    assert ours.modality_names == brats.modality_names == MODALITIES
    assert ours.labels == brats.labels
    assert ours.regions == brats.regions
    assert ours.header["layout"] in brats.header["layouts"]


@pytest.mark.parametrize("bad", [31, 129, 0, -64, 64.0, "64", True, None])
def test_size_outside_32_to_128_is_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="from 32 to 128"):
        check_size(bad)
    with pytest.raises(ValueError, match="from 32 to 128"):
        generate_phantoms(tmp_path, cases=1, size=bad)
    assert check_size(32) == 32 and check_size(np.int64(128)) == 128


def test_contrast_table_follows_mri_appearance():
    t = {m: load_card("brats_phantoms").header["contrast"][m] for m in MODALITIES}
    # normal tissue: WM brighter than GM on T1/T1ce, darker on T2/FLAIR; CSF dark on FLAIR, bright on T2
    for m in ("t1", "t1ce"):
        assert t[m]["wm"] > t[m]["gm"] > t[m]["csf"]
    assert t["t2"]["csf"] > t["t2"]["gm"] > t["t2"]["wm"]
    assert t["flair"]["gm"] > t["flair"]["wm"] > t["flair"]["csf"]
    # enhancing rim: brightest tissue on T1ce only
    assert t["t1ce"]["enhancing"] == max(t["t1ce"].values())
    for m in ("flair", "t1", "t2"):  # elsewhere it lies between the necrosis inside and the oedema outside
        assert (
            min(t[m]["oedema"], t[m]["necrosis"])
            <= t[m]["enhancing"]
            <= max(t[m]["oedema"], t[m]["necrosis"])
        )
    # oedema bright on FLAIR and T2; necrosis dark on T1ce, bright on T2
    assert t["flair"]["oedema"] > t["flair"]["gm"] and t["t2"]["oedema"] > t["t2"]["gm"]
    assert t["t1ce"]["necrosis"] < t["t1ce"]["gm"] and t["t2"]["necrosis"] > t["t2"]["oedema"]


def test_anatomy_is_the_mni_brain_with_csf_in_the_ventricles():
    anatomy = mni_anatomy(64)
    assert anatomy.tissue.shape == (3, 64, 64, 64) and anatomy.tissue.dtype == np.float32
    world = nib.affines.apply_affine(anatomy.affine, np.argwhere(anatomy.brain))
    # the 1 mm template's brain spans x -72..72, y -107..73, z -72..82 mm; voxels here are 3 mm
    np.testing.assert_allclose(world.min(0), [-72, -107, -72], atol=3.1)
    np.testing.assert_allclose(world.max(0), [72, 73, 82], atol=3.1)
    for point in ([6, 0, 18], [-6, 0, 18]):  # lateral ventricles
        i, j, k = np.round(nib.affines.apply_affine(np.linalg.inv(anatomy.affine), point)).astype(int)
        assert anatomy.tissue[0, i, j, k] > 0.9


def test_affine_is_isotropic_and_centred():
    affine = phantom_affine(64)
    np.testing.assert_allclose(np.diag(affine)[:3], [3.0, 3.0, 3.0])  # 192 mm / 64
    centre = nib.affines.apply_affine(affine, [31.5, 31.5, 31.5])
    np.testing.assert_allclose(centre, load_card("brats_phantoms").header["centre_mm"])
    np.testing.assert_allclose(nib.affines.apply_affine(affine, [-0.5] * 3), centre - 96)


def test_bias_terms_by_hand():
    # voxel (0, 31, 16) of 32: coordinates (2 v + 1) / 32 - 1 = -31/32, 31/32, 1/32
    x, y, z = -31 / 32, 31 / 32, 1 / 32
    by_hand = {(1, 0, 0): x, (0, 1, 0): y, (0, 0, 1): z, (2, 0, 0): x * x, (0, 2, 0): y * y, (0, 0, 2): z * z}
    by_hand |= {(1, 1, 0): x * y, (1, 0, 1): x * z, (0, 1, 1): y * z}
    voxels = (np.array([0]), np.array([31]), np.array([16]))
    terms = bias_terms(voxels, 32, np.float64)
    assert terms.shape == (9, 1) and set(anatomy.BIAS_TERMS) == set(by_hand)
    np.testing.assert_allclose(terms[:, 0], [by_hand[t] for t in anatomy.BIAS_TERMS], rtol=1e-15)
    assert bias_terms(voxels, 32).dtype == np.float32
    np.testing.assert_array_equal(bias_field(np.zeros((4, 9), np.float32), bias_terms(voxels, 32)), 1.0)
    only_x = np.array([0.1 if t == (1, 0, 0) else 0.0 for t in anatomy.BIAS_TERMS])
    np.testing.assert_allclose(bias_field(only_x, terms), [np.exp(0.1 * x)])


def test_save_nifti_is_mni_and_byte_stable(tmp_path):
    array = np.arange(32**3, dtype=np.int16).reshape((32,) * 3)
    for name in ("a.nii.gz", "b.nii.gz"):
        save_nifti(array, phantom_affine(32), tmp_path / name)
    written = (tmp_path / "a.nii.gz").read_bytes()
    assert written == (tmp_path / "b.nii.gz").read_bytes() and written[4:8] == bytes(4)  # gzip MTIME is 0
    image = nib.load(tmp_path / "a.nii.gz")
    assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (4, 4)
    np.testing.assert_array_equal(image.affine, phantom_affine(32))
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), array)


def test_same_seed_same_bytes_and_parameters_replay():
    a, b, c = make_phantom(32, 7), make_phantom(32, 7), make_phantom(32, 8)
    assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    assert a.image.tobytes() != c.image.tobytes()
    record = json.loads(json.dumps(dataclasses.asdict(a.params)))
    replayed = render_phantom(PhantomParams.from_dict(record), 32)
    assert PhantomParams.from_dict(record) == a.params
    assert replayed.image.tobytes() == a.image.tobytes()


def test_forcing_enhancement_changes_nothing_else():
    free = sample_phantom_params(3)
    forced = sample_phantom_params(3, enhancing=not free.enhancing)
    assert forced.enhancing != free.enhancing
    assert dataclasses.replace(forced, enhancing=free.enhancing) == free


def test_hgg_has_every_region_in_one_hemisphere_inside_the_brain():
    for seed in range(3):
        ph = make_phantom(64, seed, enhancing=True)
        assert ph.image.shape == (4, 64, 64, 64) and ph.image.dtype == np.float32
        assert ph.label.shape == (64, 64, 64) and ph.label.dtype == np.uint8
        assert set(np.unique(ph.label)) == {0, 1, 2, 4}
        tumour = ph.label > 0
        assert (ph.image[:, tumour] > 0).all()  # inside the (skull-stripped) brain
        x_mm = nib.affines.apply_affine(ph.affine, np.argwhere(tumour))[:, 0]
        assert (np.sign(x_mm) == np.sign(ph.params.centre_mm[0])).all()
        # the enhancing rim surrounds the necrosis: necrosis is more central on average
        centre = np.asarray(ph.params.centre_mm)
        mean_distance = {}
        for v in (1, 4, 2):
            world = nib.affines.apply_affine(ph.affine, np.argwhere(ph.label == v))
            mean_distance[v] = np.linalg.norm(world - centre, axis=1).mean()
        assert mean_distance[1] < mean_distance[4] < mean_distance[2]


def test_lgg_has_no_enhancing_tumour():
    for seed in range(3):
        label = make_phantom(32, seed, enhancing=False).label
        assert set(np.unique(label)) == {0, 1, 2}


def test_region_contrast_by_hand():
    label = np.array([0, 2, 4, 4, 1, 2, 0], np.uint8).reshape(1, 1, 7)
    image = np.ones((4, 1, 1, 7), np.float32)
    image[2, 0, 0] = [
        1,
        1,
        3,
        5,
        1,
        1,
        1,
    ]  # t1ce: the rim (3, 5) against necrosis and oedema around it (1, 1)
    image[0, 0, 0] = [1, 1, 2, 2, 3, 1, 1]  # flair: the rim (2, 2) against (1, 3): same mean, no contrast
    d = region_contrast(image, label, shell=1)
    assert d["ET"]["t1ce"] == pytest.approx((4 - 1) / np.sqrt((1 + 0) / 2))
    assert d["ET"]["flair"] == 0 and d["ET"]["t1"] == 0  # t1: all ones, no spread and no difference
    # WT (all 5 tumour voxels: 1 3 5 1 1, mean 2.2, variance 2.56) against the brain around it (1, 1)
    assert d["WT"]["t1ce"] == pytest.approx((2.2 - 1) / np.sqrt((2.56 + 0) / 2))
    assert np.isnan(region_contrast(image, np.zeros_like(label))["ET"]["t1ce"])  # no region: nan


def test_missing_sequences_hurt_the_regions_they_should():
    """ET stands out from the necrosis and oedema around it on T1ce only; WT from the brain on FLAIR, T2."""
    for seed in range(4):
        ph = make_phantom(64, seed, enhancing=True)
        d = region_contrast(ph.image, ph.label)
        et, wt = d["ET"], d["WT"]
        assert et["t1ce"] > 5
        assert max(abs(et[m]) for m in ("flair", "t1", "t2")) < 2
        assert et["t1ce"] > 3 * max(abs(et[m]) for m in ("flair", "t1", "t2"))
        assert min(wt["flair"], wt["t2"]) > 2
        assert min(wt["flair"], wt["t2"]) > 2 * max(abs(wt["t1"]), abs(wt["t1ce"]))


def test_generate_phantoms_writes_the_brats2018_layout(tmp_path):
    out = generate_phantoms(tmp_path / "ph", cases=3, size=32, seed=1)
    layout = load_card("brats").header["layouts"]["brats2018"]
    cases = sorted(out.glob("*/*"))
    assert len(cases) == 3 and {c.parent.name for c in cases} <= {"HGG", "LGG"}
    manifest = json.loads((out / "phantoms.json").read_text())
    assert (manifest["seed"], manifest["size"], sorted(manifest["cases"])) == (1, 32, [c.name for c in cases])
    for n, (case_dir, child) in enumerate(
        zip(cases, np.random.SeedSequence(1).spawn(3), strict=True), start=1
    ):
        case = case_dir.name
        assert case == f"Brats18_SYN_{n:03d}_1" and re.match(layout["case_regex"], case)
        expected = make_phantom(32, np.random.default_rng(child))
        assert case_dir.parent.name == expected.params.grade
        for m, name in enumerate(MODALITIES):
            img = nib.load(case_dir / f"{case}_{name}.nii.gz")
            np.testing.assert_array_equal(img.affine, phantom_affine(32))
            assert img.header.get_zooms() == (6.0, 6.0, 6.0) and int(img.header["sform_code"]) == 4
            assert img.get_data_dtype() == np.int16
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.rint(expected.image[m] * 1000))
        seg = nib.load(case_dir / f"{case}_seg.nii.gz")
        np.testing.assert_array_equal(np.asanyarray(seg.dataobj), expected.label)
    # case n depends on (seed, n) only; an existing layout is never overwritten
    one = generate_phantoms(tmp_path / "one", cases=1, size=32, seed=1)
    first = next(one.glob("*/Brats18_SYN_001_1")) / "Brats18_SYN_001_1_t1ce.nii.gz"
    assert (
        first.read_bytes() == next(out.glob("*/Brats18_SYN_001_1/Brats18_SYN_001_1_t1ce.nii.gz")).read_bytes()
    )
    with pytest.raises(FileExistsError, match="new or empty folder"):
        generate_phantoms(out, cases=1, size=32)
    with pytest.raises(ValueError, match="cases"):
        generate_phantoms(tmp_path / "none", cases=0, size=32)
    with pytest.raises(ValueError, match="seed"):
        generate_phantoms(tmp_path / "none", cases=1, size=32, seed=-1)


def test_round_trip_through_the_brats_loader(tmp_path):
    out = generate_phantoms(tmp_path, cases=2, size=32, seed=5)
    layout, case_dirs = scan_folder(out)
    assert layout == "brats2018" and len(case_dirs) == 2
    for case_dir, child in zip(case_dirs, np.random.SeedSequence(5).spawn(2), strict=True):
        case = load_case(case_dir)
        expected = make_phantom(32, np.random.default_rng(child))
        box = tuple(slice(a, b) for a, b in case.geometry.crop)
        assert case.case_id == case_dir.name and case.present.all()
        np.testing.assert_array_equal(case.label, expected.label.transpose(AXES)[box])
        np.testing.assert_array_equal(case.geometry.affine, expected.affine)
        assert case.geometry.codes == (4, 4)
        # the loader's nonzero voxels are the written (int16) nonzero voxels, on its (D, H, W) grid
        written = np.rint(expected.image * 1000).transpose(0, *(a + 1 for a in AXES))[(slice(None), *box)]
        np.testing.assert_array_equal(case.image != 0, written > 0)


@pytest.mark.parametrize("module", [anatomy, phantoms])
def test_phantom_modules_never_download(module):
    source = open(module.__file__, encoding="utf-8").read()
    assert "fetch_" not in source and "urlopen" not in source and "requests" not in source


def test_redundancy_moves_each_tissue_towards_its_dominant_contrast():
    from mckd_lab.data.phantoms import TISSUES, contrast_table, redundant_table

    table = contrast_table()
    flair, t1, t1ce = 0, 1, 2
    ed, et, wm = TISSUES.index("oedema"), TISSUES.index("enhancing"), TISSUES.index("wm")
    np.testing.assert_array_equal(redundant_table(table, 0.0), table)
    half = redundant_table(table, 0.5)
    # oedema on T1, by hand: wm 1.00 + 0.5 (0.76 - 1.00) + 0.5 (FLAIR's 1.85 - 1.00) = 1.305
    assert half[t1, ed] == pytest.approx(1.305)
    # ET on FLAIR against the (new) oedema: 1.85 + 0.5 (1.75 - 1.85) + 0.5 (T1ce's 1.70 - 0.80) = 2.25
    assert half[flair, et] == pytest.approx(2.25)
    full = redundant_table(table, 1.0)
    for tissue, surround in (("oedema", "wm"), ("enhancing", "oedema"), ("necrosis", "enhancing")):
        t, s = TISSUES.index(tissue), TISSUES.index(surround)
        np.testing.assert_allclose(
            full[:, t] - full[:, s], (full[:, t] - full[:, s])[t1ce if tissue != "oedema" else flair]
        )
    assert (full[:, wm] == table[:, wm]).all()  # normal tissue is not touched
    with pytest.raises(ValueError, match="redundancy must be in"):
        redundant_table(table, 1.5)
