"""Mask codecs: COCO polygons and RLE to ``(H, W) bool`` arrays and back (via pycocotools).

The reference RES decoders rasterise each polygon part separately and sum the parts, so
overlapping parts would count twice; we take their union, i.e. the sum clipped to {0, 1}.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygon list, RLE dict, or empty) -> ``(H, W) bool``."""
    if segmentation is None or (isinstance(segmentation, (list, tuple)) and len(segmentation) == 0):
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, height, width)
        return decode_rle(rle)
    polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(polygons, height, width)
    parts = mask_utils.decode(rles)  # (H, W, n_parts) uint8
    return parts.any(axis=2)


def decode_rle(rle: dict) -> np.ndarray:
    """Compressed COCO RLE (``counts`` as str or bytes) -> ``(H, W) bool``."""
    counts = rle["counts"]
    if isinstance(counts, str):
        rle = {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def encode_rle(mask: np.ndarray) -> dict:
    """``(H, W) bool`` -> JSON-ready compressed RLE ``{"size": [h, w], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}
