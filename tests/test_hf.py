"""Hugging Face copies converted into the refer layout, round-tripped through ``datasets``.

The fixtures follow the column layouts documented (as assumptions) in evfbench/data/hf.py.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from refer_fixtures import SIZES, image_name, image_pixels, rect, refs_and_instances, write_fixture, write_images

from evfbench.data import load_split
from evfbench.data.hf import HFSourceError, convert, read_source, refer_split
from evfbench.data.safe_pickle import load_refs
from evfbench.prep import refer as prep
from evfbench.registry import get_split

# ref id -> (HF split, value of the row's `split` column); ref 1 shows the trap: HF "test" is testA
JXU124_PLACES = {1: ("test", "test"), 2: ("testB", "testB"), 3: ("testB", "testAB"),
                 4: ("validation", "val"), 5: ("validation", "val"), 6: ("train", "train")}
UNC = {"train", "val", "testA", "testB"}


def jxu124_rows(image_info: bool = True) -> dict[str, list[dict]]:
    """The fixture as jxu124/refcoco rows: one per ref, refer columns plus raw_* JSON strings."""
    refs, instances = refs_and_instances()
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    splits: dict[str, list[dict]] = {}
    for ref in refs:
        hf_split, column = JXU124_PLACES[ref["ref_id"]]
        sentences = [{"raw": s["raw"], "sent": s.get("sent"), "sent_id": s["sent_id"], "tokens": s["tokens"]}
                     for s in ref["sentences"]]
        row = {
            "sent_ids": ref["sent_ids"], "file_name": ref["file_name"], "ann_id": ref["ann_id"],
            "ref_id": ref["ref_id"], "image_id": ref["image_id"], "split": column, "sentences": sentences,
            "category_id": ref["category_id"], "raw_anns": json.dumps(anns[ref["ann_id"]]),
            "raw_sentences": json.dumps(sentences),
            "image_path": f"coco/train2014/{image_name('refcoco', ref['image_id'])}",
            "bbox": anns[ref["ann_id"]]["bbox"], "captions": [s["raw"] for s in sentences],
            "global_image_id": f"coco.{ref['image_id']}",
        }
        if image_info:
            row["raw_image_info"] = json.dumps(dict(images[ref["image_id"]], license=1))
        splits.setdefault(hf_split, []).append(row)
    return splits


def _view(groups: list) -> list[tuple]:
    """What a run sees of a split, minus the annotation table (the HF copy lacks unreferred objects)."""
    return [(g.image_id, g.path.relative_to(g.path.parents[3]), g.height, g.width,
             [(s.sent_id, s.ref_id, s.text, s.ann_ids, s.category_id, s.split, int(g.target_mask(s).sum()))
              for s in g.samples]) for g in groups]


def test_refer_split_mapping() -> None:
    assert refer_split("test", UNC) == "testA"  # jxu124/refcoco: "test" is testA
    assert refer_split("test", {"train", "val", "test"}) == "test"  # refcocog umd keeps its test
    assert refer_split("validation", UNC) == "val"
    assert refer_split("testB", UNC) == "testB"
    assert refer_split("test", UNC, lmms=True) == "test"


def test_jxu124_save_to_disk_round_trip(tmp_path: Path) -> None:
    original, converted = tmp_path / "refer", tmp_path / "hf"
    write_fixture(original)
    write_images(converted)
    source = tmp_path / "jxu124_refcoco"
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in jxu124_rows().items()}).save_to_disk(source)

    folder = convert(source, converted, "refcoco")
    assert folder == converted / "refcoco"
    refs = load_refs(folder / "refs(unc).p")
    assert {r["ref_id"]: r["split"] for r in refs} == {1: "testA", 2: "testB", 3: "testAB", 4: "val", 5: "val",
                                                       6: "train"}
    for split in ("testA", "testB", "val", "train"):
        card = get_split(f"refcoco_{split}")
        assert _view(load_split(card, converted)) == _view(load_split(card, original))
    [group] = load_split(get_split("refcoco_train"), converted)
    np.testing.assert_array_equal(group.load_image(), image_pixels(3))
    # only referred objects are known to the copy: 103 is gone, every other object kept its mask
    group = load_split(get_split("refcoco_testA"), converted)[0]
    assert list(group.annotations) == [101, 102]
    instances = json.loads((folder / "instances.json").read_text())
    assert instances["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
    assert json.loads((folder / "provenance.json").read_text())["warnings"] == {}


def test_jxu124_parquet_without_image_info_reads_local_sizes(tmp_path: Path) -> None:
    converted = tmp_path / "hf"
    image_dir = converted / "images/mscoco/images/train2014"
    image_dir.mkdir(parents=True)
    for image_id in SIZES:  # the real COCO names, as the copy implies them
        Image.fromarray(image_pixels(image_id)).save(image_dir / f"COCO_train2014_{image_id:012d}.jpg")
    source = tmp_path / "parquet" / "data"
    source.mkdir(parents=True)
    for split, rows in jxu124_rows(image_info=False).items():
        datasets.Dataset.from_list(rows).to_parquet(str(source / f"{split}-00000-of-00001.parquet"))

    assert prep.main(["refcoco", "--from-hf", str(source.parent), "--data-root", str(converted),
                      "--check-images", "all"]) == 0
    groups = load_split(get_split("refcoco_testB"), converted)
    assert [(g.image_id, g.path.name, g.height, g.width) for g in groups] == [
        (1, "COCO_train2014_000000000001.jpg", 20, 30), (2, "COCO_train2014_000000000002.jpg", 16, 24)]
    assert [s.sent_id for g in groups for s in g.samples] == [13, 21]


def test_convert_refuses_to_replace_refer_files(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    source = tmp_path / "copy"
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in jxu124_rows().items()}).save_to_disk(source)
    with pytest.raises(HFSourceError, match=r"instances\.json exists; converting would replace it"):
        convert(source, tmp_path, "refcoco")
    assert convert(source, tmp_path, "refcoco", overwrite=True) == tmp_path / "refcoco"


def test_hub_ids_offline_and_wrong_dataset(tmp_path: Path) -> None:
    with pytest.raises(HFSourceError, match="'jxu124/refcocog' is a copy of refcocog, not refcoco"):
        convert("jxu124/refcocog", tmp_path, "refcoco")
    with pytest.raises(HFSourceError, match=r"cannot load the hub dataset 'jxu124/refcoco' \(HF_HUB_OFFLINE is set"):
        read_source("jxu124/refcoco")
    with pytest.raises(HFSourceError, match="HF copy not found"):
        read_source(tmp_path / "nowhere")


def test_unknown_columns(tmp_path: Path) -> None:
    datasets.Dataset.from_list([{"foo": 1}]).to_parquet(str(tmp_path / "train-0.parquet"))
    with pytest.raises(HFSourceError, match=r"split 'train' has the columns \['foo'\]"):
        convert(tmp_path / "train-0.parquet", tmp_path / "out", "refcoco")


# --- lmms-lab/RefCOCO --------------------------------------------------------------------------

def _png(image_id: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_pixels(image_id)).save(buffer, format="PNG")
    return buffer.getvalue()


def lmms_rows() -> dict[str, list[dict]]:
    """Rows in the lmms-lab layout. Object A (image 1) has two polygon parts in refer, but the copy
    keeps one (area 100, not 175); object B appears in val twice (a unc and a google ref) and in testB."""
    def row(qid: str, image_id: int, answer: list[str], polygon: list[float], bbox: list[float]) -> dict:
        return {"question_id": qid, "image": {"bytes": _png(image_id), "path": None},
                "question": "Please carefully observe the area circled in the image and come up with a caption "
                            "for the area.",
                "answer": answer, "segmentation": polygon, "bbox": bbox, "iscrowd": 0,
                "file_name": image_name("refcoco", image_id)}

    a = (rect(0, 0, 10, 10), [0.0, 0.0, 15.0, 15.0])
    b = (rect(20, 2, 28, 8), [20.0, 2.0, 8.0, 6.0])
    c = (rect(0, 0, 12, 6), [0.0, 0.0, 12.0, 6.0])
    return {
        "val": [row("q1", 1, ["Left square", "the big one"], *a), row("q2", 1, ["sign"], *b),
                row("q3", 1, ["the sign on the right"], *b)],
        "testA": [row("q4", 3, ["top half"], *c)],
        "testB": [row("q5", 1, ["café sign"], *b)],
        "test": [row("q6", 3, ["upper part"], *c)],
    }


def _lmms_dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())


@pytest.mark.parametrize("form", ["parquet", "save_to_disk"])
def test_lmms_round_trip(tmp_path: Path, form: str) -> None:
    source, root = tmp_path / "lmms", tmp_path / "data"
    if form == "parquet":
        (source / "data").mkdir(parents=True)
        for split, rows in lmms_rows().items():
            _lmms_dataset(rows).to_parquet(str(source / "data" / f"{split}-00000-of-00001.parquet"))
    else:
        datasets.DatasetDict({k: _lmms_dataset(v) for k, v in lmms_rows().items()}).save_to_disk(source)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", UserWarning)
        convert(source, root, "refcoco")
    caveats = {str(w.message).split(":")[0]: str(w.message) for w in record}
    assert sorted(caveats) == [f"refcoco split '{s}' from {source}" for s in ("test", "testA", "testB", "val")]
    assert "NOT the standard val" in caveats[f"refcoco split 'val' from {source}"]
    assert all("ONE polygon" in c for c in caveats.values())
    for image_id in (1, 3):  # the images were written out, byte for byte
        written = root / "images/mscoco/images/train2014" / image_name("refcoco", image_id)
        assert written.read_bytes() == _png(image_id)

    with pytest.warns(UserWarning, match="refcoco split 'val' was converted from .*NOT the standard val"):
        [group] = load_split(get_split("refcoco_val"), root)
    assert (group.image_id, group.height, group.width) == (1, 20, 30)
    assert [(s.sent_id, s.ref_id, s.text, s.ann_ids) for s in group.samples] == [
        (1, 1, "left square", (1,)), (2, 1, "the big one", (1,)), (3, 2, "sign", (2,)),
        (4, 3, "the sign on the right", (2,))]
    assert [int(group.target_mask(s).sum()) for s in group.samples] == [100, 100, 48, 48]  # one polygon only
    assert {a.ann_id: a.area for a in group.annotations.values()} == {1: 100.0, 2: 48.0}
    np.testing.assert_array_equal(group.load_image(), image_pixels(1))

    with pytest.warns(UserWarning, match="ONE polygon"):
        [group] = load_split(get_split("refcoco_testB"), root)
    assert [(s.text, s.ann_ids) for s in group.samples] == [("café sign", (2,))]  # same object as in val
    refs = load_refs(root / "refcoco" / "refs(unc).p")
    assert [(r["ref_id"], r["ann_id"], r["split"], r["sent_ids"]) for r in refs] == [
        (1, 1, "val", [1, 2]), (2, 2, "val", [3]), (3, 2, "val", [4]),
        (4, 3, "test", [5]), (5, 3, "testA", [6]), (6, 2, "testB", [7])]  # same ids from either form


def test_prep_from_lmms_prints_the_caveats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, root = tmp_path / "lmms", tmp_path / "data"
    datasets.DatasetDict({k: _lmms_dataset(v) for k, v in lmms_rows().items()}).save_to_disk(source)
    assert prep.main(["refcoco", "--from-hf", str(source), "--data-root", str(root), "--check-images", "all"]) == 0
    out = capsys.readouterr().out
    assert f"converted {source} -> {root / 'refcoco'}" in out
    assert "WARNING val: this val mixes refs of the unc and google partitions: it is NOT the standard val" in out
    assert "| refcoco_val   | 3 MISMATCH (published 3,811)" in out
    assert "images: read 2 of 2, 0 unreadable" in out
