"""The refer-format reader, its restricted unpickler, and the prep validator, on a tiny fixture."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from refer_fixtures import AREAS, SIZES, SPLIT_REFS, SPLIT_SENTS, TEXTS, image_name, image_pixels, py2_pickle, \
    write_fixture

from evfbench.cards import SplitCard
from evfbench.data import load_split
from evfbench.data.images import ImageError
from evfbench.data.refer import Refer, ReferDataError, dataset_cards, open_refer, split_matches
from evfbench.data.safe_pickle import RefsFormatError, UnsafePickleError, load_refs
from evfbench.prep import refer as prep
from evfbench.registry import get_split


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write_fixture(tmp_path)
    return tmp_path


# --- restricted unpickler ---------------------------------------------------------------

class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Plain:
    pass


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_unpickler_refuses_code_and_never_runs_it(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_RunsCommand(f"touch {marker}")], protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        load_refs(path)
    message = str(info.value)
    assert str(path) in message and "system" in message and "re-download" in message
    assert not marker.exists()


def test_unpickler_refuses_class_instances(tmp_path: Path) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_Plain()], protocol=0))  # protocol 0/1 go through copy_reg._reconstructor
    with pytest.raises(UnsafePickleError, match=r"copy_reg\._reconstructor"):
        load_refs(path)
    path.write_bytes(pickle.dumps([_Plain()], protocol=2))
    with pytest.raises(UnsafePickleError, match="_Plain"):
        load_refs(path)


def test_unpickler_reads_python2_strings_as_latin1(root: Path) -> None:
    refs = load_refs(root / "refcoco" / "refs(unc).p")
    assert [r["ref_id"] for r in refs] == [1, 2, 3, 4, 5, 6]
    assert refs[1]["sentences"][0]["sent"] == "café sign"  # byte 0xe9 in the pickle
    with pytest.raises(UnicodeDecodeError):  # what a plain Python 3 load would do
        pickle.loads(py2_pickle(["café"]))


@pytest.mark.parametrize("protocol", [0, 2])
def test_unpickler_admits_sets(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "refs.p"
    ref = {"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val", "sent_ids": {4},
           "sentences": [{"sent_id": 4, "raw": "x"}]}
    path.write_bytes(pickle.dumps([ref], protocol=protocol))  # a set is a call of (__)builtin(__).set
    assert load_refs(path)[0]["sent_ids"] == {4}


def test_schema_errors_name_file_index_and_field(tmp_path: Path) -> None:
    good = {"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val", "sent_ids": [4],
            "sentences": [{"sent_id": 4, "sent": "x"}]}
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([good, {k: v for k, v in good.items() if k != "split"}], protocol=2))
    with pytest.raises(RefsFormatError, match=r"refs\(unc\)\.p: ref #1 lacks the field 'split'"):
        load_refs(path)
    path.write_bytes(pickle.dumps([dict(good, sentences=[{"sent_id": 4, "tokens": []}])], protocol=2))
    with pytest.raises(RefsFormatError, match=r"ref #0 sentence #0 has neither 'sent' nor 'raw'"):
        load_refs(path)
    path.write_bytes(pickle.dumps({"refs": []}, protocol=2))
    with pytest.raises(RefsFormatError, match="holds a dict, not a list"):
        load_refs(path)
    path.write_bytes(pickle.dumps([good], protocol=2)[:20])
    with pytest.raises(RefsFormatError, match="truncated"):
        load_refs(path)


# --- the index ----------------------------------------------------------------------------

@pytest.mark.parametrize(("ref_split", "split", "expected"), [
    ("testA", "testA", True), ("testAB", "testA", True), ("testAB", "testB", True), ("testB", "testA", False),
    ("testC", "test", True), ("testAB", "testAB", True), ("testA", "testAB", False),
    ("train", "testA", False), ("val", "test", False), ("train", "train", True), ("trainval", "train", False),
])
def test_split_letter_semantics(ref_split: str, split: str, expected: bool) -> None:
    assert split_matches(ref_split, split) is expected


def test_index_getters(root: Path) -> None:
    refer = Refer(root, "refcoco", "unc")
    assert {s: refer.get_ref_ids(split=s) for s in SPLIT_REFS} == SPLIT_REFS
    assert refer.get_ref_ids(image_ids=[1]) == [1, 2]
    assert refer.get_ref_ids(cat_ids=[2], split="testB") == [3]
    assert refer.get_ann_ids(image_ids=[1]) == [101, 102, 103]
    assert refer.get_ann_ids(ref_ids=[1, 4]) == [101, 202]
    assert refer.get_ann_ids(image_ids=[2], cat_ids=[2], ref_ids=[5]) == [203]
    assert refer.get_img_ids(ref_ids=[1, 3]) == [1, 2]
    assert refer.get_img_ids() == [1, 2, 3]
    assert [r["ref_id"] for r in refer.load_refs([6])] == [6]
    assert refer.load_anns([102])[0]["bbox"] == [20.0, 2.0, 8.0, 6.0]
    assert refer.load_imgs([2])[0]["height"] == 16
    assert refer.load_sents([13])[0]["sent"] == "café sign"
    assert refer.load_cats([1])[0]["name"] == "square"
    assert refer.ref_to_ann[3]["id"] == 201 and refer.sent_to_ref[33]["ref_id"] == 6
    assert [r["ref_id"] for r in refer.ann_to_refs[101]] == [1]


def test_image_path_comes_from_instances_not_from_the_ref(root: Path) -> None:
    refer = Refer(root, "refcoco", "unc")
    assert refer.refs[6]["file_name"] == image_name("refcoco", 1)
    assert refer.image_path(3) == root / "images/mscoco/images/train2014" / image_name("refcoco", 3)
    [group] = load_split(get_split("refcoco_train"), root)
    assert group.path == refer.image_path(3)
    np.testing.assert_array_equal(group.load_image(), image_pixels(3))


def test_refclef_image_subpath(tmp_path: Path) -> None:
    write_fixture(tmp_path, dataset="refclef")
    groups = load_split(get_split("refclef_testB"), tmp_path)
    assert [g.path for g in groups] == [tmp_path / "images/saiapr_tc-12/1/images/1.png",
                                        tmp_path / "images/saiapr_tc-12/2/images/2.png"]
    assert groups[1].load_image().shape == (16, 24, 3)


# --- load_split -----------------------------------------------------------------------------

def test_load_split_groups_and_texts(root: Path) -> None:
    groups = load_split(get_split("refcoco_testA"), root)
    assert [g.image_id for g in groups] == [1, 2]
    assert [(g.height, g.width) for g in groups] == [SIZES[1], SIZES[2]]
    assert [s.sent_id for g in groups for s in g.samples] == SPLIT_SENTS["testA"]
    assert [s.text for g in groups for s in g.samples] == [TEXTS[i] for i in SPLIT_SENTS["testA"]]
    first = groups[0].samples[0]
    assert (first.ref_id, first.image_id, first.ann_ids, first.category_id, first.split) == (1, 1, (101,), 1, "testA")
    assert groups[1].samples[0].split == "testAB"
    # every object of the image, not only the referred ones (103 is referred by nothing)
    assert list(groups[0].annotations) == [101, 102, 103]


@pytest.mark.parametrize("split", ["testA", "testB", "val", "train"])
def test_every_split_sentence_order_and_membership(root: Path, split: str) -> None:
    groups = load_split(get_split(f"refcoco_{split}"), root)
    assert [s.sent_id for g in groups for s in g.samples] == SPLIT_SENTS[split]
    assert [g.image_id for g in groups] == sorted({g.image_id for g in groups})


def test_masks_polygon_union_rle_and_empty(root: Path) -> None:
    groups = load_split(get_split("refcoco_testA"), root) + load_split(get_split("refcoco_val"), root)
    areas = {a.ann_id: int(a.mask(g.height, g.width).sum()) for g in groups for a in g.annotations.values()}
    assert areas == {k: v for k, v in AREAS.items() if k != 301}
    by_sent = {s.sent_id: (g, s) for g in groups for s in g.samples}
    g, s = by_sent[11]
    mask = g.target_mask(s)
    assert mask.dtype == bool and mask.shape == SIZES[1] and int(mask.sum()) == 175 and mask[7, 7]
    g, s = by_sent[22]  # empty segmentation
    assert g.target_mask(s).shape == SIZES[2] and not g.target_mask(s).any()
    g, s = by_sent[21]  # compressed RLE: rows 1..3, cols 2..5
    assert int(g.target_mask(s).sum()) == 12 and g.target_mask(s)[1:4, 2:6].all()


def test_split_without_refs_is_an_error(root: Path) -> None:
    card = dataclasses.replace(get_split("refcoco_testA"), split="testC")
    with pytest.raises(ReferDataError,
                       match=r"no ref of split 'testC' \(its splits: testA, testAB, testB, train, val\)"):
        load_split(card, root)


def test_index_is_parsed_once_and_reparsed_when_a_file_changes(root: Path) -> None:
    first = open_refer(root, "refcoco", "unc")
    load_split(get_split("refcoco_testA"), root)
    assert open_refer(root, "refcoco", "unc") is first
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    data["images"][0]["height"] = 21
    path.write_text(json.dumps(data) + " ")
    assert open_refer(root, "refcoco", "unc").imgs[1]["height"] == 21


def test_grefcoco_lists_and_no_target(root: Path) -> None:
    folder = root / "grefcoco"
    folder.mkdir()
    (folder / "instances.json").write_text((root / "refcoco" / "instances.json").read_text())
    grefs = [
        {"ref_id": 1, "ann_id": [-1], "image_id": 1, "category_id": 1, "split": "val", "sent_ids": [1],
         "no_target": True, "sentences": [{"sent_id": 1, "sent": "the dog"}]},
        {"ref_id": 2, "ann_id": [101, 102], "image_id": 1, "category_id": 1, "split": "val", "sent_ids": [2],
         "no_target": False, "sentences": [{"sent_id": 2, "sent": "all squares"}]},
    ]
    (folder / "grefs(unc).json").write_text(json.dumps(grefs))
    card = SplitCard(name="grefcoco_val", dataset="grefcoco", split_by="unc", split="val",
                     image_root="images/mscoco/images/train2014", counts={})
    [group] = load_split(card, root)
    none, both = group.samples
    assert none.ann_ids == () and not group.target_mask(none).any()
    assert both.ann_ids == (101, 102) and int(group.target_mask(both).sum()) == 175 + 48


# --- errors that name the file and the fix ---------------------------------------------------

def test_missing_annotation_files(root: Path) -> None:
    (root / "refcoco" / "instances.json").unlink()
    with pytest.raises(ReferDataError) as info:
        load_split(get_split("refcoco_val"), root)
    message = str(info.value)
    assert str(root / "refcoco" / "instances.json") in message
    assert "refcoco.zip" in message and "python -m evfbench.prep refcoco" in message
    (root / "refcoco" / "refs(unc).p").rename(root / "refcoco" / "refs(google).p")
    with pytest.raises(ReferDataError, match=r"refs\(unc\)\.p \(the folder holds: refs\(google\)\.p; is --split-by"):
        load_split(get_split("refcoco_val"), root)


def test_refs_and_instances_from_different_releases(root: Path) -> None:
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["id"] != 203]
    path.write_text(json.dumps(data))
    with pytest.raises(ReferDataError, match="ref 5 has ann_id 203, which .*instances.json lacks"):
        Refer(root, "refcoco", "unc")


def test_missing_and_corrupt_images_name_the_file(root: Path) -> None:
    [group] = load_split(get_split("refcoco_train"), root)
    group.path.unlink()
    with pytest.raises(ImageError, match=f"image not found: {group.path}"):
        group.load_image()
    group.path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageError, match=f"cannot decode image {group.path}"):
        group.load_image()


# --- python -m evfbench.prep refcoco -----------------------------------------------------------

def _fixture_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"testA": (2, 3, 2), "testB": (2, 2, 2), "train": (1, 2, 1), "val": (2, 2, 1)}

    def cards(name: str) -> list[SplitCard]:
        return [dataclasses.replace(c, counts=dict(zip(("refs", "sentences", "images"), counts[c.split])))
                if c.split_by == "unc" else c for c in dataset_cards(name)]

    monkeypatch.setattr(prep, "dataset_cards", cards)


def test_prep_all_ok(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _fixture_counts(monkeypatch)
    assert prep.main(["refcoco", "--data-root", str(root), "--check-images", "all"]) == 0
    out = capsys.readouterr().out
    assert "| refcoco_testA | 2 OK   | 3 OK        | 2 OK     |" in out
    assert "MISMATCH" not in out and "images: read 3 of 3, 0 unreadable" in out


def test_prep_mismatch_and_no_published_count(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert prep.main(["refcoco", "--data-root", str(root), "--check-images", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 MISMATCH (published 1,975)" in out and "1 MISMATCH (published 16,994)" in out
    assert "images: read 1 of 3, 0 unreadable" in out and "12 count(s) differ" in out
    (root / "refcoco" / "refs(google).p").write_bytes((root / "refcoco" / "refs(unc).p").read_bytes())
    assert prep.main(["refcoco", "--data-root", str(root), "--split-by", "google", "--check-images", "0"]) == 0
    out = capsys.readouterr().out
    assert "| refcoco_google_test  | 3 (no published count) | 4 (no published count) |" in out


def test_prep_unreadable_image(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _fixture_counts(monkeypatch)
    bad = root / "images/mscoco/images/train2014" / image_name("refcoco", 2)
    bad.write_bytes(b"garbage")
    assert prep.main(["refcoco", "--data-root", str(root), "--check-images", "all"]) == 1
    captured = capsys.readouterr()
    assert "images: read 3 of 3, 1 unreadable" in captured.out
    assert f"cannot decode image {bad}" in captured.err


def test_prep_missing_files(root: Path, capsys: pytest.CaptureFixture) -> None:
    (root / "refcoco" / "instances.json").unlink()
    (root / "images/mscoco/images/train2014").rename(root / "elsewhere")
    assert prep.main(["refcoco", "--data-root", str(root)]) == 1
    err = capsys.readouterr().err
    source = "(from https://github.com/lichengunc/refer (refcoco.zip))"
    assert f"missing {root / 'refcoco' / 'instances.json'}  {source}" in err
    assert f"missing {root / 'images/mscoco/images/train2014'}/  (from MS-COCO train2014 images" in err


def test_prep_dispatcher_and_usage_errors(root: Path, capsys: pytest.CaptureFixture) -> None:
    from evfbench.prep.__main__ import main

    assert main(["refcocoplus", "--data-root", str(root)]) == 1  # alias resolves to the refcoco+ folder
    assert f"missing {root / 'refcoco+' / 'refs(unc).p'}" in capsys.readouterr().err
    assert prep.main(["refcoco", "--data-root", str(root), "--split-by", "umd"]) == 2
    assert "refcoco has no partition 'umd'; known: google, unc" in capsys.readouterr().err
