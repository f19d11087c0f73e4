"""Overlay galleries: image, ground truth and each model's mask, with the expression.

    python -m evfbench.gallery --runs runs/demo --split shapes_val --output reports/shapes/gallery_val.png

Reads the masks that ``python -m evfbench.run --save-masks`` stored in ``samples.jsonl``; one
row per sentence (the same sentences for every model), one column per model.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from evfbench.data import default_data_root, load_split
from evfbench.data.masks import decode_rle
from evfbench.errors import EvfbenchError, cli
from evfbench.io import atomic_write_figure
from evfbench.registry import get_split
from evfbench.results import add_run_arguments, saved_masks, selected_runs

GT_COLOUR = np.array([0, 255, 255], dtype=np.uint8)
PRED_COLOUR = np.array([255, 0, 255], dtype=np.uint8)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbour erosion)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Dim everything outside ``mask`` and outline it, so the object keeps its own colours
    (tinting would turn a red shape under a green mask into brown)."""
    out = image.copy()
    out[~mask] = (out[~mask] * 0.35).astype(np.uint8)
    out[_outline(mask, max(1, min(mask.shape) // 100))] = colour
    return out


def render_gallery(runs: list[Path], split: str, output: Path, data_root: Path | None = None, n: int = 8) -> Path:
    """Draw ``n`` sentences that every run scored, spread evenly over the split."""
    card = get_split(split)
    models = [saved_masks(run) for run in runs]
    by_sent = {s.sent_id: (g, s) for g in load_split(card, data_root or default_data_root()) for s in g.samples}
    common = [sid for sid in by_sent if all(sid in recs for _, recs in models)]
    if not common:
        raise EvfbenchError(f"the runs {', '.join(map(str, runs))} share no sentence of {split} with saved masks")
    picks = [common[i] for i in np.linspace(0, len(common) - 1, num=min(n, len(common))).round().astype(int)]

    cols = 1 + len(models)
    fig = Figure(figsize=(2.4 * cols, 2.6 * len(picks)))
    axes = fig.subplots(len(picks), cols, squeeze=False)
    for row, sent_id in enumerate(picks):
        group, sample = by_sent[sent_id]
        image = group.load_image()
        ax = axes[row][0]
        ax.imshow(overlay(image, group.target_mask(sample), GT_COLOUR))
        ax.set_title("ground truth", fontsize=8)
        ax.set_ylabel("\n".join(textwrap.wrap(f'"{sample.text}"', 22)), fontsize=8)
        for col, (name, records) in enumerate(models, start=1):
            record = records[sent_id]
            axes[row][col].imshow(overlay(image, decode_rle(record["segmentation"]), PRED_COLOUR))
            axes[row][col].set_title(f"{name}  IoU {record['iou']:.2f}", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{split}: ground truth (cyan outline) and predictions (magenta outline)", fontsize=10)
    fig.tight_layout()
    atomic_write_figure(output, fig, dpi=80)
    return output


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evfbench.gallery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "runs made with --save-masks")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("-n", type=int, default=8, help="sentences to draw")
    args = p.parse_args(argv)
    split, runs = selected_runs(args)
    path = render_gallery(runs, split, args.output, args.data_root, args.n)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
