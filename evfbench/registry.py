"""Names -> builders. Builders are imported lazily, so a heavy optional backend (SAM, SAM-2,
open_clip, transformers) is imported only when a model that needs it is built.

    >>> from evfbench.registry import create_model, list_models
    >>> model = create_model("evf_sam.multitask", device="cuda")   # arch.tag
    >>> model = create_model("evf_sam", weights="/ckpt/evf-sam")    # arch + explicit args
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from evfbench.cards import ModelCard, SplitCard, model_cards, registry_root, split_cards
from evfbench.errors import EvfbenchError
from evfbench.models.base import SegmentationModel


class UnknownNameError(EvfbenchError, KeyError):
    """An unknown model or split name; the message offers the closest known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingBackendError(EvfbenchError, ImportError):
    """A model whose optional backend package is not installed."""


def _unknown(kind: str, name: str, known: list[str], listing: str) -> UnknownNameError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} '{name}'.{hint} `{listing}` lists them all.")


def list_models() -> list[str]:
    """Registered architectures."""
    return sorted(model_cards())


def list_pretrained() -> list[str]:
    """Every ``arch.tag`` weight name."""
    return sorted(f"{c.name}.{t}" for c in model_cards().values() for t in c.tags)


def list_splits() -> list[str]:
    """Canonical split names (aliases are accepted by :func:`get_split` too)."""
    return sorted({card.name for card in split_cards().values()})


def get_model_card(name: str) -> tuple[ModelCard, str | None]:
    """``arch`` or ``arch.tag`` -> (card, tag or None)."""
    arch, _, tag = name.partition(".")
    cards = model_cards()
    if arch not in cards:
        raise _unknown("model", name, list_models() + list_pretrained(), "python -m evfbench.ls models")
    card = cards[arch]
    if tag and tag not in card.tags:
        raise _unknown(
            f"weight tag of '{arch}'", name, [f"{arch}.{t}" for t in card.tags], "python -m evfbench.ls models"
        )
    return card, tag or None


def get_split(name: str) -> SplitCard:
    cards = split_cards()
    if name not in cards:
        raise _unknown("split", name, sorted(cards), "python -m evfbench.ls splits")
    return cards[name]


REGISTRY_PREFIX = "registry:"


def model_args(name: str, **overrides: Any) -> dict[str, Any]:
    """The builder arguments for ``name``: card defaults, then the tag's, then ``overrides``.

    A card value ``registry:weights/x`` names a file shipped with the cards and becomes its path.
    """
    card, tag = get_model_card(name)
    args = dict(card.args)
    if tag:
        args.update(card.tags[tag].args)
    for key, value in args.items():
        if isinstance(value, str) and value.startswith(REGISTRY_PREFIX):
            args[key] = str(registry_root() / value[len(REGISTRY_PREFIX):])
    args.update(overrides)
    return args


def _import_builder(card: ModelCard) -> Any:
    module_name, _, attr = card.builder.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        extras = ",".join(card.extras) or "all"
        raise MissingBackendError(
            f"model '{card.name}' needs the optional package '{err.name}', which is not installed.\n"
            f"  fix: pip install 'evfbench[{extras}]' -c constraints.txt   (see README, set-up)"
        ) from err
    return getattr(module, attr)


def create_model(name: str, **overrides: Any) -> SegmentationModel:
    """Build a registered model: ``create_model("box")``, ``create_model("evf_sam.multitask")``."""
    card, _ = get_model_card(name)
    builder = _import_builder(card)
    args = model_args(name, **overrides)
    try:
        inspect.signature(builder).bind(**args)
    except TypeError as err:
        raise EvfbenchError(
            f"model '{name}' cannot take the arguments {sorted(args)}: {err}.\n"
            f"  it accepts: {inspect.signature(builder)}  (card: {card.path})"
        ) from err
    return builder(**args)
