"""Referring-segmentation metrics in the EVF-SAM / LISA convention, streamed.

Per sentence: ``I = |P & G|``, ``U = |P | G|`` at the original image resolution, with
``P = logits > 0`` and ``G`` in {0, 1}; ``IoU = I / U`` and ``IoU = 1`` when ``U == 0``.

* **cIoU** = sum I / sum U over the split (the paper's main metric, a.k.a. oIoU);
* **gIoU** = mean per-sentence IoU (the mIoU of most RES papers);
* **P@X** = share of sentences with ``IoU >= X`` for X in 0.5..0.9 (LAVT's convention).

Memory does not grow with the number of samples: the accumulator keeps integer sums, hit
counts, and the gIoU sum as exact floating-point partials (Shewchuk's algorithm, as in
:func:`math.fsum`), so the result does not depend on the order of the samples or on how
they were split across processes; merging shards gives bit-identical numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import numpy as np

CONVENTION = (
    "evf_sam/lisa: prediction = logits > 0 at the original resolution; per sentence I = |P&G|, "
    "U = |P|G|, IoU = I/U (1 when U = 0); ciou = sum I / sum U; giou = mean IoU; "
    "p@X = share of sentences with IoU >= X"
)
THRESHOLDS_TENTHS = (5, 6, 7, 8, 9)  # P@0.5 .. P@0.9, kept as integers so the test is exact


def intersection_union(pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Exact ``(I, U)`` of two boolean masks of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the ground truth's {target.shape}")
    pred = pred.astype(bool, copy=False)
    target = target.astype(bool, copy=False)
    inter = int(np.count_nonzero(pred & target))
    union = int(np.count_nonzero(pred)) + int(np.count_nonzero(target)) - inter
    return inter, union


def iou(inter: int, union: int) -> float:
    return 1.0 if union == 0 else inter / union


def add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to the exact sum held as non-overlapping float partials (Shewchuk / msum)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


@dataclass
class MetricAccumulator:
    """Streaming sums of one split; :meth:`merge` combines shards exactly."""

    n: int = 0
    inter: int = 0
    union: int = 0
    hits: list[int] = field(default_factory=lambda: [0] * len(THRESHOLDS_TENTHS))
    iou_partials: list[float] = field(default_factory=list)

    def add(self, inter: int, union: int) -> float:
        """Count one sentence; returns its IoU."""
        if inter < 0 or union < inter:
            raise ValueError(f"invalid intersection/union pair ({inter}, {union})")
        value = iou(inter, union)
        self.n += 1
        self.inter += inter
        self.union += union
        for k, tenths in enumerate(THRESHOLDS_TENTHS):
            # IoU >= t/10  <=>  10 I >= t U  (and an empty union counts as IoU 1)
            if union == 0 or 10 * inter >= tenths * union:
                self.hits[k] += 1
        add_exact(self.iou_partials, value)
        return value

    def merge(self, other: MetricAccumulator) -> None:
        self.n += other.n
        self.inter += other.inter
        self.union += other.union
        self.hits = [a + b for a, b in zip(self.hits, other.hits)]
        for p in other.iou_partials:
            add_exact(self.iou_partials, p)

    def compute(self) -> dict[str, float]:
        """``{ciou, giou, p@0.5, ..., p@0.9}`` as fractions in [0, 1]."""
        if self.n == 0:
            raise ValueError("no samples were scored")
        out = {
            "ciou": 1.0 if self.union == 0 else self.inter / self.union,
            "giou": math.fsum(self.iou_partials) / self.n,
        }
        for tenths, hit in zip(THRESHOLDS_TENTHS, self.hits):
            out[f"p@0.{tenths}"] = hit / self.n
        return out
