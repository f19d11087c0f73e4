"""Metrics on hand-computed cases, exactness and order independence."""

from __future__ import annotations

import math
import random
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

from evfbench.metrics import MetricAccumulator, add_exact, intersection_union


def test_intersection_union_by_hand() -> None:
    pred = np.zeros((4, 5), dtype=bool)
    gt = np.zeros((4, 5), dtype=bool)
    pred[0:2, 0:3] = True  # 6 px
    gt[1:3, 1:4] = True  # 6 px, overlap rows 1, cols 1..2 = 2 px
    assert intersection_union(pred, gt) == (2, 10)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_ciou_giou_and_precision_by_hand() -> None:
    acc = MetricAccumulator()
    # (I, U): IoU 2/10 = 0.2, 9/10 = 0.9, 5/10 = 0.5, empty/empty = 1, 0/4 = 0
    for inter, union in [(2, 10), (9, 10), (5, 10), (0, 0), (0, 4)]:
        acc.add(inter, union)
    m = acc.compute()
    assert m["ciou"] == pytest.approx(16 / 34)
    assert m["giou"] == pytest.approx((0.2 + 0.9 + 0.5 + 1.0 + 0.0) / 5)
    # IoU >= X: 0.5 -> {0.9, 0.5, 1}; 0.6..0.9 -> {0.9, 1}
    assert m["p@0.5"] == pytest.approx(3 / 5)
    for x in ("p@0.6", "p@0.7", "p@0.8", "p@0.9"):
        assert m[x] == pytest.approx(2 / 5)


def test_threshold_is_exact_at_the_boundary() -> None:
    """7/10 is 0.7 exactly as a fraction; float division might land a hair below."""
    acc = MetricAccumulator()
    acc.add(7, 10)
    acc.add(699_999, 1_000_000)
    assert acc.compute()["p@0.7"] == 0.5


def test_empty_union_counts_as_one() -> None:
    acc = MetricAccumulator()
    acc.add(0, 0)
    assert acc.compute() == {"ciou": 1.0, "giou": 1.0, "p@0.5": 1.0, "p@0.6": 1.0, "p@0.7": 1.0,
                             "p@0.8": 1.0, "p@0.9": 1.0}


def test_invalid_pairs_and_empty_split() -> None:
    with pytest.raises(ValueError):
        MetricAccumulator().add(5, 3)
    with pytest.raises(ValueError, match="no samples"):
        MetricAccumulator().compute()


def test_giou_is_exact_and_order_independent() -> None:
    rng = random.Random(0)
    pairs = [(i, i + rng.randint(1, 10**6)) for i in (rng.randint(0, 10**6) for _ in range(3000))]
    exact = sum(Fraction(i, u) for i, u in pairs) / len(pairs)
    results = set()
    for _ in range(3):
        rng.shuffle(pairs)
        acc = MetricAccumulator()
        for i, u in pairs:
            acc.add(i, u)
        results.add(acc.compute()["giou"])
    assert len(results) == 1
    # correctly rounded sum, then one division: within an ulp or two of the exact mean
    assert abs(Fraction(results.pop()) - exact) < Fraction(1, 10**15)


def test_sharded_merge_equals_single_pass() -> None:
    rng = random.Random(1)
    pairs = [(i, i + rng.randint(0, 500)) for i in (rng.randint(0, 500) for _ in range(1000))]
    whole = MetricAccumulator()
    for p in pairs:
        whole.add(*p)
    shards = [MetricAccumulator() for _ in range(3)]
    for k, p in enumerate(pairs):
        shards[k % 3].add(*p)
    merged = MetricAccumulator()
    for s in reversed(shards):
        merged.merge(s)
    assert merged.compute() == whole.compute()
    assert (merged.n, merged.inter, merged.union, merged.hits) == (whole.n, whole.inter, whole.union, whole.hits)


def test_exact_partials_cancel() -> None:
    partials: list[float] = []
    for x in (1e16, 1.0, -1e16, 1e-16):
        add_exact(partials, x)
    assert math.fsum(partials) == 1.0 + 1e-16


def test_memory_does_not_grow_with_samples() -> None:
    acc = MetricAccumulator()
    rng = random.Random(2)
    for _ in range(2000):
        acc.add(rng.randint(0, 100), 100 + rng.randint(0, 100))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(20000):
        acc.add(rng.randint(0, 100), 100 + rng.randint(0, 100))
    growth = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(acc.iou_partials) < 64
    assert growth < 16_000, f"accumulator grew by {growth} bytes over 20,000 samples"
