"""Tiny synthetic BraTS cases written with nibabel, in any layout of the card (shared by the BraTS tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np

from mckd_lab.data.cards import load_card

SHAPE = (14, 12, 10)  # NIfTI (i, j, k); not cubic, so axis mix-ups show
AFFINE = np.array([[-1.0, 0, 0, 90], [0, -1.0, 0, 120], [0, 0, 1.2, -70], [0, 0, 0, 1]])
CASE_IDS = {
    "brats2018": ["Brats18_CBICA_AAB_1", "Brats18_2013_10_1"],
    "brats2019": ["BraTS19_TCIA01_131_1", "BraTS19_CBICA_AAM_1"],
    "brats2020": ["BraTS20_Training_001", "BraTS20_Training_002"],
    "brats2021": ["BraTS2021_00000", "BraTS2021_00002"],
    "brats2023": ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"],
}


def synthetic_volumes(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four modalities (float32, zero outside an ellipsoidal 'brain') and a card-convention label map."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    brain = ((i - 7) / 5) ** 2 + ((j - 6) / 4) ** 2 + ((k - 5) / 3.5) ** 2 <= 1
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[5:9, 4:8, 3:7] = 2
    label[6:8, 5:7, 4:6] = 1
    label[6, 5, 4:6] = 4
    label[~brain] = 0
    volumes = {}
    for m, name in enumerate(load_card("brats").modality_names):
        vol = (100 + 50 * m + 20 * rng.standard_normal(SHAPE) + 30 * (label == 4) * (name == "t1ce")).astype(
            np.float32
        )
        volumes[name] = np.where(brain, np.abs(vol) + 1, 0).astype(np.float32)
    return volumes, label


def write_case(
    root: Path,
    layout: str,
    case_id: str,
    volumes: dict[str, np.ndarray],
    label: np.ndarray | None,
    ext: str = ".nii.gz",
    subfolder: str = "HGG",
) -> Path:
    """Write one case in ``layout`` (file names and label convention from the card); returns its folder."""
    spec = load_card("brats").header["layouts"][layout]
    case_dir = root / (subfolder if spec["subfolders"] else "") / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    arrays = dict(volumes)
    if label is not None:
        seg = label.copy()
        for raw, card_value in spec["label_map"].items():
            seg[label == card_value] = raw
        arrays["seg"] = seg
    for key, data in arrays.items():
        nib.save(nib.Nifti1Image(data, AFFINE), case_dir / (spec["files"][key].format(case=case_id) + ext))
    return case_dir


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, to show that reading modified nothing."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
