"""The BraTS loader: every layout, geometry round trip, normalisation, regions, missingness, bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from brats_files import AFFINE, CASE_IDS, SHAPE, synthetic_volumes, tree_hashes, write_case

from mckd_lab.data.brats import (
    AXES,
    BratsError,
    MissingModalityWarning,
    format_inspection,
    inspect_folder,
    label_to_regions,
    load_case,
    normalise_intensity,
    scan_folder,
    write_segmentation,
)
from mckd_lab.data.cards import load_card

MODALITIES = load_card("brats").modality_names


def write_layout(root, layout, ext=".nii.gz", with_seg=True):
    for seed, case_id in enumerate(CASE_IDS[layout]):
        volumes, label = synthetic_volumes(seed)
        write_case(root, layout, case_id, volumes, label if with_seg else None, ext)
    return root


# The synthetic brain is the ellipsoid centred at (i, j, k) = (7, 6, 5) with radii (5, 4, 3.5): it spans
# i 2..12, j 2..10, k 2..8, so its box in (D, H, W) = (k, i, j) order is:
BRAIN_BOX = ((2, 9), (2, 13), (2, 11))


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
@pytest.mark.parametrize("layout", list(CASE_IDS))
def test_every_layout_reads_back_identically(tmp_path, layout, ext):
    root = write_layout(tmp_path, layout, ext)
    before = tree_hashes(root)
    found, case_dirs = scan_folder(root)
    assert found == layout
    assert [d.name for d in case_dirs] == sorted(CASE_IDS[layout])

    case = load_case(root / ("HGG" if layout in ("brats2018", "brats2019") else "") / CASE_IDS[layout][0])
    volumes, label = synthetic_volumes(0)
    box = tuple(slice(*b) for b in BRAIN_BOX)
    assert case.case_id == CASE_IDS[layout][0] and case.layout == layout
    assert case.present.tolist() == [True] * 4
    assert case.geometry.crop == BRAIN_BOX and case.image.shape == (4, 7, 11, 9)
    # labels come back in the card convention (BraTS2023's ET=3 read as 4), cropped, (D, H, W) = (k, i, j)
    np.testing.assert_array_equal(case.label, label.transpose(AXES)[box])
    for m, name in enumerate(MODALITIES):
        np.testing.assert_allclose(
            case.image[m], normalise_intensity(volumes[name].transpose(AXES))[box], atol=1e-6
        )
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert tree_hashes(root) == before


def test_brats2018_finds_hgg_lgg_and_flat_validation_folders(tmp_path):
    volumes, label = synthetic_volumes(0)
    write_case(tmp_path / "train", "brats2018", "Brats18_CBICA_AAB_1", volumes, label, subfolder="HGG")
    write_case(tmp_path / "train", "brats2018", "Brats18_2013_0_1", volumes, label, subfolder="LGG")
    write_case(tmp_path / "val", "brats2018", "Brats18_CBICA_AAM_1", volumes, None, subfolder="")
    assert [d.name for d in scan_folder(tmp_path / "train")[1]] == ["Brats18_2013_0_1", "Brats18_CBICA_AAB_1"]
    layout, dirs = scan_folder(tmp_path / "val")
    assert layout == "brats2018" and [d.name for d in dirs] == ["Brats18_CBICA_AAM_1"]
    # one case folder named directly is a folder of one case
    assert scan_folder(dirs[0]) == ("brats2018", dirs)


def test_validation_folder_without_seg(tmp_path):
    root = write_layout(tmp_path, "brats2021", with_seg=False)
    case = load_case(scan_folder(root)[1][0])
    assert case.label is None and case.target is None and "seg" not in case.files
    assert [c["labels"] for c in inspect_folder(root)["cases"]] == [None, None]


def test_label_to_regions_by_hand():
    label = np.array([[0, 1], [2, 4]], dtype=np.uint8)
    regions = label_to_regions(label)  # channels ET, WT, TC
    np.testing.assert_array_equal(regions[0], [[0, 0], [0, 1]])  # ET = {4}
    np.testing.assert_array_equal(regions[1], [[0, 1], [1, 1]])  # WT = {1, 2, 4}
    np.testing.assert_array_equal(regions[2], [[0, 1], [0, 1]])  # TC = {1, 4}
    assert regions.dtype == np.float32


def test_normalise_intensity_by_hand():
    volume = np.array([0, 0, 1, 2, 3, 4], dtype=np.float32)
    # no clipping: brain voxels 1..4, mean 2.5, std sqrt(1.25)
    np.testing.assert_allclose(
        normalise_intensity(volume, 100), [0, 0, *((np.arange(1, 5) - 2.5) / 1.25**0.5)]
    )
    # clipped at the 50th percentile (2.5): 1, 2, 2.5, 2.5 -> mean 2, std sqrt(0.375)
    np.testing.assert_allclose(
        normalise_intensity(volume, 50), [0, 0, *((np.array([1, 2, 2.5, 2.5]) - 2) / 0.375**0.5)]
    )
    np.testing.assert_array_equal(normalise_intensity(np.zeros(4)), np.zeros(4))


@pytest.mark.parametrize("layout", list(CASE_IDS))
def test_write_segmentation_restores_original_geometry_and_convention(tmp_path, layout):
    root = write_layout(tmp_path / "in", layout)
    case = load_case(scan_folder(root)[1][0])
    out = write_segmentation(case.label, case, tmp_path / "out" / "pred.nii.gz")
    written, original = nib.load(out), nib.load(case.files["seg"])
    assert written.shape == SHAPE
    np.testing.assert_allclose(written.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    assert (np.asarray(written.dataobj) == 3).any() == (layout == "brats2023")
    for code in ("qform_code", "sform_code"):
        assert written.header[code] == original.header[code]
    # a full-size (D, H, W) map is accepted too, and reads back to the same case
    full = np.zeros(case.geometry.full_shape, np.uint8)
    full[tuple(slice(*b) for b in case.geometry.crop)] = case.label
    write_segmentation(full, case, tmp_path / "out" / "full.nii")
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "out" / "full.nii").dataobj), np.asarray(original.dataobj)
    )


def test_write_segmentation_refuses_inputs_and_foreign_values(tmp_path):
    case = load_case(scan_folder(write_layout(tmp_path, "brats2020"))[1][0])
    before = tree_hashes(tmp_path)
    with pytest.raises(BratsError, match="input files"):
        write_segmentation(case.label, case, case.files["seg"])
    with pytest.raises(BratsError, match=r"label values \[3\]"):
        write_segmentation(np.full_like(case.label, 3), case, tmp_path / "pred.nii.gz")
    with pytest.raises(BratsError, match="matches neither"):
        write_segmentation(np.zeros((2, 2, 2), np.uint8), case, tmp_path / "pred.nii.gz")
    assert tree_hashes(tmp_path) == before


def test_missing_modality_is_kept_and_reported(tmp_path):
    root = write_layout(tmp_path, "brats2020")
    case_dir = scan_folder(root)[1][0]
    (case_dir / f"{case_dir.name}_t1.nii.gz").unlink()
    with pytest.warns(MissingModalityWarning, match=f"case {case_dir.name}: no file for t1"):
        case = load_case(case_dir)
    assert case.present.tolist() == [True, False, True, True]
    assert not case.image[1].any() and case.image[0].any()
    report = inspect_folder(root)
    assert [c["present"] for c in report["cases"]] == [["flair", "t1ce", "t2"], list(MODALITIES)]
    text = format_inspection(report)
    assert "layout brats2020, 2 cases" in text
    assert text.splitlines()[2].split()[:3] == [case_dir.name, "flair+t1ce+t2", "14x12x10"]
    assert text.splitlines()[-1].endswith(f"not present: {case_dir.name} lacks t1")


def test_inspect_folder_reports_layout_shape_spacing_and_label_counts(tmp_path):
    report = inspect_folder(write_layout(tmp_path, "brats2023"))
    _, label = synthetic_volumes(0)
    assert report["layout"] == "brats2023" and report["modalities"] == list(MODALITIES)
    first = report["cases"][0]
    assert first["id"] == "BraTS-GLI-00000-000" and first["shape"] == list(SHAPE)
    assert first["spacing"] == [1.0, 1.0, 1.2]
    # counted over the whole volume, in the card convention (ET as 4)
    assert first["labels"] == {str(v): int((label == v).sum()) for v in (0, 1, 2, 4)}
    assert sum(first["labels"].values()) == np.prod(SHAPE) and first["labels"]["4"] > 0


# ---- bad input: each raises a message naming the thing and what to do, and leaves the files as they were


def case_folder(tmp_path, layout="brats2020"):
    return scan_folder(write_layout(tmp_path, layout))[1][0]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def overwrite(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), path)


def bad_gz_truncated(case_dir):
    path = case_dir / f"{case_dir.name}_t1ce.nii.gz"
    truncate(path)
    return path.name, "truncated or corrupt"


def bad_nii_truncated(case_dir):
    path = case_dir / f"{case_dir.name}_flair.nii.gz"
    plain = path.with_suffix("")  # .nii
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    truncate(plain)
    return plain.name, "truncated or corrupt"


def bad_garbage(case_dir):
    path = case_dir / f"{case_dir.name}_t2.nii.gz"
    path.write_bytes(b"not a nifti at all" * 10)
    return path.name, "truncated or corrupt"


def bad_shape(case_dir):
    overwrite(case_dir / f"{case_dir.name}_t2.nii.gz", np.ones((14, 12, 9), np.float32))
    return f"{case_dir.name}_t2.nii.gz", r"shape \(14, 12, 9\) differs"


def bad_affine(case_dir):
    shifted = AFFINE.copy()
    shifted[0, 3] += 2
    overwrite(case_dir / f"{case_dir.name}_t1.nii.gz", synthetic_volumes(0)[0]["t1"], shifted)
    return f"{case_dir.name}_t1.nii.gz", "affine differs"


def bad_nan(case_dir):
    volume = synthetic_volumes(0)[0]["flair"]
    volume[3, 4, 5] = np.nan
    volume[3, 4, 6] = np.inf
    overwrite(case_dir / f"{case_dir.name}_flair.nii.gz", volume)
    return f"{case_dir.name}_flair.nii.gz", r"2 voxels are NaN or infinite \(first at voxel \(3, 4, 5\)\)"


def bad_label(case_dir):
    label = synthetic_volumes(0)[1]
    label[7, 6, 5] = 3  # 3 is not a BraTS 2018-2021 label
    overwrite(case_dir / f"{case_dir.name}_seg.nii.gz", label)
    return f"{case_dir.name}_seg.nii.gz", r"label values \[3\] \(voxel counts \{3: 1\}\).*\[0, 1, 2, 4\]"


def bad_nan_label(case_dir):
    label = synthetic_volumes(0)[1].astype(np.float32)
    label[7, 6, 5] = np.nan
    overwrite(case_dir / f"{case_dir.name}_seg.nii.gz", label)
    return f"{case_dir.name}_seg.nii.gz", "1 voxels are NaN"


@pytest.mark.parametrize(
    "spoil",
    [
        bad_gz_truncated,
        bad_nii_truncated,
        bad_garbage,
        bad_shape,
        bad_affine,
        bad_nan,
        bad_label,
        bad_nan_label,
    ],
)
def test_bad_case_gives_clear_error_and_leaves_files_untouched(tmp_path, spoil):
    case_dir = case_folder(tmp_path)
    filename, message = spoil(case_dir)
    before = tree_hashes(tmp_path)
    with pytest.raises(BratsError, match=message) as err:
        load_case(case_dir)
    assert filename in str(err.value)
    with pytest.raises(BratsError, match=message):
        inspect_folder(tmp_path)
    assert tree_hashes(tmp_path) == before


def test_brats2023_label_4_is_foreign(tmp_path):
    case_dir = case_folder(tmp_path, "brats2023")
    label = synthetic_volumes(0)[1]  # card convention: ET is 4, which BraTS2023 files never hold
    overwrite(case_dir / f"{case_dir.name}-seg.nii.gz", label)
    with pytest.raises(
        BratsError, match=r"label values \[4\].*layout brats2023, whose values are \[0, 1, 2, 3\]"
    ):
        load_case(case_dir)


def test_empty_unrecognised_and_missing_folders_list_what_was_found(tmp_path):
    with pytest.raises(BratsError, match="nothing \\(the folder is empty\\)"):
        scan_folder(tmp_path)
    (tmp_path / "patient_01").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        BratsError, match=r"contains notes.txt, patient_01/\. Expected case folders.*BraTS2021_"
    ):
        scan_folder(tmp_path)
    with pytest.raises(BratsError, match="no such folder"):
        scan_folder(tmp_path / "nowhere")
    with pytest.raises(BratsError, match="no such case folder"):
        load_case(tmp_path / "BraTS2021_00001")
    with pytest.raises(BratsError, match="'patient_01' matches no BraTS layout"):
        load_case(tmp_path / "patient_01")


def test_case_folder_without_modality_files_lists_its_content(tmp_path):
    case_dir = tmp_path / "BraTS2021_00007"
    case_dir.mkdir()
    (case_dir / "BraTS2021_00007_FLAIR.nii.gz").write_bytes(b"")
    with pytest.raises(
        BratsError,
        match=r"no modality file found \(expected BraTS2021_00007_flair.nii.gz.*"
        r"It contains BraTS2021_00007_FLAIR.nii.gz",
    ):
        load_case(case_dir)


def test_phantoms_read_through_the_loader_and_every_layout_by_renaming(tmp_path):
    phantoms = pytest.importorskip("mckd_lab.data.phantoms")
    source = phantoms.generate_phantoms(tmp_path / "phantoms", cases=2, size=32, seed=0)
    layout, dirs = scan_folder(source)
    assert layout == "brats2018" and len(dirs) == 2
    reference = [load_case(d) for d in dirs]
    assert all(c.present.all() and c.label is not None and c.target[1].any() for c in reference)
    written = nib.load(write_segmentation(reference[0].label, reference[0], tmp_path / "pred.nii.gz"))
    assert (written.header["qform_code"], written.header["sform_code"]) == (4, 4)  # MNI152, as the phantoms
    np.testing.assert_array_equal(
        np.asarray(written.dataobj), np.asarray(nib.load(dirs[0] / f"{dirs[0].name}_seg.nii.gz").dataobj)
    )
    card = load_card("brats")
    for target_layout, ids in CASE_IDS.items():
        spec = card.header["layouts"][target_layout]
        root = tmp_path / target_layout
        for case, new_id in zip(reference, ids, strict=True):
            new_dir = root / ("HGG" if spec["subfolders"] else "") / new_id
            new_dir.mkdir(parents=True)
            for key, path in case.files.items():
                target = new_dir / (spec["files"][key].format(case=new_id) + ".nii.gz")
                if key == "seg" and spec["label_map"]:  # BraTS2023 stores ET as 3
                    img = nib.load(path)
                    seg = np.asarray(img.dataobj).copy()
                    seg[seg == 4] = 3
                    nib.save(nib.Nifti1Image(seg, img.affine), target)
                else:
                    shutil.copyfile(path, target)
            again = load_case(new_dir)
            assert again.layout == target_layout and again.case_id == new_id
            np.testing.assert_array_equal(again.image, case.image)
            np.testing.assert_array_equal(again.label, case.label)
            assert again.geometry.crop == case.geometry.crop
        assert scan_folder(root)[0] == target_layout


def test_cli_inspect_prints_the_report_and_exits_2_on_bad_input(tmp_path, capsys):
    from mckd_lab.cli import main

    root = write_layout(tmp_path / "data", "brats2021")
    assert main(["inspect", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(inspect_folder(root)))
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no BraTS case folders found" in capsys.readouterr().err
