"""Synthetic T1-weighted brain MRI for the synthetic ADNI cohort: the anatomy carries the subject's atrophy.

A volume is the MNI152 anatomy of :func:`mckd_lab.data.anatomy.mni_anatomy` (CSF, GM, WM fractions) on the
phantom grid ``phantom_affine(size)`` (RAS, MNI152 millimetres, as if affinely registered and skull-stripped),
changed by three FreeSurfer-like volumes (``T1_VOLUMES``), each given as a ratio r to the volume the template
stands for (r = 1 draws the template unchanged). The renderer knows no cohort: the synthetic ADNI cohort
(:mod:`mckd_lab.data.cohort`) computes r from a row's fractions of the intracranial volume (volume / ICV, as in
``ADNIMERGE``) over its reference fractions ``cohort.T1_REFERENCE`` (its CN means at 75 over ICV 1.5e6 mm^3):

1. Ventricles, r_v clipped to [0.4, 4]: the tissue maps are sampled (linear
   interpolation, ``ndi.map_coordinates(order=1)``) at the warped points q = c + (p - c)(1 - k G(p)),
   G = exp(-|p - c|^2 / 2 sigma^2), centred on the lateral ventricles c = (0, -15, 15) mm (the centroid of the
   largest deep CSF component of the template: x +-35, y -58..30, z -4..28 mm), sigma = 27 mm. Near c this is
   a uniform scaling by 1 / (1 - k); k = 1 - r_v^(-1/2) scales the central CSF volume by r_v^1.5, amplified
   because the lateral ventricles are C-shaped and reach beyond the Gaussian core (with k = 1 - r_v^(-1/3),
   which scales the core by exactly r_v, the template's ventricles grew only x1.28 for r_v = 2, measured at
   1 mm); the displacement decays to about 1 mm at the cortex. The maps are
   sampled from the 1 mm template smoothed as ``mni_anatomy`` smooths it, not from the coarse grid, so r_v = 1
   gives exactly ``mni_anatomy(size).tissue`` and a warp adds no interpolation blur (at 6 mm voxels, blur
   alone would brighten thin CSF more than the warp darkens it).
2. Global cortical atrophy, r_w (WholeBrain): GM is multiplied by g = clip(1 - 4 (1 - r_w), 0.6,
   1.1) everywhere, the lost GM becoming CSF (class differences in whole-brain volume are ~5%, so they are
   amplified four times; a gain is taken from CSF only).
3. Hippocampal atrophy, r_h (Hippocampus): inside two ellipsoids centred
   on (+-26, -22, -14) mm with semi-axes (7, 18, 7) mm (x, y, z; soft edge: a smoothstep in the normalised
   radius d, weight 1 for d <= 0.75 falling to 0 at d >= 1.25, nothing changes beyond), GM is multiplied by
   h = clip(1 - 2.5 (1 - r_h), 0.1, 1.3) (weight 1) towards 1 (weight 0), the lost GM becoming CSF. The
   amplification keeps a 20% loss (AD vs CN) visible in a structure a few voxels wide at 6 mm.

Steps 2-3 act on the warped maps, so the hippocampi stay at their MNI coordinates. T1 contrast (MPRAGE:
white matter brightest): 0.25 CSF + 0.62 GM + 1.0 WM, times a multiplicative bias field exp(sum c_t x^i y^j
z^k) over the degree 1-2 terms of ``anatomy.BIAS_TERMS`` (coordinates scaled to [-1, 1] over the cube, c_t
uniform in +-0.02: a few percent over the brain), plus Rician noise of sigma 0.03 (WM = 1), exactly 0
outside ``mni_anatomy(size).brain``. Everything that does not depend on the subject (brain voxels, their
offsets from the centres, the Gaussian, the ellipsoid weights, the bias terms, the smoothed 1 mm maps: about
60 MB for each of the last two sizes) is cached per size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from mckd_lab.data.anatomy import (
    BIAS_TERMS,
    anti_alias_sigma,
    bias_field,
    bias_terms,
    check_size,
    mni152_1mm,
    mni_anatomy,
    phantom_affine,
    save_nifti,
)

# The FreeSurfer volumes (ADNIMERGE columns) that a T1 volume follows: the one list of them.
T1_VOLUMES = ("Hippocampus", "Ventricles", "WholeBrain")

VENTRICLE_CENTRE_MM = (0.0, -15.0, 15.0)
VENTRICLE_SIGMA_MM = 27.0
VENTRICLE_RATIO = (0.4, 4.0)
VENTRICLE_EXPONENT = 0.5  # k = 1 - r_v^(-exponent)
WHOLE_BRAIN_GAIN, WHOLE_BRAIN_RANGE = 4.0, (0.6, 1.1)
HIPPOCAMPUS_CENTRES_MM = ((26.0, -22.0, -14.0), (-26.0, -22.0, -14.0))
HIPPOCAMPUS_SEMI_AXES_MM = (7.0, 18.0, 7.0)
HIPPOCAMPUS_EDGE = 0.25  # half-width of the smoothstep edge, in units of the normalised ellipsoid radius
HIPPOCAMPUS_GAIN, HIPPOCAMPUS_RANGE = 2.5, (0.1, 1.3)
CONTRAST = (0.25, 0.62, 1.0)  # CSF, GM, WM; WM = 1
BIAS_COEFFICIENT = 0.02  # uniform +- per term of BIAS_TERMS
NOISE_SIGMA = 0.03  # Rician, relative to WM


@functools.lru_cache(maxsize=2)
def _source(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The maps the warp samples: float32 (3, X, Y, Z) CSF, GM, WM of the 1 mm template smoothed exactly as
    ``mni_anatomy(size)`` smooths them (so the unwarped volume is that anatomy, and sampling at warped points
    adds no blur of its own), cropped to the brain; and the (4, 4) affine of the crop (voxel -> MNI mm)."""
    maps, affine_1mm = mni152_1mm()
    sigma = anti_alias_sigma(size)
    margin = int(np.ceil(4 * sigma)) + 1
    used = np.argwhere(maps[3] > 0)
    low, high = (used.min(0) - margin).clip(0), used.max(0) + margin + 1
    crop = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    smoothed = np.stack([ndi.gaussian_filter(m[crop], sigma) for m in maps[:3]])  # zeros beyond the crop
    affine = affine_1mm.copy()
    affine[:3, 3] += affine_1mm[:3, :3] @ low
    smoothed.setflags(write=False)
    return smoothed, affine


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> dict[str, np.ndarray]:
    """Subject-independent arrays over the N brain voxels of ``size``: voxel indices ``inside`` (3 arrays),
    ``centre`` (3, 1) ventricle centre in voxels of ``_source(size)``, ``rel`` (3, N) offsets from it in those
    voxels, ``gauss`` (N,) the warp's falloff, ``hippocampus`` (N,) ellipsoid weight in [0, 1], ``bias_terms``
    (T, N)."""
    anatomy = mni_anatomy(size)
    spacing, origin = anatomy.affine[0, 0], anatomy.affine[:3, 3]
    inside = np.nonzero(anatomy.brain)
    index = np.stack(inside).astype(np.float64)  # (3, N)
    mm = origin[:, None] + spacing * index
    to_source = np.linalg.inv(_source(size)[1])
    centre_mm = np.asarray(VENTRICLE_CENTRE_MM)[:, None]
    centre = to_source[:3, :3] @ centre_mm + to_source[:3, 3:]
    rel = to_source[:3, :3] @ (mm - centre_mm)
    gauss = np.exp(-((mm - centre_mm) ** 2).sum(0) / (2 * VENTRICLE_SIGMA_MM**2))
    semi = np.asarray(HIPPOCAMPUS_SEMI_AXES_MM)[:, None]
    radius = np.min(
        [np.sqrt((((mm - np.asarray(c)[:, None]) / semi) ** 2).sum(0)) for c in HIPPOCAMPUS_CENTRES_MM], 0
    )
    t = ((1.0 + HIPPOCAMPUS_EDGE - radius) / (2 * HIPPOCAMPUS_EDGE)).clip(0.0, 1.0)
    hippocampus = t * t * (3 - 2 * t)  # smoothstep: 0 beyond 1 + edge, 1 inside 1 - edge
    arrays = {
        "centre": centre,
        "rel": rel,
        "gauss": gauss,
        "hippocampus": hippocampus.astype(np.float32),
        "bias_terms": bias_terms(inside, size, np.float64).astype(np.float32),
    }
    for array in arrays.values():
        array.setflags(write=False)
    return {"inside": inside, **arrays}


def _ratio(ratios: Mapping[str, float], name: str) -> float:
    try:
        value = float(ratios[name])
    except KeyError:
        raise KeyError(
            f"ratios lacks {name!r}: give {', '.join(T1_VOLUMES)}, each relative to the template's (1: unchanged)"
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"ratios[{name!r}] must be a finite ratio > 0 (1: the template's volume); got {value!r}"
        )
    return value


def _exchange(gm: np.ndarray, csf: np.ndarray, factor) -> tuple[np.ndarray, np.ndarray]:
    """GM times ``factor`` (scalar or per voxel); lost GM becomes CSF, a gain comes from CSF only."""
    change = np.minimum(gm * (factor - 1.0), csf)
    return gm + change, csf - change


def render_t1(ratios: Mapping[str, float], size: int = 32, rng=None) -> np.ndarray:
    """float32 (S, S, S) T1-weighted volume on the phantom grid phantom_affine(size) (MNI152 space, RAS, as if
    affinely registered and skull-stripped), exactly 0 outside the brain. ratios: Hippocampus, Ventricles,
    WholeBrain, each relative to the volume the template stands for (1: unchanged; e.g. a row's volume / ICV
    over ``cohort.T1_REFERENCE``). rng: Generator/seed/None for noise and bias."""
    size = check_size(size)
    r_v = float(np.clip(_ratio(ratios, "Ventricles"), *VENTRICLE_RATIO))
    r_w = _ratio(ratios, "WholeBrain")
    h = float(np.clip(1.0 - HIPPOCAMPUS_GAIN * (1.0 - _ratio(ratios, "Hippocampus")), *HIPPOCAMPUS_RANGE))
    rng = np.random.default_rng(rng)
    grid = _grid(size)

    k = 1.0 - r_v ** (-VENTRICLE_EXPONENT)
    where = grid["centre"] + grid["rel"] * (1.0 - k * grid["gauss"])
    csf, gm, wm = (ndi.map_coordinates(t, where, order=1).clip(0.0, 1.0) for t in _source(size)[0])

    g = float(np.clip(1.0 - WHOLE_BRAIN_GAIN * (1.0 - r_w), *WHOLE_BRAIN_RANGE))
    gm, csf = _exchange(gm, csf, g)
    gm, csf = _exchange(gm, csf, 1.0 + grid["hippocampus"] * np.float32(h - 1.0))

    signal = CONTRAST[0] * csf + CONTRAST[1] * gm + CONTRAST[2] * wm
    coefficients = rng.uniform(-BIAS_COEFFICIENT, BIAS_COEFFICIENT, len(BIAS_TERMS)).astype(np.float32)
    signal *= bias_field(coefficients, grid["bias_terms"])
    noise = NOISE_SIGMA * rng.standard_normal((2, signal.size), np.float32)
    volume = np.zeros((size,) * 3, np.float32)
    volume[grid["inside"]] = np.hypot(signal + noise[0], noise[1])  # Rician
    return volume


def save_t1(volume: np.ndarray, path) -> Path:
    """Write ``volume`` (S, S, S) as NIfTI with phantom_affine(S), sform/qform code 4 (MNI152), units mm;
    creates the parent folder; returns the path."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must be a cube (S, S, S); got shape {volume.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(volume, phantom_affine(volume.shape[0]), path)
    return path
