"""Synthetic BraTS-like phantoms: MNI152 anatomy, a random glioma, FLAIR/T1/T1ce/T2 (card ``brats_phantoms``).

Conventions
- A phantom is a cube of side ``size`` voxels (32..128) on the grid of :mod:`mckd_lab.data.anatomy`: indexed
  (x, y, z) in RAS order as nibabel returns it, spanning the card's ``fov_mm`` (192 mm) of MNI152 space around
  ``centre_mm``; ``phantom_affine(size)`` maps voxel indices to MNI152 millimetres. (The BraTS loader reads
  the written files as (D, H, W) = (z, x, y): ``mckd_lab.data.brats.AXES``.)
- ``image``: float32 (M, S, S, S), modalities in card order (flair, t1, t1ce, t2), in units of each sequence's
  normal white matter (before bias and noise), exactly 0 outside the brain.
- ``label``: uint8 (S, S, S) in the card convention: 0 background, 1 necrosis / non-enhancing core, 2 oedema,
  4 enhancing tumour.
- Random and deterministic parts are separate (as in TorchIO): ``sample_phantom_params(rng)`` draws every
  random choice into a plain ``PhantomParams`` record (millimetres, independent of the size);
  ``render_phantom(params, size)`` draws the volume from it, its texture and noise from the recorded seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from mckd_lab.data.anatomy import (
    BIAS_TERMS,
    CARD,  # the phantoms' card also defines their grid
    bias_field,
    bias_terms,
    check_size,
    mni152_1mm,
    mni_anatomy,
    save_nifti,
)
from mckd_lab.data.anatomy import (
    phantom_affine as phantom_affine,  # re-exported: imported from here elsewhere
)
from mckd_lab.data.cards import load_card

TISSUES = ("csf", "gm", "wm", "oedema", "necrosis", "enhancing", "non_enhancing")
# Random texture of the tumour (boundaries, signal): a 13^3 grid of normal values 12 mm apart, cubic spline.
_GRID_STEP_MM, _GRID_POINTS = 12.0, 13
_HETEROGENEITY = 0.08  # log-amplitude of the smooth signal variation inside the tumour


@dataclass(frozen=True)
class PhantomParams:
    """Every random choice of one phantom; plain floats and tuples (JSON-ready), millimetres in MNI152 space.

    ``lobes``: per ellipsoid of the tumour core, (offset x, y, z, semi-axis x, y, z) in the tumour frame,
    rotated by the Euler angles ``angles`` (radians, "xyz"). The core is where the union of lobes, roughened
    by ``irregularity``, has field < 1; necrosis where it is < ``necrosis`` (cases with enhancement only);
    oedema reaches ``oedema`` times as far. ``contrast`` (M, 7) multiplies the card's table (tissue order
    ``TISSUES``); ``bias`` (M, 9): log bias field coefficients of ``anatomy.BIAS_TERMS``; ``noise``: the Rician
    sigma relative to white matter. ``shape_seed`` and ``noise_seed`` seed the tumour texture and the noise.
    """

    enhancing: bool
    centre_mm: tuple[float, float, float]
    lobes: tuple[tuple[float, ...], ...]
    angles: tuple[float, float, float]
    irregularity: float
    necrosis: float
    oedema: float
    mass_effect_mm: float
    contrast: tuple[tuple[float, ...], ...]
    bias: tuple[tuple[float, ...], ...]
    noise: float
    shape_seed: int
    noise_seed: int

    @property
    def grade(self) -> str:
        """``HGG`` with an enhancing tumour, ``LGG`` without (the BraTS 2018 subfolder it is written to)."""
        return "HGG" if self.enhancing else "LGG"

    @classmethod
    def from_dict(cls, record: dict) -> PhantomParams:
        """Rebuild from ``dataclasses.asdict`` output or its JSON (lists become tuples)."""

        def frozen(value):
            return tuple(frozen(v) for v in value) if isinstance(value, list | tuple) else value

        return cls(**{key: frozen(value) for key, value in record.items()})


@dataclass(frozen=True)
class Phantom:
    """A rendered phantom: ``image`` float32 (M, S, S, S), ``label`` uint8 (S, S, S), ``affine`` (4, 4)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    params: PhantomParams


@functools.lru_cache(maxsize=1)
def contrast_table() -> np.ndarray:
    """The card's contrast table as float64 (M, 7): modalities in card order, tissues in ``TISSUES`` order."""
    card = load_card(CARD)
    table = card.header.get("contrast", {})
    for name in card.modality_names:
        lacking = [t for t in TISSUES if t not in table.get(name, {})]
        if lacking:
            raise ValueError(f"{card.path}: header 'contrast.{name}' lacks {', '.join(lacking)}; add them")
    return np.array([[table[name][t] for t in TISSUES] for name in card.modality_names], dtype=float)


def redundant_table(table: np.ndarray, redundancy: float) -> np.ndarray:
    """The contrast table (M, 7) with each tumour tissue made ``redundancy`` of the way as visible on every
    sequence as on its dominant one (the card's ``dominant``), against the tissue it stands out from
    (``surround``): with delta_m = c(m, t) - c(m, s), every sequence m gets
    ``c'(m, t) = c'(m, s) + (1 - R) delta_m + R delta_dominant``. R = 0 is the card's table (each region
    visible where it is in real scans); R = 1 shows every region on every sequence as well as on its best one.
    Surrounds are adjusted before the tissues inside them (oedema before the core)."""
    if not 0.0 <= redundancy <= 1.0:
        raise ValueError(
            f"redundancy must be in [0, 1] (0: the card's contrasts, 1: every region everywhere), got {redundancy}"
        )
    if redundancy == 0:
        return table  # exactly the card's (jittered) table: (s + (t - s)) may round differently from t
    card = load_card(CARD)
    modalities = card.modality_names
    out = table.copy()
    for tissue, spec in card.header["dominant"].items():
        t, s, d = TISSUES.index(tissue), TISSUES.index(spec["surround"]), modalities.index(spec["sequence"])
        delta = table[:, t] - table[:, s]
        out[:, t] = out[:, s] + (1 - redundancy) * delta + redundancy * delta[d]
    return out


@functools.lru_cache(maxsize=1)
def _centre_candidates() -> np.ndarray:
    """(N, 3) MNI mm points where a tumour centre may be drawn: deep supratentorial white matter."""
    maps, affine_1mm = mni152_1mm()
    step = 4
    wm, brain = maps[2, ::step, ::step, ::step], maps[3, ::step, ::step, ::step] > 0.5
    depth = ndi.distance_transform_edt(brain, sampling=step)
    points = nib.affines.apply_affine(affine_1mm, np.argwhere((wm >= 0.6) & (depth >= 25)) * step)
    x, z = points[:, 0], points[:, 2]
    return points[(np.abs(x) >= 20) & (np.abs(x) <= 55) & (z > -10) & (z < 50)]


def sample_phantom_params(rng=None, enhancing: bool | None = None) -> PhantomParams:
    """Draw one phantom's parameters. ``rng``: a numpy Generator, a seed or None. ``enhancing`` forces an
    HGG-like (True) or LGG-like (False) case; by default it is False with the card's ``no_enhancement_share``.
    The same draws are made either way, so forcing it changes nothing else."""
    rng = np.random.default_rng(rng)
    no_enhancement = rng.random() < load_card(CARD).header["no_enhancement_share"]
    candidates = _centre_candidates()
    hemisphere = candidates[np.sign(candidates[:, 0]) == rng.choice([-1.0, 1.0])]
    centre = hemisphere[rng.integers(len(hemisphere))] + rng.uniform(-2.0, 2.0, 3)
    main_lobe = [0.0, 0.0, 0.0, *rng.uniform(12.0, 22.0, 3)]
    extra_lobes = [[*rng.normal(0.0, 6.0, 3), *rng.uniform(6.0, 14.0, 3)] for _ in range(rng.integers(0, 3))]
    modalities = len(contrast_table())
    return PhantomParams(
        enhancing=not no_enhancement if enhancing is None else bool(enhancing),
        centre_mm=_plain(centre),
        lobes=_plain([main_lobe, *extra_lobes]),
        angles=_plain(rng.uniform(-np.pi, np.pi, 3)),
        irregularity=float(rng.uniform(0.1, 0.25)),
        necrosis=float(rng.uniform(0.55, 0.85)),
        oedema=float(rng.uniform(1.5, 2.3)),
        mass_effect_mm=float(rng.uniform(0.0, 6.0)) if rng.random() < 0.7 else 0.0,
        contrast=_plain(np.exp(rng.normal(0.0, 0.03, (modalities, len(TISSUES))))),
        bias=_plain(rng.uniform(-0.15, 0.15, (modalities, len(BIAS_TERMS)))),
        noise=float(rng.uniform(0.02, 0.05)),
        shape_seed=int(rng.integers(2**63)),
        noise_seed=int(rng.integers(2**63)),
    )


def _plain(array):
    """numpy array -> nested tuples of Python floats (a JSON-ready, hashable parameter value)."""
    return tuple(_plain(a) for a in array) if np.ndim(array) else float(array)


def render_phantom(params: PhantomParams, size: int = 64, redundancy: float = 0.0) -> Phantom:
    """Draw the phantom described by ``params`` on a cube of ``size`` voxels; deterministic (same bytes for
    the same params, size and redundancy). Steps: anatomy (+ mass effect), tumour, contrast table (made
    ``redundancy`` redundant: ``redundant_table``), bias field, noise."""
    anatomy = mni_anatomy(check_size(size))
    spacing, origin = anatomy.affine[0, 0], anatomy.affine[:3, 3]
    centre = np.asarray(params.centre_mm)
    lobes = np.asarray(params.lobes)
    # the box holds all oedema (texture is clipped to +-2) and the mass effect (negligible beyond 3 s)
    reach = np.max(np.linalg.norm(lobes[:, :3], axis=1) + lobes[:, 3:].max(1))
    half = max(params.oedema * np.exp(2 * params.irregularity) * reach, 3 * _mass_effect_scale(params))
    box = _box(centre, half, anatomy.affine, size)
    axes = [origin[d] + spacing * np.arange(box[d].start, box[d].stop) - centre[d] for d in range(3)]
    rel = np.stack(np.meshgrid(*axes, indexing="ij"))  # (3, bx, by, bz): mm from the tumour centre

    tissue, brain = anatomy.tissue, anatomy.brain
    if params.mass_effect_mm > 0:
        tissue, brain = tissue.copy(), brain.copy()
        tissue[(slice(None), *box)] = _push_away(anatomy.tissue, rel, centre, params, origin, spacing)
        brain[box] = tissue[(slice(None), *box)].sum(0) >= 0.5

    label = np.zeros((size,) * 3, np.uint8)
    label[box], texture = _tumour(params, rel, axes, tissue[(slice(None), *box)], brain[box])
    image = _contrast(params, tissue, label, redundancy)
    image[(slice(None), *box)] *= np.where(label[box] > 0, texture, 1.0)  # real tumours are not uniform

    inside = np.nonzero(brain)
    bias = bias_field(np.asarray(params.bias, np.float32), bias_terms(inside, size))  # float32 (M, N)
    signal = image[(slice(None), *inside)] * bias
    noise = params.noise * np.random.default_rng(params.noise_seed).standard_normal(
        (2, *signal.shape), np.float32
    )
    image = np.zeros_like(image)  # skull-stripped: exactly 0 outside the brain
    image[(slice(None), *inside)] = np.hypot(signal + noise[0], noise[1])  # Rician
    return Phantom(image=image, label=label, affine=anatomy.affine, params=params)


def _box(centre: np.ndarray, half_mm: float, affine: np.ndarray, size: int) -> tuple[slice, slice, slice]:
    """Voxel slices of the cube within ``half_mm`` of ``centre`` (the only place the tumour can change)."""
    low = np.floor((centre - half_mm - affine[:3, 3]) / affine[0, 0]).astype(int).clip(0, size)
    high = (np.ceil((centre + half_mm - affine[:3, 3]) / affine[0, 0]).astype(int) + 1).clip(0, size)
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


def _push_away(tissue, rel, centre, params, origin, spacing) -> np.ndarray:
    """Tissue fractions (3, *box) after a radial displacement away from the tumour centre (mass effect).

    u(r) = m (r / s) exp(1/2 - r^2 / 2 s^2): 0 at the centre, peak m at r = s (the main lobe's mean
    semi-axis), below 0.06 m beyond 3 s; invertible since m < 0.6 s."""
    s = _mass_effect_scale(params)
    r2 = (rel**2).sum(0)
    u = params.mass_effect_mm / s * rel * np.exp(0.5 - r2 / (2 * s * s))
    source = (rel - u + (centre - origin)[:, None, None, None]) / spacing  # voxel index sampled at each voxel
    return np.stack([ndi.map_coordinates(t, source, order=1) for t in tissue])


def _mass_effect_scale(params: PhantomParams) -> float:
    return float(np.mean(params.lobes[0][3:]))


def _tumour(
    params: PhantomParams, rel: np.ndarray, axes: list[np.ndarray], tissue: np.ndarray, brain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The tumour in the box: uint8 labels (*box) and a float32 signal texture (*box) around 1.

    rel: (3, *box) mm from the tumour centre, the product of the three 1D ``axes``; tissue: (3, *box) CSF, GM,
    WM fractions; brain: bool (*box)."""
    lobes = np.asarray(params.lobes)
    local = np.einsum("ji,j...->i...", Rotation.from_euler("xyz", params.angles).as_matrix(), rel)
    shift, semi = lobes[:, :3, None, None, None], lobes[:, 3:, None, None, None]
    # field: 1 on the surface of the union of lobes, < 1 inside, growing with distance outside
    field = np.sqrt((((local[None] - shift) / semi) ** 2).sum(1)).min(0)
    grid = np.random.default_rng(params.shape_seed).standard_normal((3,) + (_GRID_POINTS,) * 3)
    texture = np.clip(
        _spline_on_grid(grid, [a / _GRID_STEP_MM + (_GRID_POINTS - 1) / 2 for a in axes]), -2, 2
    )
    core = field * np.exp(params.irregularity * texture[0])
    oedema = field * np.exp(params.irregularity * texture[1]) / params.oedema

    csf, _, wm = tissue
    hemisphere = np.sign(rel[0] + params.centre_mm[0]) == np.sign(params.centre_mm[0])
    allowed = brain & hemisphere
    label = np.zeros(field.shape, np.uint8)
    # oedema spreads along white matter and spares CSF; only close to the core does it reach the cortex
    label[(oedema < 1) & allowed & (csf < 0.5) & ((wm >= 0.3) | (oedema < 0.75))] = 2
    label[(core < 1) & allowed] = 4 if params.enhancing else 1
    if params.enhancing:
        label[(core < params.necrosis) & allowed] = 1
    return label, np.exp(_HETEROGENEITY * texture[2]).astype(np.float32)


def _spline_on_grid(grid: np.ndarray, where: list[np.ndarray]) -> np.ndarray:
    """Cubic-spline values of fields (N, G, G, G) at the product of three 1D grid-index arrays: (N, a, b, c).

    The tensor-product spline is separable: one (len, G) weight matrix per axis, then a contraction, which is
    exactly ``ndi.map_coordinates(order=3, mode="nearest")`` at a fraction of its cost."""
    unit = np.eye(grid.shape[1])
    weights = [
        np.stack([ndi.map_coordinates(e, w[None], order=3, mode="nearest") for e in unit], 1) for w in where
    ]
    return np.einsum("ai,bj,ck,nijk->nabc", *weights, grid, optimize=True)


def _contrast(params: PhantomParams, tissue: np.ndarray, label: np.ndarray, redundancy: float) -> np.ndarray:
    """float32 (M, S, S, S): partial-volume mix of CSF/GM/WM, tumour tissue by label; the jittered table."""
    table = (redundant_table(contrast_table() * np.asarray(params.contrast), redundancy)).astype(np.float32)
    image = np.einsum("mt,t...->m...", table[:, :3], tissue)
    tumour_tissue = {2: "oedema", 1: "necrosis" if params.enhancing else "non_enhancing", 4: "enhancing"}
    for value, name in tumour_tissue.items():
        image[:, label == value] = table[:, TISSUES.index(name), None]
    return image


def make_phantom(size: int = 64, rng=None, enhancing: bool | None = None, redundancy: float = 0.0) -> Phantom:
    """One random phantom: parameters drawn with ``rng`` (Generator, seed or None), rendered at ``size``."""
    return render_phantom(sample_phantom_params(rng, enhancing=enhancing), size, redundancy)


def region_contrast(image: np.ndarray, label: np.ndarray, shell: int = 2) -> dict[str, dict[str, float]]:
    """How visible each region is on each sequence: {region: {modality: d}}, both in card order.

    d = (mean inside - mean around) / sqrt((var inside + var around) / 2). "Around": the voxels within
    ``shell`` voxels of the region, outside it, that a segmenter must tell it from: for the whole tumour the
    brain around it; for a tumour sub-region (ET, TC) the other tumour tissue around it (for ET: the necrosis
    inside the rim and the oedema outside it). NaN when either set is empty; 0 or +-inf when both are
    constant.
    image: (M, D, H, W), 0 outside the brain; label: (D, H, W) in the card convention."""
    card = load_card(CARD)
    tumour_labels = set(card.labels) - {0}
    brain, tumour = image.any(axis=0), label > 0
    result = {}
    for region in card.regions:
        inside = np.isin(label, region.labels)
        context = brain if set(region.labels) == tumour_labels else tumour
        around = ndi.binary_dilation(inside, iterations=shell) & ~inside & context
        result[region.name] = {
            name: _effect_size(image[m], inside, around) for m, name in enumerate(card.modality_names)
        }
    return result


def _effect_size(values: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    if not a.any() or not b.any():
        return float("nan")
    x, y = values[a].astype(np.float64), values[b].astype(np.float64)
    difference, spread = x.mean() - y.mean(), np.sqrt((x.var() + y.var()) / 2)
    return (
        float(difference / spread)
        if spread > 0
        else float(np.sign(difference) * np.inf if difference else 0.0)
    )


def generate_phantoms(
    out_dir, cases: int = 10, size: int = 64, seed: int = 0, redundancy: float = 0.0
) -> Path:
    """Write ``cases`` phantoms in the BraTS 2018 layout under ``out_dir`` and return it as a Path.

    ``out_dir/HGG/Brats18_SYN_<n>_1/Brats18_SYN_<n>_1_{flair,t1,t1ce,t2,seg}.nii.gz`` (LGG/ for cases
    without enhancement; patterns from the brats card's ``layouts.brats2018``); images int16 (relative
    intensity times the card's ``write_scale``), seg uint8, affine to MNI152 mm (sform/qform code 4).
    ``phantoms.json`` records each case's parameters (``PhantomParams.from_dict`` replays them) and the
    ``redundancy`` of the contrasts (``redundant_table``; 0: the card's).
    Case n depends only on (seed, n), not on ``cases``. Refuses a folder that already has HGG/ or LGG/."""
    size = check_size(size)
    if isinstance(cases, bool) or not isinstance(cases, int | np.integer) or cases < 1:
        raise ValueError(f"cases must be a whole number >= 1; got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0; got {seed!r}")
    card = load_card(CARD)
    layout = load_card("brats").header["layouts"][card.header["layout"]]
    out = Path(out_dir)
    taken = [str(out / sub) for sub in layout["subfolders"] if (out / sub).exists()]
    if taken:
        raise FileExistsError(
            f"{', '.join(taken)} already exist(s): write phantoms to a new or empty folder, or delete it"
        )
    records = {}
    for n, child in enumerate(np.random.SeedSequence(seed).spawn(cases), start=1):
        phantom = make_phantom(size, np.random.default_rng(child), redundancy=redundancy)
        case = f"{card.header['case_prefix']}_{n:03d}_1"
        case_dir = out / phantom.params.grade / case
        case_dir.mkdir(parents=True)
        scaled = np.rint(phantom.image * card.header["write_scale"]).clip(0, np.iinfo(np.int16).max)
        for m, name in enumerate(card.modality_names):
            save_nifti(
                scaled[m].astype(np.int16),
                phantom.affine,
                case_dir / f"{layout['files'][name].format(case=case)}.nii.gz",
            )
        save_nifti(
            phantom.label, phantom.affine, case_dir / f"{layout['files']['seg'].format(case=case)}.nii.gz"
        )
        records[case] = dataclasses.asdict(phantom.params)
    manifest = {"generator": __name__, "card": CARD, "seed": int(seed), "size": size,
                "redundancy": float(redundancy), "cases": records}  # fmt: skip
    (out / "phantoms.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out
