"""Why did the network predict this? Attributions per modality, per voxel and per tabular feature (Captum).

- Modality level: exact Shapley values over the subsets of the case's present modalities. The 2^p - 1 subset
  predictions come from one encode-once pass (``infer.predict_subsets``): every modality is encoded once per
  window, the decoder runs once per subset. The empty set is the zero input (the package's meaning of
  "missing"): every slot holds the encoder's zero response. Captum's ``FeatureAblation``,
  ``ShapleyValueSampling`` and ``ShapleyValues`` over a feature mask grouping each modality's voxels give the
  same game through Captum, to cross-check.
- Voxel level: Integrated Gradients and Occlusion of a region's summed logit, zero input as baseline.
- Feature level (tabular, ADNI): Integrated Gradients per feature, summed per modality.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from captum.attr import FeatureAblation, IntegratedGradients, Occlusion, ShapleyValues, ShapleyValueSampling
from torch import nn

from mckd_lab.data.brats import Case, load_case
from mckd_lab.evaluate import dice
from mckd_lab.infer import OVERLAP, THRESHOLD, SubsetPredictor, predict_subsets, sliding_window

Image = np.ndarray | torch.Tensor | dict[str, torch.Tensor]


def exact_shapley(
    value: Mapping[tuple[bool, ...], np.ndarray | float], players: Sequence[bool]
) -> np.ndarray:
    """Exact Shapley values of a cooperative game over the modalities.

    ``phi_i = sum_{S subset P minus i} |S|! (p - |S| - 1)! / p! * (v(S + i) - v(S))`` with P the players
    (present modalities), p = |P|. Efficiency: ``sum_i phi_i = v(P) - v(empty)``; a non-player gets 0.

    Args:
        value: v(S) for every subset S of the players, keyed by M-bool presence masks (the empty set as all
            False); values are floats or arrays of one shape K (e.g. one value per region).
        players: M bools, the modalities taking part.

    Returns:
        float64 array (M, *K): row i is modality i's Shapley value (0 for modalities not in ``players``).
    """
    idx = [i for i, p in enumerate(players) if p]
    m, p = len(players), len(idx)
    v = {tuple(bool(b) for b in key): np.asarray(val, dtype=np.float64) for key, val in value.items()}
    shape = next(iter(v.values())).shape
    phi = np.zeros((m, *shape))

    def mask(members) -> tuple[bool, ...]:
        return tuple(j in members for j in range(m))

    for i in idx:
        others = [j for j in idx if j != i]
        for k in range(p):
            weight = math.factorial(k) * math.factorial(p - k - 1) / math.factorial(p)
            for chosen in combinations(others, k):
                phi[i] += weight * (_lookup(v, mask(set(chosen) | {i})) - _lookup(v, mask(chosen)))
    return phi


def _lookup(v: dict, key: tuple[bool, ...]) -> np.ndarray:
    if key not in v:
        raise KeyError(f"the game has no value for subset {key}; give v(S) for every subset of the players")
    return v[key]


def subsets_of(players: Sequence[bool], empty: bool = True) -> list[tuple[bool, ...]]:
    """Every subset of ``players`` as M-bool masks: the empty one first (when ``empty``), by size, then in
    ``itertools.combinations`` order (the canonical subset order restricted to the players)."""
    idx = [i for i, p in enumerate(players) if p]
    out = []
    for k in range(0 if empty else 1, len(idx) + 1):
        out += [tuple(j in c for j in range(len(players))) for c in combinations(idx, k)]
    return out


# --- modality level -----------------------------------------------------------------------------------------


@dataclass
class ModalityShapley:
    """Shapley values of the modalities for each output of one case.

    Attributes:
        modalities: (M,) names, card order.
        outputs: (K,) region names (network channel order, ET, WT, TC) or class names.
        values: float (K, M), modality m's share of ``full[k] - baseline[k]``; exactly 0 for absent ones.
        baseline: float (K,), v(empty): the value of the zero-input response (every modality missing).
        full: float (K,), v(all present modalities).
        present: (M,) the players (the case's present modalities, or the ones asked for).
        value: what v measures: ``dice`` (region Dice vs the case's labels, threshold 0.5) or ``probability``
            (mean region probability over the volume; class probability for classification).
        method: ``exact`` or the Captum class used.
    """

    modalities: tuple[str, ...]
    outputs: tuple[str, ...]
    values: np.ndarray
    baseline: np.ndarray
    full: np.ndarray
    present: tuple[bool, ...]
    value: str
    method: str = "exact"

    def ranking(self, output: str) -> list[str]:
        """Present modalities by decreasing Shapley value for ``output`` (e.g. ``"ET"``)."""
        k = self.outputs.index(output)
        players = [i for i, p in enumerate(self.present) if p]
        return [self.modalities[i] for i in sorted(players, key=lambda i: -self.values[k, i])]

    def to_dict(self) -> dict:
        """JSON: ``shapley`` {output: {modality: value}}, ``baseline`` {output: v(empty)}, ``full``,
        ``present`` [names], ``value``, ``method``."""

        def per_output(x) -> dict:
            return {o: round(float(v), 6) for o, v in zip(self.outputs, x, strict=True)}

        return {
            "shapley": {
                o: {m: round(float(v), 6) for m, v in zip(self.modalities, row, strict=True)}
                for o, row in zip(self.outputs, self.values, strict=True)
            },
            "baseline": per_output(self.baseline),
            "full": per_output(self.full),
            "present": [m for m, p in zip(self.modalities, self.present, strict=True) if p],
            "value": self.value,
            "method": self.method,
        }


def _subset_probabilities(model: nn.Module, image: Image, subsets, roi: Sequence[int] | None) -> torch.Tensor:
    """(S, C, *spatial) probabilities of one case (volume (M, D, H, W) through sliding windows of ``roi``, or
    a dict of tabular vectors {modality: (F_m,)}) for every subset, encoding once."""
    if isinstance(image, dict):
        with torch.inference_mode():
            model.eval()
            out = SubsetPredictor(model, subsets)({k: torch.as_tensor(v)[None] for k, v in image.items()})
        return out.view(len(subsets), -1).cpu()
    if roi is None:
        raise ValueError(
            "a volume needs the sliding-window size roi (the training crop size), e.g. (48, 48, 48)"
        )
    return predict_subsets(model, image, subsets, roi)


def _values(probs: torch.Tensor, value: str, target: np.ndarray | None) -> np.ndarray:
    """Game values from (S, C, ...) probabilities: (S, C) per region/class."""
    if value == "probability":
        return probs.flatten(2).mean(2).double().numpy() if probs.ndim > 2 else probs.double().numpy()
    if value == "dice":
        if target is None or probs.ndim <= 2:
            raise ValueError("value='dice' needs a segmentation case with labels; use value='probability'")
        return np.stack([dice(p > THRESHOLD, target) for p in probs.numpy()])
    raise ValueError(f"unknown value {value!r}; choose 'dice' or 'probability'")


def modality_shapley(
    model: nn.Module,
    image: Image,
    present: Sequence[bool],
    outputs: Sequence[str],
    target: np.ndarray | None = None,
    value: str = "dice",
    roi: Sequence[int] | None = None,
) -> ModalityShapley:
    """Exact Shapley values of the present modalities, from one encode-once pass over all their subsets.

    Args:
        model: a network following the model contract; ``model.modalities`` names the M modalities.
        image: (M, D, H, W) normalised volume (``Case.image``) or a dict {modality: (F_m,)} of tabular inputs.
        present: (M,) the players; absent modalities get exactly 0.
        outputs: names of the output channels: regions in network order (ET, WT, TC) or class names.
        target: (3, D, H, W) region masks for ``value="dice"``.
        value: ``dice`` or ``probability`` (see ``ModalityShapley``).
        roi: sliding-window size for volumes (the training crop).
    """
    present = tuple(bool(p) for p in present)
    subsets = subsets_of(present)
    v = _values(_subset_probabilities(model, image, subsets, roi), value, target)
    phi = exact_shapley(dict(zip(subsets, v, strict=True)), present)
    return ModalityShapley(tuple(model.modalities), tuple(outputs), phi.T, v[0], v[-1], present, value)


class ModalityGame(nn.Module):
    """The modality game as a Captum forward function: inputs with some modalities zeroed -> (B, K) values.

    A modality whose input is all zeros counts as missing (the package's meaning), so Captum's ablations over
    a feature mask grouping each modality's voxels (or features) play the same game as ``modality_shapley``.

    Forward: volumes (B, M, D, H, W), or M tabular tensors (B, F_m) in card order -> float64 (B, K).
    """

    def __init__(self, model, value: str, target: np.ndarray | None = None, roi: Sequence[int] | None = None):
        super().__init__()
        self.model, self.value, self.target, self.roi = model, value, target, roi

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        names = self.model.modalities
        rows = []
        for b in range(inputs[0].shape[0]):
            if len(inputs) == 1:  # one volume (M, D, H, W)
                image = inputs[0][b]
                subset = tuple(bool(x) for x in image.flatten(1).abs().amax(1) > 0)
            else:
                image = {m: t[b] for m, t in zip(names, inputs, strict=True)}
                subset = tuple(bool(t[b].abs().amax() > 0) for t in inputs)
            probs = _subset_probabilities(self.model, image, [subset], self.roi)
            rows.append(torch.as_tensor(_values(probs, self.value, self.target)[0]))
        return torch.stack(rows)


CAPTUM_METHODS = {"ablation": FeatureAblation, "sampling": ShapleyValueSampling, "shapley": ShapleyValues}


def captum_modality_attribution(
    model: nn.Module,
    image: Image,
    outputs: Sequence[str],
    target: np.ndarray | None = None,
    value: str = "dice",
    roi: Sequence[int] | None = None,
    method: str = "sampling",
    n_samples: int = 25,
) -> ModalityShapley:
    """The modality game through Captum, one feature group per modality, zero baseline (to cross-check).

    ``method``: ``ablation`` (``FeatureAblation``: v(all) - v(all but m), a leave-one-out, not Shapley),
    ``sampling`` (``ShapleyValueSampling``, ``n_samples`` random permutations: converges to the exact values)
    or ``shapley`` (``ShapleyValues``: every permutation, equal to ``modality_shapley``). Players are the
    modalities whose input is not all zero. Costs one subset prediction per Captum evaluation (no reuse).
    """
    game = ModalityGame(model, value, target, roi)
    tabular = isinstance(image, dict)
    if tabular:
        inputs = tuple(torch.as_tensor(image[m], dtype=torch.float32)[None] for m in model.modalities)
        masks = tuple(torch.full_like(x, i, dtype=torch.long) for i, x in enumerate(inputs))
        present = tuple(bool(x.abs().amax() > 0) for x in inputs)
    else:
        volume = torch.as_tensor(
            np.asarray(image) if not torch.is_tensor(image) else image, dtype=torch.float32
        )
        inputs = (volume[None],)
        masks = (torch.arange(volume.shape[0]).view(1, -1, *[1] * (volume.ndim - 1)),)
        present = tuple(bool(x) for x in volume.flatten(1).abs().amax(1) > 0)
    algorithm = CAPTUM_METHODS[method](game)
    extra = {"n_samples": n_samples} if method == "sampling" else {}
    values = np.zeros((len(outputs), len(present)))
    for k in range(len(outputs)):
        attr = algorithm.attribute(
            inputs, baselines=(0.0,) * len(inputs), target=k, feature_mask=masks, **extra
        )
        for i in range(len(present)):  # every element of a group carries the group's value
            values[k, i] = float(attr[i][0, 0] if tabular else attr[0][0, i].flatten()[0])
    with torch.no_grad():
        full, baseline = (game(*x)[0].numpy() for x in (inputs, tuple(torch.zeros_like(x) for x in inputs)))
    return ModalityShapley(
        tuple(model.modalities),
        tuple(outputs),
        values,
        baseline,
        full,
        present,
        value,
        type(algorithm).__name__,
    )


# --- voxel level --------------------------------------------------------------------------------------------


@dataclass
class VoxelAttribution:
    """A voxel attribution map of one region's summed logit, aligned with the case arrays.

    Attributes:
        attribution: float32 (M, D, H, W), one map per modality (exactly 0 for modalities not present; for
            Occlusion, batching noise would otherwise leave ~1e-5 there), same grid as
            ``Case.image`` (the brain crop).
        region: the region attributed (e.g. ``"ET"``).
        present: (M,) the modalities given to the network.
        method: ``IntegratedGradients`` or ``Occlusion``.
        delta: Captum's convergence delta for Integrated Gradients: ``sum(attribution) - (f(x) - f(0))``.
    """

    attribution: np.ndarray
    region: str
    present: tuple[bool, ...]
    method: str
    delta: float | None = None

    def save_nifti(self, case: Case, out_dir: str | Path, modalities: Sequence[str]) -> list[Path]:
        """Write one float32 NIfTI per present modality, ``<case>_<method>_<region>_<modality>.nii.gz``, on
        the case's original grid (shape and affine of its input files; zero outside the brain crop)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for m, name in enumerate(modalities):
            if self.present[m]:
                full = case.geometry.uncrop(self.attribution[m].astype(np.float32))
                path = out_dir / f"{case.case_id}_{self.method}_{self.region}_{name}.nii.gz"
                nib.save(nib.Nifti1Image(np.ascontiguousarray(full), case.geometry.affine), path)
                paths.append(path)
        return paths


class RegionLogit(nn.Module):
    """Forward for voxel attributions: (B, M, D, H, W) -> (B,) summed logit of one region over the volume,
    through sliding windows of ``roi`` (overlap 1/3), with the modalities outside ``present`` zeroed."""

    def __init__(self, model: nn.Module, present: Sequence[bool], channel: int, roi: Sequence[int]):
        super().__init__()
        self.model, self.channel, self.roi = model, channel, tuple(roi)
        self.register_buffer("present", torch.tensor([bool(p) for p in present]), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        def window(w: torch.Tensor) -> torch.Tensor:
            return self.model(w, self.present.expand(w.shape[0], -1)).logits[
                :, self.channel : self.channel + 1
            ]

        x = image * self.present.view(1, -1, *[1] * (image.ndim - 2)).to(image.dtype)
        return sliding_window(window, x, self.roi, OVERLAP, sw_batch_size=8).flatten(1).sum(1)


def voxel_attribution(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    present: Sequence[bool],
    region: str,
    regions: Sequence[str],
    roi: Sequence[int],
    method: str = "integrated_gradients",
    n_steps: int = 32,
    window: int = 8,
    internal_batch_size: int = 4,
    path_power: float = 10.0,
) -> VoxelAttribution:
    """Integrated Gradients or Occlusion of a region's summed logit, with the zero input as baseline.

    Args:
        image: (M, D, H, W) normalised case volume.
        present: (M,) modalities given to the network (the others are zeroed and get 0).
        region: which output, by name; ``regions`` the output names in network order (ET, WT, TC).
        roi: the sliding-window size (training crop).
        method: ``integrated_gradients`` (``n_steps`` Gauss-Legendre steps, ``internal_batch_size`` at a
            time) or ``occlusion`` (cubes of ``window`` voxels per modality, stride ``window``, set to 0).
        path_power: where Integrated Gradients samples the straight path from 0 to x: at alpha = t^p for
            Captum's steps t. Instance-normalised networks are nearly scale invariant, so f(alpha x) is flat
            for alpha above ~1e-3 and changes almost entirely below it (the norms' eps takes over): steps
            uniform in alpha (p = 1, plain Captum) miss nearly all of it: delta -100% of f(x) - f(0) at 32
            steps, 48^3; p = 10 gives +0.8% on a trained compact network, ~10% on random ones (benchmarks/
            results/explain.json). The path and the limit are those of Integrated Gradients (Captum runs in
            y = sign(x) |x|^(1/p); the straight path is the same).
    """
    device = next(model.parameters()).device
    model.eval()
    forward = RegionLogit(model, present, list(regions).index(region), roi).to(device)
    x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image, dtype=torch.float32)[None]
    x, delta = x.to(device), None
    if method == "integrated_gradients":
        # Same straight path, sampled at alpha = t^p: IG in the coordinates y = sign(x) |x|^(1/p).
        y = x.sign() * x.abs() ** (1 / path_power)
        attr, d = IntegratedGradients(lambda y: forward(y.sign() * y.abs() ** path_power)).attribute(
            y,
            baselines=0.0,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        delta = float(d.sum())
    elif method == "occlusion":
        with torch.no_grad():
            attr = Occlusion(forward).attribute(
                x,
                sliding_window_shapes=(1, *[window] * (x.ndim - 2)),
                strides=(1, *[window] * (x.ndim - 2)),
                baselines=0.0,
                perturbations_per_eval=internal_batch_size,
            )
    else:
        raise ValueError(
            f"unknown voxel attribution {method!r}; choose 'integrated_gradients' or 'occlusion'"
        )
    present = tuple(bool(p) for p in present)
    attr = attr[0].detach().float().cpu().numpy() * np.array(present).reshape(-1, *[1] * (x.ndim - 2))
    name = "IntegratedGradients" if method == "integrated_gradients" else "Occlusion"
    return VoxelAttribution(attr, region, present, name, delta)


# --- feature level (tabular) --------------------------------------------------------------------------------


@dataclass
class TabularAttribution:
    """Integrated Gradients of one class logit per tabular feature, and summed per modality.

    ``features`` {modality: float (F_m,)} (a volume modality: (1,), the sum over its voxels); ``per_modality``
    {modality: sum}; ``target`` the class index;
    ``delta`` Captum's convergence delta (sum of all attributions minus f(x) - f(0))."""

    features: dict[str, np.ndarray]
    per_modality: dict[str, float]
    target: int
    delta: float


def tabular_integrated_gradients(
    model: nn.Module, image: dict[str, torch.Tensor], present: Sequence[bool], target: int, n_steps: int = 32
) -> TabularAttribution:
    """Integrated Gradients of class ``target``'s logit for one sample of tabular inputs, zero baseline.

    Args:
        image: one sample {modality: (F_m,), or (1, S, S, S) for a volume} in the model's modality order.
        present: (M,) modalities given (the others are zeroed by the model and get 0).
    """
    names, present = tuple(model.modalities), tuple(bool(p) for p in present)
    model.eval()
    rows = {m: torch.as_tensor(image[m], dtype=torch.float32)[None] for m in names}
    players = [m for m, p in zip(names, present, strict=True) if p]  # the others never reach the graph
    mask = torch.tensor(present, device=rows[names[0]].device)[None]

    def forward(*xs: torch.Tensor) -> torch.Tensor:
        batch = {m: torch.zeros_like(v).expand(xs[0].shape[0], *v.shape[1:]) for m, v in rows.items()}
        batch.update(zip(players, xs, strict=True))
        return model(batch, mask.expand(xs[0].shape[0], -1)).logits

    attr, delta = IntegratedGradients(forward).attribute(
        tuple(rows[m] for m in players),
        baselines=(0.0,) * len(players),
        target=int(target),
        n_steps=n_steps,
        return_convergence_delta=True,
    )

    def per_feature(a: torch.Tensor) -> np.ndarray:  # a volume's voxels sum to one value
        a = a[0].detach().double().cpu()
        return a.numpy() if a.dim() == 1 else a.sum().reshape(1).numpy()

    features = {m: np.zeros(v.shape[1] if v.dim() == 2 else 1) for m, v in rows.items()}
    features.update({m: per_feature(a) for m, a in zip(players, attr, strict=True)})
    return TabularAttribution(
        features, {m: float(f.sum()) for m, f in features.items()}, int(target), float(delta.sum())
    )


# --- a trained run ------------------------------------------------------------------------------------------


def explain_run(
    run_dir: str | Path,
    case_dir: str | Path | None = None,
    rid: int | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    n_steps: int = 32,
) -> dict:
    """Explain one BraTS case (``case_dir``) or one ADNI subject (``rid``) with a trained run.

    BraTS: exact modality Shapley values per region (value: Dice against the case's labels, or the mean region
    probability when it has none); with ``out``, Integrated Gradients maps of each region (zero baseline,
    ``n_steps``) written as NIfTI per modality on the case's grid, plus ``<case>_explain.json``.
    ADNI: Shapley values per class (class probability) over the subject's modalities, read from ``data`` (an
    ADNIMERGE CSV; default the run's), and Integrated Gradients per feature for the predicted class.

    Returns JSON-ready ``{"case" | "rid", "shapley", "baseline", "full", "present", "value", "method", ...}``.
    """
    from mckd_lab.evaluate import report_regions, write_json_atomic
    from mckd_lab.infer import run_device
    from mckd_lab.tasks import make_task
    from mckd_lab.train import load_run

    run = load_run(run_dir)
    model, task = run.model.to(run_device(run.config)), make_task(run.config.data.task)
    if case_dir is not None:
        card, roi = task.card, run.config.data.crop
        case = load_case(case_dir, card=card)
        value = "dice" if case.target is not None else "probability"
        shapley = modality_shapley(
            model, case.image, case.present, card.region_names, case.target, value, roi
        )
        result = {"case": case.case_id, **shapley.to_dict()}
        if out is not None:
            maps = {}
            for region in report_regions(card):
                ig = voxel_attribution(
                    model, case.image, case.present, region, card.region_names, roi, n_steps=n_steps
                )
                files = ig.save_nifti(case, out, card.modality_names)
                maps[region] = {"delta": ig.delta, "files": [str(p) for p in files]}
            result["integrated_gradients"] = maps
            write_json_atomic(result, Path(out) / f"{case.case_id}_explain.json")
        return result
    if rid is None:
        raise ValueError("name what to explain: a BraTS case folder (--case) or an ADNI subject (--rid)")
    from mckd_lab.classification import data_path, subject_inputs

    image, present = subject_inputs(run, Path(data) if data else data_path(run.config.data, run.run_dir), rid)
    sample, present = {m: x[0].to(run_device(run.config)) for m, x in image.items()}, present[0].tolist()
    shapley = modality_shapley(model, sample, present, task.classes, value="probability")
    predicted = int(np.argmax(shapley.full))
    ig = tabular_integrated_gradients(model, sample, present, predicted, n_steps)
    columns = {m.name: [f"{m.name} volume"] if m.kind == "image" else list(m.columns) for m in task.specs}
    if task.cognitive:
        columns["clinical"] += list(task.card.header["cognitive_columns"])
    result = {
        "rid": int(rid),
        **shapley.to_dict(),
        "predicted": task.classes[predicted],
        "integrated_gradients": {
            "class": task.classes[predicted],
            "delta": ig.delta,
            "per_modality": ig.per_modality,
            "features": {
                m: dict(zip(columns[m], map(float, a), strict=True)) for m, a in ig.features.items()
            },
        },
    }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(result, Path(out) / f"rid{int(rid)}_explain.json")
    return result
