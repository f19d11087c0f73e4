"""Reference rows: models that need no weights and bound what a real model can score.

``oracle`` (the ground truth: cIoU = gIoU = 1), ``empty`` (nothing: 0), ``box`` (the
ground-truth box filled: how much a perfect detector without masks gets), the text-agnostic
``all_objects`` (union of every annotated object) and ``largest`` (the largest object), which
show what a model scores without reading the text, and ``predictions``, which scores a file
of masks produced elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evfbench.data.masks import decode_rle
from evfbench.data.types import ImageGroup
from evfbench.errors import EvfbenchError
from evfbench.models.base import SegmentationModel


class Oracle(SegmentationModel):
    """The ground-truth mask itself."""

    uses_ground_truth = True

    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        return np.stack([group.target_mask(s) for s in group.samples])


class Empty(SegmentationModel):
    """An all-background mask for every expression."""

    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        return np.zeros((len(group.samples), group.height, group.width), dtype=bool)


def _fill_box(out: np.ndarray, bbox: tuple[float, float, float, float]) -> None:
    """Fill a COCO ``[x, y, w, h]`` box, covering every pixel the box touches."""
    x, y, w, h = bbox
    height, width = out.shape
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
    out[y0:y1, x0:x1] = True


class Box(SegmentationModel):
    """The target's ground-truth box, filled."""

    uses_ground_truth = True

    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        out = np.zeros((len(group.samples), group.height, group.width), dtype=bool)
        for i, sample in enumerate(group.samples):
            for ann_id in sample.ann_ids:
                _fill_box(out[i], group.annotations[ann_id].bbox)
        return out


class AllObjects(SegmentationModel):
    """Text-agnostic: the union of every annotated object in the image, for every expression."""

    uses_ground_truth = True

    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        union = np.zeros((group.height, group.width), dtype=bool)
        for ann in group.annotations.values():
            union |= ann.mask(group.height, group.width)
        return np.broadcast_to(union, (len(group.samples), *union.shape))


class Largest(SegmentationModel):
    """Text-agnostic: the object with the largest mask in the image, for every expression."""

    uses_ground_truth = True

    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        masks = [ann.mask(group.height, group.width) for ann in group.annotations.values()]
        largest = max(masks, key=np.count_nonzero, default=np.zeros((group.height, group.width), dtype=bool))
        return np.broadcast_to(largest, (len(group.samples), *largest.shape))


class PredictionsError(EvfbenchError):
    """A predictions file that is missing, malformed, or does not cover the split."""


class Predictions(SegmentationModel):
    """Masks from a JSON-lines file: ``{"sent_id": int, "segmentation": {"size": [h, w], "counts": str}}``.

    Lets any external model be scored with exactly the same metric code. A sentence missing
    from the file is an error (scoring it as empty would silently flatter nobody but confuse
    everybody); ``missing=empty`` opts into that explicitly.
    """

    def __init__(self, path: str, missing: str = "error", **kwargs: object) -> None:
        super().__init__(**kwargs)
        if missing not in {"error", "empty"}:
            raise PredictionsError(f"predictions: missing must be 'error' or 'empty', not {missing!r}")
        self.path = Path(path)
        self.missing = missing
        self.rles = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[int, dict]:
        if not path.is_file():
            raise PredictionsError(f"predictions file not found: {path}\n  fix: pass --model-args path=FILE")
        rles: dict[int, dict] = {}
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    sent_id, seg = int(row["sent_id"]), row["segmentation"]
                    if not (isinstance(seg, dict) and "size" in seg and "counts" in seg):
                        raise KeyError("segmentation.size/counts")
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                    raise PredictionsError(
                        f"{path}:{lineno}: not a prediction line ({err}); expected "
                        '{"sent_id": int, "segmentation": {"size": [h, w], "counts": str}}'
                    ) from err
                if sent_id in rles:
                    raise PredictionsError(f"{path}:{lineno}: sent_id {sent_id} appears twice")
                rles[sent_id] = seg
        return rles

    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        out = np.zeros((len(group.samples), group.height, group.width), dtype=bool)
        for i, sample in enumerate(group.samples):
            rle = self.rles.get(sample.sent_id)
            if rle is None:
                if self.missing == "error":
                    raise PredictionsError(
                        f"{self.path} has no prediction for sent_id {sample.sent_id}; "
                        "fix: add it, or pass --model-args missing=empty to score it as an empty mask"
                    )
                continue
            if tuple(rle["size"]) != (group.height, group.width):
                raise PredictionsError(
                    f"{self.path}: sent_id {sample.sent_id} has a mask of size {rle['size']} but image "
                    f"{group.image_id} is {[group.height, group.width]} (masks must be at the original size)"
                )
            out[i] = decode_rle(rle)
        return out

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "path": str(self.path)}
