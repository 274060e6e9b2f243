"""The BraTS loader: find cases in any released layout, read them, normalise them, write predictions back.

Everything dataset-specific (modality names and order, file patterns per layout, label values, regions, the
intensity rule) comes from ``data_cards/brats.md``.

Array conventions (the reference code's): a NIfTI volume stored with voxel axes (i, j, k) is read as
(D, H, W) = (k, i, j), so D is the axial slice axis (155 in BraTS) and the paper's 80x160x160 (D, H, W) crops
fit. Case arrays are cropped to the brain's bounding box; :class:`Geometry` keeps what is needed to write a
prediction back onto the original grid. Reading never modifies anything on disk.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from mckd_lab.data.cards import Card, load_card

AXES = (2, 0, 1)  # NIfTI (i, j, k) -> (D, H, W)
INVERSE_AXES = tuple(int(a) for a in np.argsort(AXES))  # (D, H, W) -> NIfTI (i, j, k)


class BratsError(ValueError):
    """A BraTS folder, case or file that cannot be read as it is; the message says which and what to do."""


class MissingModalityWarning(UserWarning):
    """A case is missing a modality file: it is kept with that modality marked not present."""


@dataclass(frozen=True)
class Geometry:
    """Where a case's arrays sit on the original image grid.

    ``affine`` (4, 4) and ``shape``/``spacing`` (mm) are those of the input NIfTI, in its stored (i, j, k)
    order. ``crop`` is the brain bounding box as ((start, stop), ...) over the (D, H, W) axes of the full
    transposed volume: ``case.image[m] == full_volume[D0:D1, H0:H1, W0:W1]``. ``codes`` are the input's
    NIfTI (qform, sform) codes (1 scanner, 2 aligned, 4 MNI152), kept so a written prediction says the same.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    crop: tuple[tuple[int, int], ...]
    codes: tuple[int, int] = (1, 1)

    @property
    def full_shape(self) -> tuple[int, ...]:
        """The uncropped shape in (D, H, W) order."""
        return tuple(self.shape[a] for a in AXES)

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.crop)

    def uncrop(self, array: np.ndarray, fill: int | float = 0) -> np.ndarray:
        """A (D, H, W) array of the crop's shape (or the full shape) put back on the NIfTI grid (i, j, k)."""
        array = np.asarray(array)
        if array.shape == self.crop_shape:
            full = np.full(self.full_shape, fill, dtype=array.dtype)
            full[tuple(slice(start, stop) for start, stop in self.crop)] = array
            array = full
        elif array.shape != self.full_shape:
            raise BratsError(
                f"array of shape {array.shape} matches neither the case's crop {self.crop_shape} nor its "
                f"full volume {self.full_shape} (both (D, H, W)); pass a prediction made for this case"
            )
        return array.transpose(INVERSE_AXES)


@dataclass
class Case:
    """One BraTS case, read and normalised.

    - ``image``: float32 (M, D, H, W), modalities in card order, each z-scored over its brain voxels;
      a missing modality is all zeros.
    - ``present``: bool (M,), which modality files exist.
    - ``label``: uint8 (D, H, W) in the card convention (0, 1, 2, 4), or None when the case has no seg file.
    - ``target``: float32 (3, D, H, W), the card's regions in order ET, WT, TC, or None without labels.
    - ``files``: the files read, by modality name and ``seg``.
    """

    case_id: str
    image: np.ndarray
    present: np.ndarray
    label: np.ndarray | None
    target: np.ndarray | None
    geometry: Geometry
    layout: str
    files: dict[str, Path] = field(default_factory=dict)


def _layouts(card: Card) -> dict[str, dict]:
    return card.header["layouts"]


def _listing(folder: Path, limit: int = 12) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not entries:
        return "nothing (the folder is empty)"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def scan_folder(root: str | Path, card: Card | None = None) -> tuple[str, list[Path]]:
    """Find the layout of a BraTS folder and its case folders, sorted by case id.

    Layouts are tried in the card's order; case folders are looked for in ``root`` and in the layout's
    subfolders (``HGG/``, ``LGG/`` for 2018/2019). ``root`` may also be one case folder.
    """
    card = card or load_card("brats")
    root = Path(root)
    if not root.is_dir():
        raise BratsError(f"{root}: no such folder; name the folder that holds the BraTS case folders")
    for name, layout in _layouts(card).items():
        pattern = re.compile(layout["case_regex"])
        if pattern.match(root.name):
            return name, [root]
        places = [root] + [root / sub for sub in layout.get("subfolders", [])]
        cases = [d for p in places if p.is_dir() for d in p.iterdir() if d.is_dir() and pattern.match(d.name)]
        if cases:
            return name, sorted(cases, key=lambda d: d.name)
    expected = "; ".join(f"{n}: {lay['case_regex']}" for n, lay in _layouts(card).items())
    raise BratsError(
        f"{root}: no BraTS case folders found. It contains {_listing(root)}. Expected case folders (directly "
        f"or under HGG/ and LGG/) named like {expected}. Point at the folder that holds the case folders."
    )


def layout_of(case_dir: str | Path, card: Card | None = None) -> str:
    """The layout whose case-folder pattern matches this folder's name."""
    card = card or load_card("brats")
    name = Path(case_dir).name
    for layout_name, layout in _layouts(card).items():
        if re.match(layout["case_regex"], name):
            return layout_name
    raise BratsError(
        f"{case_dir}: folder name {name!r} matches no BraTS layout in the card; keep the case ids"
    )


def case_files(case_dir: Path, layout: dict, card: Card) -> dict[str, Path]:
    """The files of a case that exist, by modality name and ``seg``; the first matching extension wins."""
    found = {}
    for key, stem in layout["files"].items():
        for ext in card.header["extensions"]:
            path = case_dir / (stem.format(case=case_dir.name) + ext)
            if path.is_file():
                found[key] = path
                break
    return found


def _read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a 3-D NIfTI volume with its raw dtype, turning any failure into a message about the file."""
    try:
        img = nib.load(path, mmap=False)
        data = np.asanyarray(img.dataobj)
    except (
        Exception
    ) as err:  # nibabel raises many types for broken files (EOFError, ValueError, zlib.error...)
        raise BratsError(
            f"{path}: cannot read this NIfTI ({type(err).__name__}: {err}). The file is truncated or "
            f"corrupt: extract or download it again"
        ) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BratsError(f"{path}: expected a 3-D volume, found shape {data.shape}")
    return data, img


def _check_finite(data: np.ndarray, path: Path) -> None:
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise BratsError(
                f"{path}: {int(bad.sum())} voxels are NaN or infinite (first at voxel {first}); "
                f"fix or re-export this file (e.g. set those voxels to 0) before loading"
            )


def _check_same_grid(path: Path, img: nib.Nifti1Image, shape: tuple, ref_path: Path, ref: nib.Nifti1Image):
    if shape != ref.shape[:3]:
        raise BratsError(
            f"{path}: shape {shape} differs from {ref_path.name} {ref.shape[:3]}; all files of a case must "
            f"be co-registered on one grid (resample them to the same image first)"
        )
    if not np.allclose(img.affine, ref.affine, atol=1e-3):
        raise BratsError(
            f"{path}: affine differs from {ref_path.name}'s:\n{img.affine}\nvs\n{ref.affine}\n"
            f"all files of a case must share one grid (resample or fix the header)"
        )


def raw_label_values(layout: dict, card: Card) -> set[int]:
    """The label values a layout's seg files may hold: the card's values seen through the layout's map."""
    inverse = {int(v): int(k) for k, v in layout.get("label_map", {}).items()}
    return {inverse.get(int(v), int(v)) for v in card.labels}


def remap_labels(label: np.ndarray, mapping: dict) -> np.ndarray:
    """Relabel ``label`` by ``{old: new}`` (all at once, so chains such as {3: 4, 4: 3} swap), as uint8."""
    out = label.astype(np.uint8, copy=True)
    for old, new in mapping.items():
        out[label == int(old)] = int(new)
    return out


def _seg_to_card(data: np.ndarray, path: Path, layout_name: str, layout: dict, card: Card) -> np.ndarray:
    """Check a seg volume's values against the layout's set and remap them to the card convention."""
    _check_finite(data, path)
    values = np.unique(data)
    allowed = raw_label_values(layout, card)
    wrong = [v for v in values.tolist() if v not in allowed]
    if wrong:
        counts = {v: int((data == v).sum()) for v in wrong[:5]}
        raise BratsError(
            f"{path}: label values {wrong} (voxel counts {counts}) are not labels of layout {layout_name}, "
            f"whose values are {sorted(allowed)}; check that this seg file belongs to this release"
        )
    return remap_labels(data, layout.get("label_map", {}))


def normalise_intensity(volume: np.ndarray, clip_upper_percentile: float = 99.5, background: float = 0.0):
    """METHOD.md's intensity rule for one modality of one case (float32, any shape).

    Non-background voxels are those != 0 (BraTS is skull-stripped with a zero background): clip them at their
    ``clip_upper_percentile`` percentile, z-score them (their mean 0, std 1); background voxels get
    ``background``. An all-zero volume stays all ``background``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    out = np.full(volume.shape, background, dtype=np.float32)
    brain = volume != 0
    if brain.any():
        values = np.minimum(volume[brain], np.percentile(volume[brain], clip_upper_percentile))
        std = values.std()
        out[brain] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out


def label_to_regions(label: np.ndarray, card: Card | None = None) -> np.ndarray:
    """A (..., D, H, W) label map in the card convention -> float32 (3, ..., D, H, W) regions ET, WT, TC.

    Region r is 1 where the label is one of the card's ``regions[r].labels`` (ET: 4; WT: 1, 2, 4; TC: 1, 4).
    """
    card = card or load_card("brats")
    label = np.asarray(label)
    return np.stack([np.isin(label, region.labels) for region in card.regions]).astype(np.float32)


def _bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    if not mask.any():
        return tuple((0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def load_case(case_dir: str | Path, layout: str | None = None, card: Card | None = None) -> Case:
    """Read one case folder: checked, cropped to the brain, normalised, labels in the card convention.

    Raises :class:`BratsError` for unreadable files, NaN/inf voxels, files on different grids and label values
    outside the layout's set. A missing modality file gives zeros, ``present=False`` and a
    :class:`MissingModalityWarning`; a case with no modality file at all is an error.
    """
    card = card or load_card("brats")
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise BratsError(f"{case_dir}: no such case folder; name a folder such as BraTS2021_00000/")
    layout = layout or layout_of(case_dir, card)
    spec = _layouts(card)[layout]
    files = case_files(case_dir, spec, card)
    names = card.modality_names
    present = np.array([m in files for m in names])
    if not present.any():
        expected = ", ".join(spec["files"][m].format(case=case_dir.name) + ".nii.gz" for m in names)
        raise BratsError(
            f"{case_dir}: no modality file found (expected {expected}, or .nii). "
            f"It contains {_listing(case_dir)}."
        )
    if not present.all():
        missing = [m for m, p in zip(names, present, strict=True) if not p]
        warnings.warn(
            f"case {case_dir.name}: no file for {', '.join(missing)}; kept with "
            f"{'that modality' if len(missing) == 1 else 'those modalities'} marked not present",
            MissingModalityWarning,
            stacklevel=2,
        )

    volumes, ref = {}, None
    for name in names:
        if name in files:
            data, img = _read(files[name])
            _check_finite(data, files[name])
            ref = ref or (files[name], img)
            _check_same_grid(files[name], img, data.shape, *ref)
            volumes[name] = data.astype(np.float32).transpose(AXES)
    label = None
    if "seg" in files:
        data, seg_img = _read(files["seg"])
        _check_same_grid(files["seg"], seg_img, data.shape, *ref)
        label = _seg_to_card(data, files["seg"], layout, spec, card).transpose(AXES)

    ref_img = ref[1]
    foreground = np.any([v != 0 for v in volumes.values()], axis=0)
    if label is not None:
        foreground |= label > 0
    crop = _bounding_box(foreground)
    box = tuple(slice(start, stop) for start, stop in crop)

    intensity = card.header.get("intensity", {})
    image = np.zeros((len(names), *(s.stop - s.start for s in box)), dtype=np.float32)
    for m, name in enumerate(names):
        if name in volumes:
            image[m] = normalise_intensity(
                volumes[name][box],
                intensity.get("clip_upper_percentile", 99.5),
                intensity.get("background", 0.0),
            )
    label = None if label is None else np.ascontiguousarray(label[box])
    geometry = Geometry(
        affine=np.asarray(ref_img.affine, dtype=np.float64),
        shape=tuple(int(s) for s in ref_img.shape[:3]),
        spacing=tuple(round(float(z), 6) for z in ref_img.header.get_zooms()[:3]),
        crop=crop,
        codes=(int(ref_img.header["qform_code"]), int(ref_img.header["sform_code"])),
    )
    return Case(
        case_id=case_dir.name,
        image=image,
        present=present,
        label=label,
        target=None if label is None else label_to_regions(label, card),
        geometry=geometry,
        layout=layout,
        files=files,
    )


def write_segmentation(labels: np.ndarray, case: Case, path: str | Path, card: Card | None = None) -> Path:
    """Write a (D, H, W) label map in the card convention as a NIfTI aligned with the case's input files.

    ``labels`` has the case's crop shape (as ``case.label``) or its full (D, H, W) shape. The file gets the
    input's original shape and affine and the layout's label convention (BraTS2023: ET written as 3), uint8.
    """
    card = card or load_card("brats")
    path = Path(path)
    if any(path.resolve() == f.resolve() for f in case.files.values()):
        raise BratsError(
            f"{path}: is one of case {case.case_id}'s input files; write the prediction elsewhere"
        )
    labels = np.asarray(labels)
    wrong = sorted(set(np.unique(labels).tolist()) - {int(v) for v in card.labels})
    if wrong:
        raise BratsError(
            f"case {case.case_id}: label values {wrong} are not in the card convention "
            f"{sorted(card.labels)}; convert region channels to labels first"
        )
    spec = _layouts(card)[case.layout]
    inverse = {int(v): int(k) for k, v in spec.get("label_map", {}).items()}
    full = case.geometry.uncrop(remap_labels(labels, inverse))
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.ascontiguousarray(full), case.geometry.affine)
    image.set_qform(case.geometry.affine, case.geometry.codes[0])
    image.set_sform(case.geometry.affine, case.geometry.codes[1])
    nib.save(image, path)
    return path


def inspect_folder(path: str | Path, card: Card | None = None) -> dict:
    """Summarise a BraTS folder (reading every case fully, so every bad input is reported).

    Returns ``{"root", "layout", "modalities", "cases": [{"id", "present", "shape", "spacing", "labels"}]}``:
    ``present`` lists canonical modality names, ``shape``/``spacing`` are the NIfTI's (i, j, k), ``labels``
    maps each card label value (as a string; BraTS2023's ET 3 is counted as 4) to its voxel count over the
    whole volume, or is None without a seg file.
    """
    card = card or load_card("brats")
    layout, case_dirs = scan_folder(path, card)
    cases = []
    for case_dir in case_dirs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingModalityWarning)  # reported through ``present`` instead
            case = load_case(case_dir, layout, card)
        labels = None
        if case.label is not None:
            counts = {int(v): int((case.label == v).sum()) for v in sorted(card.labels)}
            counts[0] += int(np.prod(case.geometry.shape)) - case.label.size  # background outside the crop
            labels = {str(v): n for v, n in counts.items()}
        cases.append(
            {
                "id": case.case_id,
                "present": [m for m, p in zip(card.modality_names, case.present, strict=True) if p],
                "shape": list(case.geometry.shape),
                "spacing": list(case.geometry.spacing),
                "labels": labels,
            }
        )
    return {"root": str(path), "layout": layout, "modalities": list(card.modality_names), "cases": cases}


def format_inspection(report: dict) -> str:
    """An :func:`inspect_folder` report as text: one line per case, then the cases missing a modality."""
    names = report["modalities"]
    lines = [
        f"{report['root']}: BraTS layout {report['layout']}, {len(report['cases'])} cases, "
        f"modalities {', '.join(names)}",
        f"{'case':<24} {'present':<20} {'shape':<13} {'spacing mm':<16} voxels per label (card convention)",
    ]
    for case in report["cases"]:
        labels = case["labels"]
        counts = "no seg" if labels is None else "  ".join(f"{v}:{n}" for v, n in labels.items() if v != "0")
        lines.append(
            f"{case['id']:<24} {'+'.join(case['present']):<20} {'x'.join(map(str, case['shape'])):<13} "
            f"{'x'.join(f'{z:g}' for z in case['spacing']):<16} {counts}"
        )
    incomplete = [c for c in report["cases"] if len(c["present"]) < len(names)]
    if incomplete:
        missing = "; ".join(
            f"{c['id']} lacks {', '.join(m for m in names if m not in c['present'])}" for c in incomplete
        )
        lines.append(f"{len(incomplete)} case(s) kept with modalities marked not present: {missing}")
    return "\n".join(lines)
