"""Reference rows on a hand-made image group (no files needed but for predictions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evfbench.data.masks import encode_rle
from evfbench.data.types import Annotation, ImageGroup, Sample
from evfbench.errors import EvfbenchError
from evfbench.metrics import intersection_union
from evfbench.models.reference import AllObjects, Box, Empty, Largest, Oracle, Predictions

H, W = 6, 8


def _group() -> ImageGroup:
    small = np.zeros((H, W), bool)
    small[1:3, 1:3] = True  # 4 px
    big = np.zeros((H, W), bool)
    big[3:6, 4:8] = True  # 12 px
    anns = {
        10: Annotation(10, 1, (1, 1, 2, 2), encode_rle(small)),
        # a polygon triangle whose box (4..8 x 3..6) is larger than its mask
        11: Annotation(11, 2, (4, 3, 4, 3), encode_rle(big)),
        12: Annotation(12, 2, (0.5, 4.5, 1.0, 1.0), []),  # empty segmentation
    }
    samples = [Sample(1, 100, 7, "the small one", (10,)), Sample(2, 101, 7, "the big one", (11,))]
    return ImageGroup(7, Path("unused.png"), H, W, samples, anns)


def test_oracle_and_empty() -> None:
    g = _group()
    image = np.zeros((H, W, 3), np.uint8)
    oracle = Oracle().predict(image, g)
    assert [intersection_union(m, g.target_mask(s)) for m, s in zip(oracle, g.samples)] == [(4, 4), (12, 12)]
    empty = Empty().predict(image, g)
    assert empty.shape == (2, H, W) and not empty.any()


def test_box_covers_every_touched_pixel() -> None:
    g = _group()
    boxes = Box().predict(np.zeros((H, W, 3), np.uint8), g)
    assert boxes[0].sum() == 4 and boxes[0][1:3, 1:3].all()
    assert boxes[1].sum() == 12
    # a fractional box (x 0.5..1.5, y 4.5..5.5) touches 2x2 pixels
    g.samples[0] = Sample(1, 100, 7, "x", (12,))
    assert Box().predict(np.zeros((H, W, 3), np.uint8), g)[0].sum() == 4


def test_text_agnostic_rows() -> None:
    g = _group()
    image = np.zeros((H, W, 3), np.uint8)
    union = AllObjects().predict(image, g)
    assert union.shape == (2, H, W) and union[0].sum() == 16 and (union[0] == union[1]).all()
    largest = Largest().predict(image, g)
    assert largest[0].sum() == 12 and largest[1].sum() == 12


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_predictions_file_round_trip(tmp_path: Path) -> None:
    g = _group()
    mask = np.zeros((H, W), bool)
    mask[0, :] = True
    path = _write(tmp_path / "p.jsonl", [{"sent_id": 1, "segmentation": encode_rle(mask)},
                                          {"sent_id": 2, "segmentation": encode_rle(~mask)}])
    out = Predictions(str(path)).predict(np.zeros((H, W, 3), np.uint8), g)
    assert (out[0] == mask).all() and (out[1] == ~mask).all()


def test_predictions_errors_name_file_and_fix(tmp_path: Path) -> None:
    g = _group()
    image = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(EvfbenchError, match="(?s)not found.*path=FILE"):
        Predictions(str(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sent_id": 1}\n')
    with pytest.raises(EvfbenchError, match=r"bad.jsonl:1: not a prediction line"):
        Predictions(str(bad))
    only_one = _write(tmp_path / "one.jsonl", [{"sent_id": 1, "segmentation": encode_rle(np.zeros((H, W), bool))}])
    with pytest.raises(EvfbenchError, match="(?s)no prediction for sent_id 2.*missing=empty"):
        Predictions(str(only_one)).predict(image, g)
    assert not Predictions(str(only_one), missing="empty").predict(image, g).any()
    wrong = _write(tmp_path / "w.jsonl", [{"sent_id": 1, "segmentation": encode_rle(np.zeros((3, 3), bool))},
                                           {"sent_id": 2, "segmentation": encode_rle(np.zeros((3, 3), bool))}])
    with pytest.raises(EvfbenchError, match="original size"):
        Predictions(str(wrong)).predict(image, g)
