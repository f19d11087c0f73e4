"""``python -m evfbench.prep <refcoco|refcoco+|refcocog|refclef> --data-root DIR``: check a download.

Checks that the refer files are where the reader looks (naming each missing one and where it
comes from), counts refs / sentences / images of every split of the partition against the
counts published in its split card, and reads a sample of the images (``--check-images N``,
or ``all``). Prints a table with OK / MISMATCH per cell; exits non-zero when a file is missing
or an image is unreadable (a count mismatch is reported, not fatal: HF conversions differ).

``--from-hf SOURCE`` first converts a Hugging Face copy (a save_to_disk folder, a folder of
parquet files, or a hub id such as ``jxu124/refcoco``) into the refer layout, then checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from evfbench.cards import SplitCard
from evfbench.data import default_data_root
from evfbench.data.images import ImageError, read_image
from evfbench.data.refer import INSTANCES, PROVENANCE, Refer, dataset_cards, default_split_by, refs_file
from evfbench.errors import EvfbenchError

IMAGE_SOURCES = {
    "images/mscoco/images/train2014": "MS-COCO train2014 images, http://images.cocodataset.org/zips/train2014.zip",
    "images/saiapr_tc-12": "SAIAPR TC-12 images, https://www.imageclef.org/SIAPRdata (saiapr_tc-12.zip)",
}
SHOWN_FAILURES = 10


def _check_images_arg(value: str) -> int | None:
    """``all`` -> None (every image), else a count >= 0."""
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got '{value}'") from None
    if n < 0:
        raise argparse.ArgumentTypeError("expected a number >= 0")
    return n


def build_parser(dataset: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m evfbench.prep {dataset}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=None,
                   help="datasets root (default: $EVFBENCH_DATA, else ~/.cache/evfbench/data)")
    p.add_argument("--split-by", default=None, help="partition, e.g. unc, google, umd (default: the standard one)")
    p.add_argument("--check-images", type=_check_images_arg, default=100, metavar="N|all",
                   help="read N images spread over the partition, or all (default: 100)")
    p.add_argument("--from-hf", default=None, metavar="SOURCE",
                   help="first convert this HF copy (save_to_disk folder, parquet folder or hub id)")
    p.add_argument("--overwrite", action="store_true", help="with --from-hf: replace existing refer files")
    return p


def missing_files(root: Path, cards: list[SplitCard]) -> list[str]:
    """One line per missing file or folder: its path and where it comes from."""
    card = cards[0]
    folder = root / card.dataset
    lines = []
    try:
        refs_file(folder, card.split_by)
    except EvfbenchError:
        others = sorted(p.name for p in folder.glob("*refs(*)*")) if folder.is_dir() else []
        hint = f"; the folder holds {', '.join(others)}: is --split-by right?" if others else ""
        lines.append(f"missing {folder / f'refs({card.split_by}).p'}  (from {card.source}){hint}")
    if not (root / card.dataset / INSTANCES).is_file():
        lines.append(f"missing {root / card.dataset / INSTANCES}  (from {card.source})")
    if not (root / card.image_root).is_dir():
        source = IMAGE_SOURCES.get(card.image_root, "the dataset's images")
        lines.append(f"missing {root / card.image_root}/  (from {source})")
    return lines


def _cell(found: int, card: SplitCard, key: str) -> tuple[str, bool]:
    """``"1,975 OK"``, ``"12 MISMATCH (published 1,975)"`` or ``"3 (no published count)"``; bool = mismatch."""
    if key not in card.counts:
        return f"{found:,} (no published count)", False
    if found == card.counts[key]:
        return f"{found:,} OK", False
    return f"{found:,} MISMATCH (published {card.counts[key]:,})", True


def count_table(refer: Refer, cards: list[SplitCard]) -> tuple[pd.DataFrame, int]:
    """Refs / sentences / images per split against the published counts; returns (table, mismatches)."""
    rows, mismatches = [], 0
    for card in cards:
        refs = refer.load_refs(refer.get_ref_ids(split=card.split))
        found = {"refs": len(refs), "sentences": sum(len(r["sentences"]) for r in refs),
                 "images": len({r["image_id"] for r in refs})}
        row = {"split": card.name}
        for key, n in found.items():
            row[key], bad = _cell(n, card, key)
            mismatches += bad
        rows.append(row)
    return pd.DataFrame(rows, columns=["split", "refs", "sentences", "images"]), mismatches


def check_images(refer: Refer, n: int | None) -> tuple[int, int, list[str]]:
    """Read ``n`` images spread evenly over the partition's referred images (all if None).

    Returns (images read, images referred, error messages).
    """
    ids = refer.get_img_ids(ref_ids=list(refer.refs))
    total = len(ids)
    if n is not None and n < total:
        picks = np.linspace(0, total - 1, num=n).round().astype(int) if n else []
        ids = [ids[i] for i in picks]
    failures = []
    for image_id in tqdm(ids, desc=f"reading {refer.dataset} images", unit="img"):
        img = refer.imgs[image_id]
        try:
            read_image(refer.image_path(image_id), expected_size=(int(img["height"]), int(img["width"])))
        except ImageError as err:
            failures.append(str(err))
    return len(ids), total, failures


def validate(root: Path, cards: list[SplitCard], n_images: int | None) -> int:
    """Print the checks of one partition; 0 if usable, 1 if a file is missing or an image unreadable."""
    card = cards[0]
    print(f"{card.dataset} ({card.split_by}) under {root}")
    missing = missing_files(root, cards)
    if missing:
        print("\n".join(missing), file=sys.stderr)
        print(f"fix: unpack the files as drawn in evfbench/data/refer.py, then rerun "
              f"`python -m evfbench.prep {card.dataset} --data-root {root}`", file=sys.stderr)
        return 1
    try:
        refer = Refer(root, card.dataset, card.split_by, card.image_root)
    except EvfbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    table, mismatches = count_table(refer, cards)
    checked, total, failures = check_images(refer, n_images)
    print(table.to_markdown(index=False))
    print(f"images: read {checked:,} of {total:,}, {len(failures):,} unreadable")
    for message in failures[:SHOWN_FAILURES]:
        print(f"  {message}", file=sys.stderr)
    if len(failures) > SHOWN_FAILURES:
        print(f"  ... and {len(failures) - SHOWN_FAILURES} more", file=sys.stderr)
    provenance = refer.folder / PROVENANCE
    if provenance.is_file():
        info = json.loads(provenance.read_text(encoding="utf-8"))
        print(f"converted from {info.get('source')}: {info.get('note')}")
        for split, note in sorted(info.get("warnings", {}).items()):
            print(f"WARNING {split}: {note}")
    if mismatches:
        print(f"{mismatches} count(s) differ from the published ones: this is not the standard release "
              f"(or it is a converted copy); published numbers are not comparable")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    name, args = argv[0], build_parser(argv[0]).parse_args(argv[1:])
    cards = dataset_cards(name)
    if not cards:
        print(f"error: no split card for dataset '{name}'", file=sys.stderr)
        return 2
    split_by = args.split_by or default_split_by(name)
    partition = [c for c in cards if c.split_by == split_by]
    if not partition:
        known = sorted({c.split_by for c in cards})
        print(f"error: {name} has no partition '{split_by}'; known: {', '.join(known)}", file=sys.stderr)
        return 2
    root = args.data_root or default_data_root()
    if args.from_hf:
        from evfbench.data.hf import convert  # datasets is imported only when converting

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # validate() prints the copy's caveats from provenance.json
                folder = convert(args.from_hf, root, name, split_by, overwrite=args.overwrite)
        except EvfbenchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"converted {args.from_hf} -> {folder}")
    return validate(root, partition, args.check_images)
