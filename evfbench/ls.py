"""``python -m evfbench.ls [models|splits]``: what the registry knows, from its cards."""

from __future__ import annotations

import argparse
import re
import sys

import pandas as pd

from evfbench.cards import model_cards, split_cards


def first_sentence(text: str, limit: int = 110) -> str:
    """The card's opening sentence ("et al." does not end one), cut to ``limit`` characters."""
    head = re.split(r"(?<!et al)\.\s+(?=[A-Z(])", text, maxsplit=1)[0].rstrip(".")
    return head if len(head) <= limit else head[: limit - 1].rstrip() + "…"


def models_table() -> pd.DataFrame:
    rows = []
    for card in model_cards().values():
        rows.append({
            "model": card.name,
            "group": card.group,
            "weights": ", ".join(f"{card.name}.{t}" for t in card.tags) or "-",
            "extras": ",".join(card.extras) or "-",
            "description": first_sentence(card.description),
        })
    return pd.DataFrame(rows).sort_values(["group", "model"]).reset_index(drop=True)


def splits_table() -> pd.DataFrame:
    rows, seen = [], set()
    for alias, card in split_cards().items():
        if card.name in seen:
            continue
        seen.add(card.name)
        aliases = sorted(a for a, c in split_cards().items() if c is card and a != card.name)
        rows.append({
            "split": card.name,
            "dataset": card.dataset,
            "split_by": card.split_by,
            "refs": card.counts.get("refs", "-"),
            "sentences": card.counts.get("sentences", "-"),
            "images": card.counts.get("images", "-"),
            "aliases": ", ".join(aliases) or "-",
        })
    return pd.DataFrame(rows).sort_values(["dataset", "split_by", "split"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evfbench.ls", description=__doc__)
    p.add_argument("what", nargs="?", choices=["models", "splits", "all"], default="all")
    args = p.parse_args(argv)
    if args.what in {"models", "all"}:
        print("Models (python -m evfbench.run --model NAME; weights as NAME.TAG)\n")
        print(models_table().to_markdown(index=False))
    if args.what in {"splits", "all"}:
        if args.what == "all":
            print()
        print("Splits (python -m evfbench.run --split NAME)\n")
        print(splits_table().to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
