"""Run configuration: one dataclass per concern, explicit fields with defaults, validated once.

``RunConfig`` (data, model, method, optim, runtime) is written to a run's ``config.json`` as a plain dict and
rebuilds the run (``RunConfig.from_dict``). Defaults are sized for a CPU; the reference recipe (METHOD.md) is
noted beside each field where it differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    """Which data and how it is split and cropped.

    task: data card / task name (``brats``). root: a BraTS folder (any supported layout); None generates
    phantoms (``phantom_cases`` cases of ``phantom_size``^3, ``phantom_seed``, contrasts made
    ``phantom_redundancy`` redundant: card ``brats_phantoms``) into ``<run>/phantoms``.
    Cases are split once (``split_seed``): ``test_fraction`` kept for evaluation, ``heldout_cases`` for the
    held-out (meta) split (reference: 5 cases), the rest for training; the split is written to
    ``<run>/splits.json``. crop: training crop (D, H, W) (reference 80x160x160), foreground-biased with
    ``foreground_prob`` (reference 0.5).

    ADNI (task ``adni``, or ``adni-cognitive`` with the cognitive scores): root is an ADNIMERGE CSV; None
    generates a cohort of ``cohort_subjects`` (``cohort_seed``, sources made ``cohort_redundancy`` redundant:
    card ``adni_synthetic``) into ``<run>/cohort``; subjects are split by
    RID with ``split_seed`` (train/val/meta/test 0.6/0.1/0.1/0.2). modalities: use only these (subjects having
    all of them; the others removed), e.g. ``("imaging",)`` for a single-modality baseline; empty: all.
    Task ``adni-t1``: ``mri`` (a T1 volume per subject, column ``T1_PATH``) replaces ``imaging``; volumes are
    read at ``t1_size`` voxels a side (a multiple of 8; the generated cohort renders them at that size).
    """

    task: str = "brats"
    root: str | None = None
    phantom_cases: int = 24
    phantom_size: int = 48
    phantom_seed: int = 0
    phantom_redundancy: float = 0.0
    crop: tuple[int, int, int] = (48, 48, 48)
    foreground_prob: float = 0.5
    heldout_cases: int = 5
    test_fraction: float = 0.2
    split_seed: int = 0
    cache: bool = True
    cohort_subjects: int = 1000
    cohort_seed: int = 0
    cohort_redundancy: float = 0.0
    modalities: tuple[str, ...] = ()
    t1_size: int = 32


@dataclass
class ModelConfig:
    """backbone: ``compact`` (CPU-sized, widths ``channels``) or ``reference`` (ResNet-50 + ASPP, METHOD.md).
    shared_encoder: one encoder for every image modality (the reference) or one per modality."""

    backbone: str = "compact"
    channels: tuple[int, ...] = (16, 32, 64)
    shared_encoder: bool = True


@dataclass
class MethodConfig:
    """The strategy and its hyper-parameters.

    name: ``none`` | ``uniform`` | ``lckd`` | ``mckd`` (the reference, default) | ``mckd-bilevel``.
    kd_weight: lambda in task + lambda * L_KD (0.1). sampler: the missing stage's subset sampler (None: the
    strategy's own; ``reference`` except ``lckd``). meta_every_warmup / meta_every_missing: iterations
    between meta rounds in each stage (reference 100 / 500, and a round at iteration 0); meta_batches: Adam
    steps on omega per round, each on one held-out batch of ``meta_batch_size`` crops drawn with the
    training augmentation (reference: 20 steps at batch 1); also the held-out batches of an LCKD election.
    meta_lr, meta_weight_decay: Adam on omega (1e-2, 5e-4). omega_init: ``zeros`` (every modality equally
    important at the start: no initial ranking for a short run to inherit) or ``uniform01`` (the reference's
    ``torch.rand`` logits in [0, 1), seeded by ``runtime.seed``). elect_every: iterations between LCKD
    teacher elections.
    """

    name: str = "mckd"
    kd_weight: float = 0.1
    sampler: str | None = None
    meta_every_warmup: int = 100
    meta_every_missing: int = 500
    meta_batches: int = 20
    meta_batch_size: int = 1
    meta_lr: float = 1e-2
    meta_weight_decay: float = 5e-4
    elect_every: int = 500
    omega_init: str = "zeros"
    oracle_importance: tuple[float, ...] = ()
    meta_fraction: float = 0.0


@dataclass
class OptimConfig:
    """The network's optimiser and schedule (omega has its own, see MethodConfig).

    optimizer: ``sgd`` (reference: momentum 0.99, Nesterov) or ``adamw``. lr: base rate with the reference's
    two-stage poly schedule (``poly_lr``): stage 1 (``warmup_iterations``, all modalities) decays from
    ``lr`` to 0 over its own length; stage 2 (random missing modalities, to ``iterations``) recomputes poly
    over the total, so it restarts at ``lr * (1 - warmup / iterations) ** poly_power`` (reference: 80k of
    115k, 1e-2 -> 3.4e-3) and decays to 0. batch_size: reference 2.
    grad_clip: clip the network's gradient norm to this (0: off, the reference's and the default; nnU-Net
    clips at 12 with the same SGD). With the two-stage schedule the demo trains the same with and without a
    clip at 12 (benchmarks/README.md, "Gradient clipping"), so it is off.
    """

    optimizer: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 0.0
    poly_power: float = 0.9
    iterations: int = 400
    warmup_iterations: int = 150
    batch_size: int = 2
    grad_clip: float = 0.0


@dataclass
class RuntimeConfig:
    """seed (reference 999); device ``cpu`` | ``cuda`` | ``cuda:N``; amp: bf16 autocast (CUDA only);
    checkpoint_every: iterations between ``checkpoint.pt`` writes; progress: show a tqdm bar."""

    seed: int = 999
    device: str = "cpu"
    amp: bool = False
    checkpoint_every: int = 50
    progress: bool = True


SECTIONS = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig, "optim": OptimConfig,
            "runtime": RuntimeConfig}  # fmt: skip
VERSION_KEY = "mckd_lab_version"  # written beside the sections in a run's config.json
WARMUP_FRACTION = 1 / 3  # of the iterations, every modality present (stage 1); the recipes' one convention


def poly_lr(iteration: int, optim: OptimConfig) -> float:
    """The network's learning rate at ``iteration`` (0-based): the reference's two-stage poly schedule.

    Stage 1 (``iteration < W``, W = ``warmup_iterations``): ``lr * (1 - iteration / W) ** poly_power``.
    Stage 2: ``lr * (1 - iteration / iterations) ** poly_power``, restarting at ``lr * (1 - W / T) ** p``.
    """
    w, t, p = optim.warmup_iterations, optim.iterations, optim.poly_power
    if iteration < w:
        return optim.lr * (1 - iteration / w) ** p
    return optim.lr * (1 - iteration / t) ** p


def warmup_for(iterations: int) -> int:
    """Stage-1 (all modalities) length of a recipe of ``iterations``: ``WARMUP_FRACTION`` of them."""
    return int(iterations * WARMUP_FRACTION)


@dataclass
class RunConfig:
    """Everything that defines a run. ``to_dict`` / ``from_dict`` round-trip through plain JSON values."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(getattr(self, name)).items()
            }
            for name in SECTIONS
        }

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> RunConfig:
        """Build from a (possibly partial) nested dict; unknown sections or fields are refused (the package
        version a run's ``config.json`` records beside the sections is not a section: it is skipped)."""
        data = {k: v for k, v in data.items() if k != VERSION_KEY}
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ValueError(
                f"unknown config section(s) {sorted(unknown)}; sections are {', '.join(SECTIONS)}"
            )
        sections = {}
        for name, kind in SECTIONS.items():
            values = dict(data.get(name) or {})
            names = {f.name for f in dataclasses.fields(kind)}
            bad = set(values) - names
            if bad:
                raise ValueError(
                    f"unknown field(s) {sorted(bad)} in config section {name!r}; known: {sorted(names)}"
                )
            for f in dataclasses.fields(kind):
                if f.name in values and isinstance(values[f.name], list):
                    values[f.name] = tuple(values[f.name])
            sections[name] = kind(**values)
        return cls(**sections)

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with dotted-key overrides, e.g. ``{"optim.iterations": 50, "method.name": "lckd"}``."""
        data = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in data or not name:
                raise ValueError(
                    f"override {key!r} must be 'section.field' with section in {', '.join(SECTIONS)}"
                )
            data[section][name] = value
        return RunConfig.from_dict(data)

    def validate(self, extra: Sequence[str] = ()) -> RunConfig:
        """Check the values every task shares, once, at the boundary; ``extra``: messages of the task's own
        checks (``Task.validated`` passes them). Raises ValueError naming each field. Returns self."""
        d, m, me, o, r = self.data, self.model, self.method, self.optim, self.runtime
        checks = [
            (m.backbone in ("compact", "reference"), f"model.backbone {m.backbone!r}: compact|reference"),
            (len(m.channels) >= 1 and min(m.channels) > 0, f"model.channels {m.channels}: widths > 0"),
            (o.optimizer in ("sgd", "adamw"), f"optim.optimizer {o.optimizer!r}: sgd|adamw"),
            (o.iterations > 0, f"optim.iterations must be > 0, got {o.iterations}"),
            (0 <= o.warmup_iterations <= o.iterations,
             f"optim.warmup_iterations {o.warmup_iterations} must be in [0, iterations={o.iterations}]"),
            (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
            (o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
            (o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0: off), got {o.grad_clip}"),
            (me.kd_weight >= 0, f"method.kd_weight must be >= 0, got {me.kd_weight}"),
            (me.meta_batches >= 1, f"method.meta_batches must be >= 1, got {me.meta_batches}"),
            (me.meta_batch_size >= 1, f"method.meta_batch_size must be >= 1, got {me.meta_batch_size}"),
            (me.omega_init in ("zeros", "uniform01"), f"method.omega_init {me.omega_init!r}: zeros|uniform01"),
            (len(d.crop) == 3 and all(c > 0 for c in d.crop), f"data.crop {d.crop}: give (D, H, W)"),
            (0.0 <= d.test_fraction < 1.0, f"data.test_fraction {d.test_fraction} must be in [0, 1)"),
            (d.heldout_cases >= 1, f"data.heldout_cases must be >= 1, got {d.heldout_cases}"),
            (0 <= d.phantom_redundancy <= 1, f"data.phantom_redundancy {d.phantom_redundancy} must be in [0, 1]"),
            (0 <= d.cohort_redundancy <= 1, f"data.cohort_redundancy {d.cohort_redundancy} must be in [0, 1]"),
            (d.t1_size >= 16 and d.t1_size % 8 == 0, f"data.t1_size {d.t1_size}: a multiple of 8, >= 16"),
            (r.device == "cpu" or r.device.startswith("cuda"), f"runtime.device {r.device!r}: cpu|cuda[:N]"),
            (r.checkpoint_every >= 1, f"runtime.checkpoint_every must be >= 1, got {r.checkpoint_every}"),
        ]  # fmt: skip
        errors = [message for ok, message in checks if not ok] + list(extra)
        if errors:
            raise ValueError("invalid configuration: " + "; ".join(errors))
        return self
