"""MNI152 anatomy on the phantom grid, shared by the synthetic generators (BraTS-like phantoms, ADNI T1 volumes).

Conventions
- The phantom grid is a cube of side ``size`` voxels (32..128, the card ``brats_phantoms``' ``sizes``), indexed
  (x, y, z) in RAS order as nibabel returns it. It spans the card's ``fov_mm`` (192 mm) of MNI152 space around
  ``centre_mm``, so the spacing is fov_mm / size mm and ``phantom_affine(size)`` maps voxel indices to MNI152
  millimetres.
- Anatomy comes from the MNI152 maps that nilearn bundles (no download): CSF, GM and WM fractions in [0, 1].
- A bias field is exp(sum_t c_t x^i y^j z^k) over ``BIAS_TERMS``, the voxel coordinates scaled to [-1, 1]
  over the cube: multiplicative, smooth, near 1 at the centre.
- Files are NIfTI-1 with the grid affine as sform and qform, code 4 (MNI152), units mm.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from mckd_lab.data.cards import load_card

CARD = "brats_phantoms"  # its header defines the grid: sizes, fov_mm, centre_mm
NIFTI_MNI = 4  # sform/qform code: MNI152 space
# Terms x^i y^j z^k of the log bias field (degrees 1 and 2; no constant: the field is near 1 at the centre).
BIAS_TERMS = tuple((i, j, k) for i in range(3) for j in range(3) for k in range(3) if 0 < i + j + k <= 2)


@dataclass(frozen=True)
class Anatomy:
    """MNI152 anatomy on the phantom grid: ``tissue`` float32 (3, S, S, S) CSF, GM, WM fractions (their sum is
    the brain fraction), ``brain`` bool (S, S, S) where that sum is >= 0.5, ``affine`` (4, 4)."""

    tissue: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


def check_size(size) -> int:
    """``size`` as an int; raises unless it is a whole number of voxels in the card's range (32..128)."""
    low, high = load_card(CARD).header["sizes"]
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not low <= size <= high:
        raise ValueError(
            f"phantom size must be a whole number of voxels from {low} to {high} (the side of the cube); "
            f"got {size!r}. Use e.g. 64 for quick runs, 128 for the finest phantoms."
        )
    return int(size)


def phantom_affine(size: int) -> np.ndarray:
    """(4, 4) voxel -> MNI152 mm: isotropic spacing fov_mm / size, centred on the card's ``centre_mm``."""
    header = load_card(CARD).header
    spacing = header["fov_mm"] / check_size(size)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(header["centre_mm"], float) - header["fov_mm"] / 2 + spacing / 2
    return affine


@functools.lru_cache(maxsize=1)
def mni152_1mm() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 maps bundled inside nilearn at 1 mm (no download): float32 (4, X, Y, Z) = CSF, GM, WM and
    brain fractions, and their (4, 4) affine. CSF is brain minus GM minus WM: ventricles and sulci."""
    # imported here: nilearn takes about 2 s to import, and only the first build of the maps needs it
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    template = load_mni152_template()
    brain = ndi.binary_fill_holes(template.get_fdata(dtype=np.float32) > 0).astype(np.float32)
    gm = load_mni152_gm_template().get_fdata(dtype=np.float32) * brain
    wm = load_mni152_wm_template().get_fdata(dtype=np.float32) * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return np.stack([csf, gm, wm, brain]), template.affine


def anti_alias_sigma(size: int) -> float:
    """Gaussian sigma, in 1 mm template voxels, applied to the 1 mm maps before they are sampled on the grid
    of ``size`` (0.4 grid spacings)."""
    return 0.4 * phantom_affine(size)[0, 0] / abs(mni152_1mm()[1][0, 0])


@functools.lru_cache(maxsize=4)
def mni_anatomy(size: int) -> Anatomy:
    """The MNI152 anatomy resampled to the phantom grid of ``size`` (cached; about 1-2 s the first time)."""
    affine = phantom_affine(size)
    maps, affine_1mm = mni152_1mm()
    to_1mm = np.linalg.inv(affine_1mm) @ affine
    sigma = anti_alias_sigma(size)
    tissue = np.stack(
        [
            ndi.affine_transform(
                ndi.gaussian_filter(m, sigma),
                to_1mm[:3, :3],
                to_1mm[:3, 3],
                output_shape=(size,) * 3,
                order=1,
            )
            for m in maps[:3]
        ]
    ).clip(0.0, 1.0)
    anatomy = Anatomy(tissue=tissue, brain=tissue.sum(0) >= 0.5, affine=affine)
    for array in (anatomy.tissue, anatomy.brain, anatomy.affine):
        array.setflags(write=False)  # shared by every phantom of this size (cached)
    return anatomy


def bias_terms(voxels: tuple[np.ndarray, ...], size: int, dtype=np.float32) -> np.ndarray:
    """(T, N) values of the ``BIAS_TERMS`` monomials at N voxels of the grid of ``size``.

    voxels: index arrays x, y, z (as ``np.nonzero`` gives them); the coordinates (2 v + 1) / size - 1 run over
    [-1, 1] across the cube. Computed in ``dtype``: the BraTS phantoms use float32, the T1 volumes float64
    (rounded to float32 afterwards); each keeps its own so that its generated files stay the same bytes."""
    x, y, z = ((2 * v.astype(dtype) + 1) / size - 1 for v in voxels)
    return np.stack([x**i * y**j * z**k for i, j, k in BIAS_TERMS])


def bias_field(coefficients: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Multiplicative bias exp(coefficients @ terms): coefficients (T,) or (M, T) log-field weights of
    ``BIAS_TERMS``, terms (T, N) from ``bias_terms``; returns (N,) or (M, N) in their common dtype."""
    return np.exp(coefficients @ terms)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` (x, y, z; its dtype kept) to ``path`` (.nii.gz: gzip without a timestamp, so the same
    array gives the same bytes) with ``affine`` (4, 4) as sform and qform, code ``NIFTI_MNI``, units mm."""
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=NIFTI_MNI)
    image.set_qform(affine, code=NIFTI_MNI)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
