"""A tiny refer-format dataset in the real on-disk formats, with every trap of the layout.

``refs(<split_by>).p`` is written as a Python 2 pickle (byte strings, which Python 3 must
decode as latin-1); images are PNG files; ``instances.json`` is a COCO subset.

Images (height x width): 1 -> 20x30, 2 -> 16x24, 3 -> 12x12.
Annotations, with hand-computed mask areas (an axis-aligned polygon rectangle covers
exactly (x1 - x0) * (y1 - y0) pixels):

====  =====  ==========================================================  =====
ann   image  segmentation                                                area
====  =====  ==========================================================  =====
101   1      two polygons, squares [0,10)^2 and [5,15)^2 overlapping 5x5  175 (their sum: 200)
102   1      polygon, x 20..28, y 2..8                                   48
103   1      polygon, x 2..6, y 15..18; referred by no ref               12
201   2      compressed RLE, rows 1..4 x cols 2..5                       12
202   2      empty ([])                                                  0
203   2      uncompressed RLE, rows 10..12 x cols 10..15                 10
301   3      polygon, x 0..12, y 0..6                                    72
====  =====  ==========================================================  =====

Refs (sentence ids in brackets):

- 1: image 1, ann 101, testA, [11 "  Left SQUARE ", 12 raw-only "The BIG one"]
- 2: image 1, ann 102, testB, [13 "café sign" (a latin-1 byte in the pickle)]
- 3: image 2, ann 201, testAB, [21 "blob"]  -> in testA and in testB
- 4: image 2, ann 202, val, [22 "nothing here"]  -> all-zero ground truth
- 5: image 2, ann 203, val, [23 "small strip"]
- 6: image 3, ann 301, train, [33 "top half", 32 "upper part"] (out of order); its
  ``file_name`` names image 1's file on purpose: the reader must ignore it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evfbench.data.masks import encode_rle

SIZES = {1: (20, 30), 2: (16, 24), 3: (12, 12)}
AREAS = {101: 175, 102: 48, 103: 12, 201: 12, 202: 0, 203: 10, 301: 72}
SPLIT_SENTS = {"testA": [11, 12, 21], "testB": [13, 21], "val": [22, 23], "train": [32, 33]}
SPLIT_REFS = {"testA": [1, 3], "testB": [2, 3], "val": [4, 5], "train": [6], "test": [1, 2, 3], "testAB": [3]}
TEXTS = {11: "left square", 12: "the big one", 13: "café sign", 21: "blob", 22: "nothing here",
         23: "small strip", 32: "upper part", 33: "top half"}
IMAGE_ROOTS = {"refcoco": "images/mscoco/images/train2014", "refclef": "images/saiapr_tc-12"}


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def py2_pickle(obj: Any) -> bytes:
    """Pickle ``obj`` as Python 2's cPickle (protocol 2) would: every str as a byte string."""
    out = bytearray(b"\x80\x02")

    def emit(value: Any) -> None:
        if value is None:
            out.extend(b"N")
        elif isinstance(value, bool):
            out.extend(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            out.extend(b"J" + struct.pack("<i", value))
        elif isinstance(value, float):
            out.extend(b"G" + struct.pack(">d", value))
        elif isinstance(value, str):
            data = value.encode("latin-1")
            out.extend((b"U" + bytes([len(data)])) if len(data) < 256 else (b"T" + struct.pack("<I", len(data))))
            out.extend(data)
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                emit(item)
            out.extend(b"e")
        elif isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                emit(key)
                emit(item)
            out.extend(b"u")
        else:
            raise TypeError(type(value))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def image_name(dataset: str, image_id: int) -> str:
    """COCO-style names; refclef's carry a sub-path as SAIAPR's do."""
    if dataset == "refclef":
        return f"{image_id}/images/{image_id}.png"
    return f"COCO_train2014_{image_id:012d}.png"


def image_pixels(image_id: int) -> np.ndarray:
    h, w = SIZES[image_id]
    return np.random.default_rng(image_id).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _rle_block(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major flattening, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def refs_and_instances(dataset: str = "refcoco") -> tuple[list[dict], dict]:
    h2, w2 = SIZES[2]
    anns = [
        (101, 1, [rect(0, 0, 10, 10), rect(5, 5, 15, 15)], [0, 0, 15, 15]),
        (102, 1, [rect(20, 2, 28, 8)], [20, 2, 8, 6]),
        (103, 1, [rect(2, 15, 6, 18)], [2, 15, 4, 3]),
        (201, 2, encode_rle(_rle_block(h2, w2, slice(1, 4), slice(2, 6))), [2, 1, 4, 3]),
        (202, 2, [], [0, 0, 0, 0]),
        (203, 2, _uncompressed_rle(_rle_block(h2, w2, slice(10, 12), slice(10, 15))), [10, 10, 5, 2]),
        (301, 3, [rect(0, 0, 12, 6)], [0, 0, 12, 6]),
    ]
    instances = {
        "images": [{"id": i, "file_name": image_name(dataset, i), "height": h, "width": w}
                   for i, (h, w) in SIZES.items()],
        "annotations": [{"id": a, "image_id": i, "category_id": 1 if a < 200 else 2, "segmentation": seg,
                         "bbox": [float(v) for v in bbox], "area": float(AREAS[a]), "iscrowd": 0}
                        for a, i, seg, bbox in anns],
        "categories": [{"id": 1, "name": "square", "supercategory": "shape"},
                       {"id": 2, "name": "blob", "supercategory": "shape"}],
    }

    def ref(ref_id: int, ann_id: int, image_id: int, split: str, sents: list[dict]) -> dict:
        category = next(a["category_id"] for a in instances["annotations"] if a["id"] == ann_id)
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": category,
                "split": split, "sent_ids": [s["sent_id"] for s in sents],
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sentences": sents}

    def sent(sent_id: int, text: str, raw: str | None = None) -> dict:
        return {"sent_id": sent_id, "raw": raw or text, "sent": text, "tokens": text.split()}

    refs = [
        ref(1, 101, 1, "testA", [sent(11, "  Left SQUARE "), {"sent_id": 12, "raw": "The BIG one", "tokens": []}]),
        ref(2, 102, 1, "testB", [sent(13, "café sign")]),
        ref(3, 201, 2, "testAB", [sent(21, "blob")]),
        ref(4, 202, 2, "val", [sent(22, "nothing here")]),
        ref(5, 203, 2, "val", [sent(23, "small strip")]),
        ref(6, 301, 3, "train", [sent(33, "top half"), sent(32, "upper part")]),
    ]
    refs[5]["file_name"] = image_name(dataset, 1)  # wrong on purpose: an existing, different image
    return refs, instances


def write_images(root: Path, dataset: str = "refcoco") -> Path:
    folder = root / IMAGE_ROOTS[dataset]
    for image_id in SIZES:
        path = folder / image_name(dataset, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_pixels(image_id)).save(path, format="PNG")
    return folder


def write_fixture(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> Path:
    """Write the dataset under ``root`` (refs, instances.json, images); returns ``root / dataset``."""
    refs, instances = refs_and_instances(dataset)
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"refs({split_by}).p").write_bytes(py2_pickle(refs))
    (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    write_images(root, dataset)
    return folder
