"""``python -m evfbench.prep <dataset> [options]``: build or validate one corpus.

Each dataset has its own pipeline module with a ``main(argv)``; ``--help`` after the dataset
name shows its options.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from evfbench.errors import cli

PIPELINES = {
    "shapes": "evfbench.prep.shapes",
    "refcoco": "evfbench.prep.refer",
    "refcoco+": "evfbench.prep.refer",
    "refcocoplus": "evfbench.prep.refer",
    "refcocog": "evfbench.prep.refer",
    "refclef": "evfbench.prep.refer",
}


@cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        print("\ndatasets: " + ", ".join(PIPELINES))
        return 0 if argv else 2
    dataset, rest = argv[0], argv[1:]
    if dataset not in PIPELINES:
        close = difflib.get_close_matches(dataset, list(PIPELINES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        print(f"unknown dataset '{dataset}'.{hint} Known: {', '.join(PIPELINES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(PIPELINES[dataset])
    return int(module.main([dataset, *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())
