"""What a wrong mask covers: the target and other objects, another object, nothing whole.

cIoU says how much is wrong, not how. The refer layout's ``instances.json`` holds every object
of an image, not only the referred ones, so each saved prediction can be compared with each
object: a model that hedges (the target plus the objects it cannot tell apart from it) fails
differently from one that confidently picks another object, and the two call for different
fixes. Each sentence gets one outcome:

- ``correct``: IoU >= 0.5 (the sentences P@0.5 counts);
- ``target + others``: covers the target and at least one other object;
- ``poor mask``: covers the target and no other object, but IoU < 0.5 (spills onto the
  background, or cuts the target);
- ``another object``: covers one other object, not the target;
- ``other objects``: covers several other objects, not the target;
- ``no object``: covers no object (empty, or fragments).

"Covers" an object: at least half of that object's pixels are predicted (the target: half of
the union of its annotations). Needs runs made with ``--save-masks``.

    python -m evfbench.outcomes --runs runs/demo --split shapes_val --output-dir reports/shapes

Rows per model over every sentence, then per sentence kind where the corpus records one
(shapes: the grammar rule of each sentence).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from evfbench.data import default_data_root, load_split
from evfbench.data.masks import decode_rle
from evfbench.data.types import Sample
from evfbench.errors import EvfbenchError, cli
from evfbench.io import atomic_write_figure, atomic_write_text
from evfbench.registry import get_split
from evfbench.results import add_run_arguments, saved_masks, selected_runs

OUTCOMES = ("correct", "target + others", "poor mask", "another object", "other objects", "no object")
COVER = 0.5  # share of an object's pixels a prediction must hold to cover it
COLOURS = ("#2ca02c", "#ff7f0e", "#bcbd22", "#d62728", "#9467bd", "#7f7f7f")


def outcome(pred: np.ndarray, sample: Sample, objects: dict[int, np.ndarray]) -> str:
    """The outcome of one predicted mask (``objects``: every annotation's mask of the image,
    decoded once for every model and sentence; the target is the union of the sample's)."""
    target = np.zeros(pred.shape, dtype=bool)
    for ann_id in sample.ann_ids:
        target |= objects[ann_id]
    inter, union = int((pred & target).sum()), int((pred | target).sum())
    if union == 0 or inter / union >= 0.5:
        return "correct"
    hits_target = target.any() and inter >= COVER * target.sum()  # a sentence may have no target
    others = [i for i, m in objects.items()
              if i not in sample.ann_ids and m.any() and (pred & m).sum() >= COVER * m.sum()]
    if hits_target:
        return "target + others" if others else "poor mask"
    return {0: "no object", 1: "another object"}.get(len(others), "other objects")


def outcome_table(runs: list[Path], split: str, data_root: Path | None = None) -> pd.DataFrame:
    """Share (%) of each outcome per run (rows ``model``, ``kind``): over every sentence
    (``kind`` "all") and, where the corpus records one (shapes: the grammar rule), per
    sentence kind. A ``sentences`` column counts them."""
    models = [saved_masks(run) for run in runs]
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for group in load_split(get_split(split), data_root or default_data_root()):
        scored = [s for s in group.samples if any(s.sent_id in recs for _, recs in models)]
        if not scored:
            continue
        objects = {i: a.mask(group.height, group.width) for i, a in group.annotations.items()}
        for sample in scored:
            keys = ["all"] + ([sample.kind] if sample.kind else [])
            for name, records in models:
                if sample.sent_id not in records:
                    continue
                result = outcome(decode_rle(records[sample.sent_id]["segmentation"]), sample, objects)
                for key in keys:
                    counts.setdefault((name, key), dict.fromkeys(OUTCOMES, 0))[result] += 1
    if not counts:
        raise EvfbenchError(f"the runs {', '.join(map(str, runs))} hold no saved mask of {split}")
    rows = []
    for (name, key), c in counts.items():
        n = sum(c.values())
        rows.append({"model": name, "kind": key, **{k: 100 * v / n for k, v in c.items()}, "sentences": n})
    table = pd.DataFrame(rows)
    order = {name: i for i, (name, _) in enumerate(models)}
    table["_m"] = table["model"].map(order)
    table["_k"] = table["kind"].ne("all")
    return table.sort_values(["_k", "kind", "_m"]).drop(columns=["_m", "_k"]).reset_index(drop=True)


def plot_outcomes(table: pd.DataFrame, title: str) -> Figure:
    """Stacked horizontal bars, one per model (the ``all`` rows)."""
    rows = table[table["kind"] == "all"]
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.4))
    ax = fig.subplots()
    left = np.zeros(len(rows))
    for name, colour in zip(OUTCOMES, COLOURS):
        ax.barh(rows["model"], rows[name], left=left, color=colour, label=name)
        left += rows[name].to_numpy()
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of sentences")
    ax.set_title(title, fontsize=10)
    ax.legend(ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(rows) < 4 else -0.12))
    fig.tight_layout()
    return fig


def write_outcomes(table: pd.DataFrame, output_dir: Path, split: str, name: str = "outcomes") -> list[Path]:
    """``<name>.csv``, ``<name>.md`` (every sentence, then per kind) and ``<name>.png``."""
    output_dir = Path(output_dir)
    pretty = table.round(1)
    overall = pretty[pretty["kind"] == "all"].drop(columns="kind")
    parts = [f"# What the masks cover on {split} (% of sentences)\n",
             "Outcomes as defined in `evfbench/outcomes.py`: an object is covered when at least half of its "
             "pixels are predicted. Regenerate: `python -m evfbench.outcomes`.\n",
             overall.to_markdown(index=False)]
    by_kind = pretty[pretty["kind"] != "all"]
    if len(by_kind):
        parts += ["\n## By sentence kind\n", by_kind.to_markdown(index=False)]
    paths = [output_dir / f"{name}.csv", output_dir / f"{name}.md", output_dir / f"{name}.png"]
    atomic_write_text(paths[0], table.to_csv(index=False, float_format="%.2f"))
    atomic_write_text(paths[1], "\n".join(parts) + "\n")
    atomic_write_figure(paths[2], plot_outcomes(table, f"{split}: what the predicted masks cover"), dpi=90)
    return paths


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evfbench.outcomes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "runs made with --save-masks")
    p.add_argument("--output-dir", type=Path, required=True)
    args = p.parse_args(argv)
    split, runs = selected_runs(args)
    for path in write_outcomes(outcome_table(runs, split, args.data_root), args.output_dir, split):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
