"""The records every loader produces and every model and metric consumes.

One evaluation sample is one sentence (a referring expression). Samples are grouped by
image so that a model can embed each image once for all of its expressions.

Conventions: images are RGB ``HWC uint8`` arrays; masks are ``bool`` arrays of shape
``(H, W)`` at the original image size; boxes are COCO ``[x, y, w, h]`` in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evfbench.data import masks
from evfbench.data.images import read_image


@dataclass(frozen=True)
class Annotation:
    """One object of an image, as in ``instances.json`` (polygons, RLE or empty)."""

    ann_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    segmentation: Any
    area: float = 0.0
    attributes: dict[str, Any] = field(default_factory=dict)  # ``attributes`` of the COCO record (shapes: color, size)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Ground-truth mask ``(H, W) bool``; polygon parts are unioned, empty means all-zero."""
        return masks.decode_segmentation(self.segmentation, height, width)


@dataclass(frozen=True)
class Sample:
    """One sentence referring to one object (``ann_ids`` has one id; empty = no target)."""

    sent_id: int
    ref_id: int
    image_id: int
    text: str
    ann_ids: tuple[int, ...]
    category_id: int = -1
    split: str = ""
    kind: str = ""  # the sentence's grammar rule when the corpus records one (shapes); "semantic" for category prompts

    @property
    def ann_id(self) -> int:
        """The single target of a classic referring expression."""
        if len(self.ann_ids) != 1:
            raise ValueError(f"sentence {self.sent_id} refers to {len(self.ann_ids)} objects, not one")
        return self.ann_ids[0]


@dataclass
class ImageGroup:
    """An image with every sample that refers into it and every annotated object in it."""

    image_id: int
    path: Path
    height: int
    width: int
    samples: list[Sample] = field(default_factory=list)
    annotations: dict[int, Annotation] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]

    def target_mask(self, sample: Sample) -> np.ndarray:
        """Union of the sample's target objects as ``(H, W) bool`` (all-zero without a target)."""
        out = np.zeros((self.height, self.width), dtype=bool)
        for ann_id in sample.ann_ids:
            out |= self.annotations[ann_id].mask(self.height, self.width)
        return out

    def load_image(self) -> np.ndarray:
        """The image as RGB ``HWC uint8``; a missing or corrupt file names itself and the fix."""
        return read_image(self.path, expected_size=(self.height, self.width))
