"""Hugging Face copies of the refer datasets, converted once into the refer layout.

Every other part of evfbench reads one format, so an HF copy is not read at evaluation time:
:func:`convert` writes ``refs(<split_by>).p`` + ``instances.json`` (and the images, when the
copy carries them) under ``data_root``, then the ordinary reader (:mod:`evfbench.data.refer`)
takes over. CLI: ``python -m evfbench.prep refcoco --from-hf jxu124/refcoco --data-root DIR``.

A source is a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), a folder
of parquet files (the split is the file-name part before the first ``-``, as in the hub's
``data/testA-00000-of-00002.parquet``), one parquet file, or a hub id (needs the network; with
``HF_HUB_OFFLINE=1`` it fails with a message saying so). Parquet files are streamed with
pyarrow in batches, so a several-GB copy is neither held in memory nor copied into the HF cache.

Column layouts. No copy can be downloaded here, so these are assumptions taken from the dataset
cards and viewers; the tests write fixtures in exactly these layouts.

``jxu124/refcoco``, ``jxu124/refcocoplus``, ``jxu124/refcocog`` -- one row per ref, no image:
    ``ref_id, ann_id, image_id, category_id: int``, ``split: str``, ``sent_ids: list[int]``,
    ``file_name: str`` (the refer one, not an image file), ``sentences: list[{raw, sent, sent_id,
    tokens}]``, ``raw_anns: str`` (JSON of the COCO annotation ``{id, image_id, category_id,
    bbox, area, iscrowd, segmentation}``), ``raw_image_info: str`` (JSON ``{id, file_name,
    height, width, ...}``), ``raw_sentences: str`` (JSON of the sentence list); other columns
    (``image_path``, ``bbox``, ``captions``, ``global_image_id``, ...) are ignored.
    Trap: the HF splits are ``train / validation / test / testB`` and for the unc partitions
    (refcoco, refcoco+) ``test`` is testA. The refer split is the row's ``split`` column, else
    the HF split name, mapped ``validation -> val`` and, in a partition without a ``test``
    split, ``test -> testA``. Images come from the local COCO folder; without ``raw_image_info``
    the image is ``COCO_train2014_<id:012d>.jpg`` and its size is read from that file. Only
    referred objects are known, so ``instances.json`` lacks the others (text-agnostic
    baselines such as "largest object" see fewer objects than with refer's own file).

``lmms-lab/RefCOCO`` (and ``RefCOCOplus``, ``RefCOCOg``) -- parquet, one row per ref:
    ``question_id: str``, ``image: Image`` (``{bytes, path}``), ``question: str``,
    ``answer: list[str]`` (the sentences), ``segmentation: list[float]`` (ONE polygon),
    ``bbox: list[float]`` (COCO ``xywh``), ``iscrowd: int``, ``file_name: str``
    (``COCO_train2014_<id>.jpg``); splits ``val / test / testA / testB``. There are no ids: the
    image id is the ``image_id`` column if present, else the number in ``file_name``; objects
    are deduplicated per (image, bbox, polygon); ref and sentence ids are numbered in reading
    order. The images are written into the image folder. Caveats, repeated at every load via
    ``provenance.json``: one polygon per object (multi-part objects lose parts, so the ground
    truth differs from refer's), and its val mixes unc and google refs: NOT the standard val.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from PIL import Image

from evfbench.data.masks import decode_segmentation
from evfbench.data.refer import INSTANCES, PROVENANCE, ReferDataError, dataset_cards, default_split_by
from evfbench.data.refer_writer import write_refer
from evfbench.errors import EvfbenchError
from evfbench.io import atomic_write_bytes, atomic_write_json

HUB_IDS = {  # hub id -> (column layout, refer dataset)
    "jxu124/refcoco": ("jxu124", "refcoco"),
    "jxu124/refcocoplus": ("jxu124", "refcoco+"),
    "jxu124/refcocog": ("jxu124", "refcocog"),
    "lmms-lab/RefCOCO": ("lmms", "refcoco"),
    "lmms-lab/RefCOCOplus": ("lmms", "refcoco+"),
    "lmms-lab/RefCOCOg": ("lmms", "refcocog"),
}

COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

LMMS_POLYGON = ("ground truth keeps ONE polygon per object (the copy drops the other parts), "
                "so masks and scores differ from the refer annotations")
LMMS_VAL = ("this val mixes refs of the unc and google partitions: it is NOT the standard val; "
            "do not compare its numbers with published val results")
LMMS_TEST = "'test' is not a split of the standard partition (use testA / testB)"

SPLIT_ORDER = ("train", "validation", "val", "test", "testA", "testB", "testC")  # others follow, by name

Rows = Iterable[dict[str, Any]]


class HFSourceError(EvfbenchError):
    """An HF copy that cannot be read or does not have the expected columns."""


def _parquet_rows(files: list[Path]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()


def _raw_images(ds: Any) -> Any:
    """Keep image columns as ``{bytes, path}``: the bytes are written out as they are."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def _in_order(splits: dict[str, Rows]) -> dict[str, Rows]:
    """Splits in one order whatever the form of the copy, so the numbered ids do not depend on it."""
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return {k: splits[k] for k in sorted(splits, key=lambda k: (rank.get(k, len(rank)), k))}


def read_source(source: str | Path) -> dict[str, Rows]:
    """HF split name -> rows (dicts), from a local copy or a hub id; splits in :data:`SPLIT_ORDER`."""
    return _in_order(_read_source(source))


def _read_source(source: str | Path) -> dict[str, Rows]:
    import datasets

    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".parquet":
        return {path.stem.split("-")[0]: _parquet_rows([path])}
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                return {name: _raw_images(ds) for name, ds in loaded.items()}
            return {str(loaded.split) if loaded.split else path.name: _raw_images(loaded)}
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise HFSourceError(f"{path} holds neither a save_to_disk dataset (dataset_dict.json / state.json) "
                                f"nor parquet files\n  fix: pass the folder written by save_to_disk or the "
                                f"folder of the copy's parquet files")
        splits: dict[str, list[Path]] = {}
        for f in files:
            splits.setdefault(f.stem.split("-")[0], []).append(f)
        return {name: _parquet_rows(fs) for name, fs in splits.items()}
    if str(source).count("/") != 1 or str(source).startswith((".", "/", "~")):
        raise HFSourceError(f"HF copy not found: {path}\n"
                            f"  fix: pass an existing folder or a hub id such as jxu124/refcoco")
    try:
        loaded = datasets.load_dataset(str(source))
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        state = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable or the id is wrong"
        raise HFSourceError(
            f"cannot load the hub dataset '{source}' ({state}: {type(err).__name__}: {err})\n"
            f"  fix: on a machine with network run datasets.load_dataset('{source}').save_to_disk(DIR) "
            f"(or copy its parquet files) and pass that folder; unset HF_HUB_OFFLINE to download here"
        ) from err
    return {name: _raw_images(ds) for name, ds in loaded.items()}


def refer_split(name: str, splits: set[str], lmms: bool = False) -> str:
    """An HF split name as the refer split; ``splits`` are the partition's split names."""
    name = "val" if name == "validation" else name
    if not lmms and name == "test" and "test" not in splits and "testA" in splits:
        return "testA"  # jxu124: the unc partitions' 'test' is testA
    return name


def _json_field(row: dict[str, Any], column: str) -> Any:
    try:
        return json.loads(row[column])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise HFSourceError(f"ref {row.get('ref_id')}: column '{column}' is missing or not JSON ({err})\n"
                            f"  fix: this is not a jxu124/refcoco*-style copy; see evfbench/data/hf.py") from err


def _local_image_info(image_id: int, image_dir: Path) -> dict[str, Any]:
    file_name = f"COCO_train2014_{image_id:012d}.jpg"
    try:
        with Image.open(image_dir / file_name) as im:
            width, height = im.size
    except OSError as err:
        raise HFSourceError(
            f"the copy has no raw_image_info and image {image_dir / file_name} cannot be read for its size "
            f"({err})\n  fix: unpack MS-COCO train2014 into {image_dir} first"
        ) from err
    return {"id": image_id, "file_name": file_name, "height": height, "width": width}


def _from_jxu124(splits: dict[str, Rows], partition: set[str], image_dir: Path) -> tuple[list[dict], dict]:
    refs: list[dict] = []
    images: dict[int, dict] = {}
    anns: dict[int, dict] = {}
    for hf_split, rows in splits.items():
        for row in rows:
            image_id = int(row["image_id"])
            raw_anns = _json_field(row, "raw_anns")
            for ann in raw_anns if isinstance(raw_anns, list) else [raw_anns]:
                anns[int(ann["id"])] = ann
            if image_id not in images:
                info = _json_field(row, "raw_image_info") if row.get("raw_image_info") else None
                images[image_id] = (
                    {"id": image_id, "file_name": info["file_name"], "height": int(info["height"]),
                     "width": int(info["width"])} if info else _local_image_info(image_id, image_dir)
                )
            sentences = row.get("sentences") or _json_field(row, "raw_sentences")
            refs.append({
                "ref_id": int(row["ref_id"]),
                "ann_id": int(row["ann_id"]),
                "image_id": image_id,
                "category_id": int(row.get("category_id", -1)),
                "split": refer_split(str(row.get("split") or hf_split), partition),
                "sent_ids": [int(s["sent_id"]) for s in sentences],
                "file_name": row.get("file_name", ""),
                "sentences": [dict(s) for s in sentences],
            })
    categories = sorted({int(a.get("category_id", -1)) for a in anns.values()})
    instances = {
        "images": [images[i] for i in sorted(images)],
        "annotations": [anns[i] for i in sorted(anns)],
        "categories": [{"id": c, "name": COCO_CATEGORIES.get(c, "")} for c in categories],
    }
    return refs, instances


def _coco_image_id(row: dict[str, Any]) -> int:
    if row.get("image_id") is not None:
        return int(row["image_id"])
    digits = re.findall(r"\d+", Path(str(row["file_name"])).stem)
    if not digits:
        raise HFSourceError(f"question {row.get('question_id')}: no image id in file_name '{row['file_name']}'\n"
                            f"  fix: this is not an lmms-lab/RefCOCO-style copy; see evfbench/data/hf.py")
    return int(digits[-1])


def _write_image(row: dict[str, Any], image_dir: Path) -> tuple[str, int, int]:
    """Write the row's image bytes (unless the file exists); returns (file_name, height, width)."""
    file_name = Path(str(row["file_name"])).name
    image = row.get("image") or {}
    data = image.get("bytes") if isinstance(image, dict) else None
    if not data:
        raise HFSourceError(f"question {row.get('question_id')}: the 'image' column carries no bytes\n"
                            f"  fix: export the copy with its images embedded (parquet from the hub does)")
    target = image_dir / file_name
    if not target.is_file():
        atomic_write_bytes(target, data)
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return file_name, height, width


def _polygons(value: Any) -> list[list[float]]:
    """lmms-lab's one flat polygon (or, to be safe, a list of them) as COCO polygons."""
    value = list(value or [])
    if value and isinstance(value[0], (list, tuple)):
        return [[float(v) for v in part] for part in value]
    return [[float(v) for v in value]] if value else []


def _from_lmms(splits: dict[str, Rows], image_dir: Path) -> tuple[list[dict], dict, dict[str, str]]:
    refs: list[dict] = []
    images: dict[int, dict] = {}
    objects: dict[tuple, dict] = {}
    notes: dict[str, str] = {}
    sent_id = 0
    for hf_split, rows in splits.items():
        split = refer_split(hf_split, set(), lmms=True)
        notes[split] = {"val": f"{LMMS_VAL}; {LMMS_POLYGON}", "test": f"{LMMS_TEST}; {LMMS_POLYGON}"}.get(
            split, LMMS_POLYGON)
        for row in rows:
            image_id = _coco_image_id(row)
            if image_id not in images:
                file_name, height, width = _write_image(row, image_dir)
                images[image_id] = {"id": image_id, "file_name": file_name, "height": height, "width": width}
            segmentation = _polygons(row["segmentation"])
            bbox = [float(v) for v in row["bbox"]]
            key = (image_id, tuple(bbox), tuple(tuple(p) for p in segmentation))
            if key not in objects:
                img = images[image_id]
                area = int(decode_segmentation(segmentation, img["height"], img["width"]).sum())
                objects[key] = {"id": len(objects) + 1, "image_id": image_id, "category_id": -1, "bbox": bbox,
                                "area": area, "iscrowd": int(row.get("iscrowd") or 0), "segmentation": segmentation}
            sentences = []
            for text in row["answer"]:
                sent_id += 1
                sentences.append({"sent_id": sent_id, "raw": text, "sent": text, "tokens": text.split()})
            refs.append({
                "ref_id": len(refs) + 1,
                "ann_id": objects[key]["id"],
                "image_id": image_id,
                "category_id": -1,
                "split": split,
                "sent_ids": [s["sent_id"] for s in sentences],
                "file_name": images[image_id]["file_name"],
                "sentences": sentences,
            })
    instances = {"images": [images[i] for i in sorted(images)], "annotations": list(objects.values()),
                 "categories": []}
    return refs, instances, notes


def _layout(splits: dict[str, Rows]) -> str:
    """Peek at the columns of the first split to tell the two layouts apart."""
    for name in list(splits):
        rows = splits[name]
        columns = set(getattr(rows, "column_names", None) or [])
        if not columns:  # a parquet stream: read the first row and put it back
            iterator = iter(rows)
            first = next(iterator, None)
            if first is None:
                continue
            columns = set(first)
            splits[name] = itertools.chain([first], iterator)
        if "raw_anns" in columns:
            return "jxu124"
        if {"answer", "segmentation", "image"} <= columns:
            return "lmms"
        raise HFSourceError(f"split '{name}' has the columns {sorted(columns)}, which match neither "
                            f"jxu124/refcoco* (raw_anns) nor lmms-lab/RefCOCO (image, answer, segmentation)\n"
                            f"  fix: see the layouts in evfbench/data/hf.py")
    raise HFSourceError("the HF copy holds no rows\n  fix: check the source folder")


def convert(source: str | Path, data_root: Path, dataset: str, split_by: str | None = None,
            overwrite: bool = False) -> Path:
    """Convert an HF copy of ``dataset`` into the refer layout under ``data_root``; returns its folder.

    Refuses to replace an existing ``instances.json`` (shared by every partition of the dataset)
    unless ``overwrite``. The copy's caveats go to ``provenance.json``, which the reader repeats
    as a warning whenever an affected split is loaded.
    """
    cards = dataset_cards(dataset)
    if not cards:
        raise ReferDataError(f"no split card for dataset '{dataset}'\n  fix: `python -m evfbench.ls splits` lists them")
    dataset = cards[0].dataset
    known = HUB_IDS.get(str(source))
    if known and known[1] != dataset:
        raise HFSourceError(f"'{source}' is a copy of {known[1]}, not {dataset}\n"
                            f"  fix: python -m evfbench.prep {known[1]} --from-hf {source} ...")
    split_by = split_by or default_split_by(dataset)
    folder = Path(data_root) / dataset
    if (folder / INSTANCES).exists() and not overwrite:
        raise HFSourceError(f"{folder / INSTANCES} exists; converting would replace it (every partition of "
                            f"{dataset} shares it)\n  fix: pass --overwrite, or convert into another --data-root")
    image_dir = Path(data_root) / cards[0].image_root
    splits = read_source(source)
    notes: dict[str, str] = {}
    if _layout(splits) == "jxu124":
        partition = {c.split for c in cards if c.split_by == split_by}
        refs, instances = _from_jxu124(splits, partition, image_dir)
        general = "instances.json holds only referred objects (the HF copy has no others)"
    else:
        refs, instances, notes = _from_lmms(splits, image_dir)
        general = LMMS_POLYGON
    folder = write_refer(Path(data_root), dataset, split_by, refs, instances)
    atomic_write_json(folder / PROVENANCE, {"source": str(source), "split_by": split_by, "note": general,
                                            "warnings": notes})
    for split, note in sorted(notes.items()):
        warnings.warn(f"{dataset} split '{split}' from {source}: {note}", UserWarning, stacklevel=2)
    return folder
