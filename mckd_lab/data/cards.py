"""Data cards: the single source of truth for modalities, file patterns, labels and regions.

A card is a Markdown file in ``data_cards/`` (installed as the package data ``mckd_lab.data_cards``) that opens
with a YAML header between ``---`` lines (the machine-readable part) followed by prose for people. Loaders read
the header instead of repeating constants.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Modality:
    """One input modality, in the card's canonical order. ``columns`` is set for tabular modalities."""

    name: str
    kind: str
    description: str = ""
    columns: tuple[str, ...] = ()
    key_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Region:
    """A segmentation region: the union of ``labels`` (card convention)."""

    name: str
    labels: tuple[int, ...]
    description: str = ""


@dataclass(frozen=True)
class Card:
    """A parsed data card: the header fields used by code, the raw header and the prose."""

    name: str
    task: str
    modalities: tuple[Modality, ...]
    labels: dict[Any, str]
    regions: tuple[Region, ...] = ()
    header: dict[str, Any] = field(default_factory=dict, repr=False)
    prose: str = field(default="", repr=False)
    path: Path | None = None

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def modality(self, name: str) -> Modality:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(
            f"card {self.name!r} has no modality {name!r}; it has {', '.join(self.modality_names)}"
        )


def cards_dir() -> Path:
    """The folder holding the cards: the package data ``mckd_lab.data_cards``.

    pyproject.toml maps the repository's top-level ``data_cards/`` (the one copy) to that package, so wheels,
    sdists and editable installs all read it through ``importlib.resources``.
    """
    try:
        folder = Path(str(importlib.resources.files("mckd_lab.data_cards")))
    except ModuleNotFoundError:
        folder = None
    if folder is None or not any(folder.glob("*.md")):
        where = f" (looked in {folder})" if folder else ""
        raise FileNotFoundError(
            f"mckd-lab's data cards, the package data mckd_lab.data_cards, are missing{where}: this installation "
            "is incomplete; reinstall mckd-lab (pip install mckd-lab, or pip install -e . in a checkout)"
        )
    return folder


def parse_card(text: str, path: Path | None = None) -> Card:
    """Parse a card's text: a YAML header between the first two ``---`` lines, then prose."""
    where = str(path) if path else "<card>"
    parts = text.split("\n---", 1) if text.startswith("---") else None
    if not parts or len(parts) < 2:
        raise ValueError(f"{where}: a data card must start with a YAML header between '---' lines")
    header = yaml.safe_load(parts[0][3:])
    prose = parts[1].split("\n", 1)[1] if "\n" in parts[1] else ""
    missing = [k for k in ("name", "task", "modalities", "labels") if k not in header]
    if missing:
        raise ValueError(f"{where}: card header lacks {', '.join(missing)}")
    modalities = tuple(
        Modality(
            name=m["name"],
            kind=m.get("kind", ""),
            description=m.get("description", ""),
            columns=tuple(m.get("columns", ())),
            key_columns=tuple(m.get("key_columns", ())),
        )
        for m in header["modalities"]
    )
    regions = tuple(
        Region(
            name=r["name"], labels=tuple(int(v) for v in r["labels"]), description=r.get("description", "")
        )
        for r in header.get("regions", ())
    )
    return Card(
        name=header["name"],
        task=header["task"],
        modalities=modalities,
        labels=dict(header["labels"]),
        regions=regions,
        header=header,
        prose=prose,
        path=path,
    )


@functools.cache
def load_card(name: str) -> Card:
    """Load ``data_cards/<name>.md`` (e.g. ``brats``, ``adni``, ``brats_phantoms``, ``adni_synthetic``)."""
    path = cards_dir() / f"{name}.md"
    if not path.exists():
        known = sorted(p.stem for p in cards_dir().glob("*.md") if p.stem.lower() != "readme")
        raise FileNotFoundError(f"no data card {path}; known cards: {', '.join(known)}")
    return parse_card(path.read_text(encoding="utf-8"), path)
