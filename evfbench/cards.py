"""Cards: the YAML files under ``registry/`` that describe models, splits and published results.

``registry/models/<arch>.yaml``   one model architecture, its builder and its weight tags
``registry/splits/<dataset>.yaml`` one dataset, its partitions (``split_by``) and their splits
``registry/published/<table>.yaml`` published numbers, each row with its source

The folder ships inside the wheel as ``evfbench/_registry``; in a source checkout
it is the top-level ``registry/`` folder. Cards are data: adding a split or a weight tag
needs no code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def registry_root() -> Path:
    """The folder holding the cards, installed or in a checkout."""
    checkout = Path(__file__).resolve().parent.parent / "registry"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("evfbench") / "_registry"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"card {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"card {path} must hold a mapping at the top level, found {type(data).__name__}")
    return data


def _require(data: dict[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise ValueError(f"card {path} lacks the field '{key}'")
    return data[key]


@dataclass(frozen=True)
class WeightTag:
    """A named set of weights for an architecture (timm's ``arch.tag``), with provenance."""

    name: str
    args: dict[str, Any]
    source: str = ""
    license: str = ""
    paper: str = ""
    notes: str = ""


@dataclass(frozen=True)
class ModelCard:
    name: str
    builder: str  # "module:callable", imported only when the model is built
    description: str
    extras: tuple[str, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, WeightTag] = field(default_factory=dict)
    uses_ground_truth: bool = False
    group: str = "model"  # reference | external | evf_sam | baseline | test
    path: Path | None = None


@dataclass(frozen=True)
class SplitCard:
    """One evaluation or training split in the refer layout (``<root>/<dataset>/refs(<split_by>).p``)."""

    name: str
    dataset: str
    split_by: str
    split: str
    image_root: str
    counts: dict[str, int]
    source: str = ""
    license: str = ""
    path: Path | None = None

    @property
    def family(self) -> str:
        """Dataset with its partition, e.g. ``refcocog(umd)``; the key published tables use."""
        return f"{self.dataset}({self.split_by})"


@functools.cache
def model_cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for path in sorted((registry_root() / "models").glob("*.yaml")):
        data = _read_yaml(path)
        name = data.get("name", path.stem)
        tags = {
            tag: WeightTag(
                name=tag,
                args=dict(spec.get("args", {})),
                source=spec.get("source", ""),
                license=spec.get("license", ""),
                paper=spec.get("paper", ""),
                notes=spec.get("notes", ""),
            )
            for tag, spec in (data.get("tags") or {}).items()
        }
        cards[name] = ModelCard(
            name=name,
            builder=_require(data, "builder", path),
            description=data.get("description", "").strip(),
            extras=tuple(data.get("extras", ())),
            args=dict(data.get("args") or {}),
            tags=tags,
            uses_ground_truth=bool(data.get("uses_ground_truth", False)),
            group=data.get("group", "model"),
            path=path,
        )
    return cards


@functools.cache
def split_cards() -> dict[str, SplitCard]:
    """Every split under every name it answers to (canonical names and aliases)."""
    cards: dict[str, SplitCard] = {}
    for path in sorted((registry_root() / "splits").glob("*.yaml")):
        data = _read_yaml(path)
        dataset = _require(data, "dataset", path)
        aliases = [dataset, *data.get("aliases", [])]
        partitions = _require(data, "split_by", path)
        for split_by, part in partitions.items():
            for split, counts in _require(part, "splits", path).items():
                card = SplitCard(
                    name=f"{dataset}_{split}" if part.get("default") else f"{dataset}_{split_by}_{split}",
                    dataset=dataset,
                    split_by=split_by,
                    split=split,
                    image_root=_require(data, "image_root", path),
                    counts={k: int(v) for k, v in (counts or {}).items()},
                    source=data.get("source", ""),
                    license=data.get("license", ""),
                    path=path,
                )
                for alias in aliases:
                    names = [f"{alias}_{split_by}_{split}"]
                    if part.get("default"):
                        names.append(f"{alias}_{split}")
                    for n in names:
                        cards.setdefault(n, card)
    return cards


@functools.cache
def published_tables() -> dict[str, dict[str, Any]]:
    """``registry/published/*.yaml`` keyed by file stem."""
    return {p.stem: _read_yaml(p) for p in sorted((registry_root() / "published").glob("*.yaml"))}
