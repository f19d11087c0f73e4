"""Reports: measured tables in the paper's layouts, published rows beside, galleries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evfbench.data import load_split
from evfbench.errors import EvfbenchError
from evfbench.data.masks import encode_rle
from evfbench.data.types import Annotation, Sample
from evfbench.gallery import GT_COLOUR, overlay, render_gallery
from evfbench.outcomes import OUTCOMES, outcome, outcome_table, write_outcomes
from evfbench.outcomes import main as outcomes_main
from evfbench.prep.shapes import attribute_words, build_shapes, sentence_kinds
from evfbench.registry import get_split
from evfbench.report import breakdown, write_breakdown, write_tables
from evfbench.report import main as report_main
from evfbench.results import iter_samples
from evfbench.run import run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("data")
    build_shapes(root, n_images={"train": 2, "val": 6, "testA": 4, "testB": 4}, seed=0, progress=False)
    runs = tmp_path_factory.mktemp("runs")
    out = run(["oracle", "box", "largest"], ["shapes_val", "shapes_testA", "shapes_testB"], data_root=root,
              output_dir=runs, save_masks=True)
    run(["empty"], ["shapes_val"], data_root=root, output_dir=runs)  # a partial row: no average
    return root, runs, {(r["model"], r["split"]): r["metrics"] for r in out}


def test_shapes_table_matches_results(evaluated, tmp_path: Path) -> None:
    _, runs, metrics = evaluated
    tables = write_tables([runs], tmp_path, "shapes", published=[])
    ciou = tables["ciou"].set_index("model")
    for (model, split), m in metrics.items():
        assert ciou.loc[model, split] == pytest.approx(100 * m["ciou"])
    box = [100 * metrics[("box", s)]["ciou"] for s in ("shapes_val", "shapes_testA", "shapes_testB")]
    assert ciou.loc["box", "avg"] == pytest.approx(sum(box) / 3)
    assert pd.isna(ciou.loc["empty", "avg"]) and pd.isna(ciou.loc["empty", "shapes_testA"])
    assert ciou.loc["oracle", "source"] == "measured (reads ground truth)"
    assert ciou.index[0] == "oracle"  # reference rows first, by average
    giou = pd.read_csv(tmp_path / "giou.csv").set_index("model")
    assert giou.loc["box", "shapes_val"] == pytest.approx(100 * metrics[("box", "shapes_val")]["giou"], abs=1e-4)
    readme = (tmp_path / "README.md").read_text()
    assert "Metric convention: evf_sam/lisa" in readme and "| oracle" in readme
    assert (tmp_path / "ciou.tex").read_text().startswith("\\begin{tabular}")


def test_breakdown_by_sentence_kind(evaluated, tmp_path: Path) -> None:
    root, runs, metrics = evaluated
    kinds = sentence_kinds(root)
    table = breakdown([runs / "oracle__shapes_val", runs / "box__shapes_val"], kinds).set_index("model")
    records = list(iter_samples(runs / "box__shapes_val"))
    for kind in {kinds[r["sent_id"]] for r in records}:  # cIoU recomputed by hand, per kind
        mine = [r for r in records if kinds[r["sent_id"]] == kind]
        expected = 100 * sum(r["intersection"] for r in mine) / sum(r["union"] for r in mine)
        assert table.loc["box", kind] == pytest.approx(expected)
        assert table.loc["oracle", kind] == 100 and table.loc["sentences", kind] == len(mine)
    assert sum(table.loc["sentences", list(table.columns[1:])]) == len(records)
    write_breakdown(table.reset_index(), tmp_path, "by_kind", "per kind")
    assert "| box" in (tmp_path / "by_kind.md").read_text()
    with pytest.raises(EvfbenchError, match="no label"):
        breakdown([runs / "box__shapes_val"], {})
    with pytest.raises(EvfbenchError, match="one split"):
        breakdown([runs / "box__shapes_val", runs / "box__shapes_testA"], kinds)


def test_attribute_words_label_what_names_the_target(evaluated) -> None:
    root = evaluated[0]
    kinds, words = sentence_kinds(root), attribute_words(root)
    assert words.keys() == kinds.keys()
    assert all((label == "other kinds") == (kinds[i] != "attribute") for i, label in words.items())
    sentences = {s.sent_id: s.text.lower().split() for g in load_split(get_split("shapes_val"), root) for s in g.samples}
    for sent_id, tokens in sentences.items():
        if kinds[sent_id] == "attribute":
            named = words[sent_id].split("+")
            assert ("colour" in named) == bool({"red", "green", "blue", "yellow", "purple", "orange"} & set(tokens))
            assert ("category" in named) == bool({"circle", "square", "triangle", "diamond", "star", "cross"} & set(tokens))
            assert ("size" in named) == bool({"small", "little", "medium", "medium-sized", "large", "big"} & set(tokens))


def test_published_rows_are_marked(evaluated, tmp_path: Path) -> None:
    _, runs, _ = evaluated
    tables = write_tables([runs], tmp_path, "refcoco", published=["tab2_res_sota", "tab6_foundation"])
    ciou = tables["ciou"]
    evf = ciou[ciou["model"] == "EVF-SAM"].iloc[0]
    assert evf["source"] == "published, Tab.2"
    assert (evf["refcoco_val"], evf["refcoco_testA"], evf["refcocog_test"], evf["avg"]) == (82.1, 83.7, 77.4, 78.0)
    assert set(ciou["source"]) <= {"published, Tab.2", "published, Tab.6"}  # nothing measured on RefCOCO here
    with pytest.raises(EvfbenchError, match="no published card 'tab9'"):
        write_tables([runs], tmp_path, "refcoco", published=["tab9"])


def test_report_cli_and_missing_results(evaluated, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, runs, _ = evaluated
    assert report_main(["--results", str(runs), "--layout", "shapes", "--output-dir", str(tmp_path / "r")]) == 0
    assert "| oracle" in capsys.readouterr().out
    assert report_main(["--results", str(tmp_path / "none"), "--output-dir", str(tmp_path / "r")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_report_by_kind_and_attribute(evaluated, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, runs, _ = evaluated
    out = tmp_path / "r"
    assert report_main(["--results", str(runs), "--layout", "shapes", "--output-dir", str(out),
                        "--by", "kind,attribute", "--data-root", str(root)]) == 0
    printed = capsys.readouterr().out
    for name, labels in (("by_kind", sentence_kinds(root)), ("by_attribute", attribute_words(root))):
        written = pd.read_csv(out / f"{name}.csv")
        expected = breakdown(sorted(runs.glob("*__shapes_val")), labels)
        pd.testing.assert_frame_equal(written, expected, check_dtype=False, atol=1e-4)
        assert f"wrote {out / name}.{{csv,md}}" in printed
    assert report_main(["--results", str(runs), "--output-dir", str(out), "--by", "words"]) == 2
    assert "--by words: unknown; known: kind,attribute" in capsys.readouterr().err
    assert report_main(["--results", str(out), "--output-dir", str(out), "--by", "kind", "--data-root", str(root)]) == 2
    assert "--by needs shapes_val runs" in capsys.readouterr().err


def test_gallery_draws_every_model(evaluated, tmp_path: Path) -> None:
    root, runs, _ = evaluated
    out = render_gallery([runs / "oracle__shapes_val", runs / "box__shapes_val"], "shapes_val",
                         tmp_path / "g.png", root, n=3)
    with Image.open(out) as im:
        assert im.size == (int(3 * 2.4 * 80), int(3 * 2.6 * 80))  # 3 columns x 3 sentences at 80 dpi
    with pytest.raises(EvfbenchError, match="--save-masks"):
        render_gallery([runs / "empty__shapes_val"], "shapes_val", tmp_path / "h.png", root)


def test_overlay_dims_outside_and_outlines_the_mask() -> None:
    image = np.full((8, 8, 3), 200, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    out = overlay(image, mask, GT_COLOUR)
    assert (out[0, 0] == 70).all()  # 200 * 0.35
    assert (out[2, 2] == GT_COLOUR).all() and (out[2, 4] == GT_COLOUR).all()  # the border
    assert (out[3, 3] == 200).all()  # the inside keeps its colour


def _squares() -> tuple[Sample, dict[int, np.ndarray]]:
    """A 20 x 30 image with three 6 x 6 squares (ids 1, 2, 3); the sentence names square 1."""
    anns = {}
    for i, x in enumerate((2, 12, 22), start=1):
        m = np.zeros((20, 30), bool)
        m[4:10, x : x + 6] = True
        anns[i] = Annotation(i, 1, (x, 4, 6, 6), encode_rle(m))
    sample = Sample(sent_id=1, ref_id=1, image_id=1, text="the left square", ann_ids=(1,))
    return sample, {i: a.mask(20, 30) for i, a in anns.items()}


def test_outcome_names_what_a_mask_covers() -> None:
    sample, objects = _squares()
    one, two, three = objects[1], objects[2], objects[3]
    half_of_two = two & (np.arange(30) < 15)[None]  # 3 of its 6 columns: covers it (>= half)
    background = np.zeros_like(one)
    background[12:20] = True
    cases = {
        "correct": one,
        "target + others": one | three | half_of_two,  # IoU 36 / 90
        "poor mask": one | background,  # the target, and no other object, but IoU 36 / 276
        "another object": two,
        "other objects": two | three,
        "no object": np.zeros_like(one),
    }
    assert list(cases) == list(OUTCOMES)
    for expected, pred in cases.items():
        assert outcome(pred, sample, objects) == expected, expected
    # a third of an object does not cover it; half of the target does
    third_of_two = two & (np.arange(30) < 14)[None]
    assert outcome(one | background | third_of_two, sample, objects) == "poor mask"
    assert outcome(one & (np.arange(30) < 5)[None] | background, sample, objects) == "poor mask"
    assert outcome(half_of_two | three, sample, objects) == "other objects"
    nothing = Sample(sent_id=2, ref_id=2, image_id=1, text="the blue square", ann_ids=())  # no such object
    assert outcome(np.zeros_like(one), nothing, objects) == "correct"
    assert outcome(two, nothing, objects) == "another object"


def test_outcome_table_of_reference_rows(evaluated, tmp_path: Path) -> None:
    root, runs, _ = evaluated
    run(["all_objects"], ["shapes_val"], data_root=root, output_dir=runs, save_masks=True)
    names = ["oracle", "largest", "all_objects"]
    table = outcome_table([runs / f"{m}__shapes_val" for m in names], "shapes_val", root)
    overall = table[table["kind"] == "all"].set_index("model")
    assert list(overall.index) == names
    n = len(list(iter_samples(runs / "oracle__shapes_val")))
    assert (overall["sentences"] == n).all()
    assert np.allclose(overall[list(OUTCOMES)].sum(axis=1), 100)
    assert overall.loc["oracle", "correct"] == 100
    # the largest object is one whole object: the target or another one
    assert overall.loc["largest", ["correct", "another object"]].sum() == pytest.approx(100)
    # every object: right when the target is the only object, else the target and others
    assert overall.loc["all_objects", ["correct", "target + others"]].sum() == pytest.approx(100)
    assert overall.loc["all_objects", "target + others"] > 0
    by_kind = table[table["kind"] != "all"]
    assert set(by_kind["kind"]) == set(sentence_kinds(root)[r["sent_id"]] for r in iter_samples(runs / "oracle__shapes_val"))
    assert (by_kind.groupby("model")["sentences"].sum() == n).all()
    paths = write_outcomes(table, tmp_path, "shapes_val")
    assert [p.name for p in paths] == ["outcomes.csv", "outcomes.md", "outcomes.png"]
    assert "| largest" in paths[1].read_text() and "## By sentence kind" in paths[1].read_text()
    assert Image.open(paths[2]).format == "PNG"
    with pytest.raises(EvfbenchError, match="--save-masks"):
        outcome_table([runs / "empty__shapes_val"], "shapes_val", root)


def test_outcomes_cli(evaluated, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, runs, _ = evaluated
    argv = ["--runs", str(runs), "--split", "shapes_val", "--data-root", str(root), "--output-dir", str(tmp_path)]
    assert outcomes_main(argv + ["--models", "largest,box"]) == 0
    assert "outcomes.md" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "outcomes.csv")
    assert list(table.loc[table["kind"] == "all", "model"]) == ["largest", "box"]
    assert outcomes_main(argv + ["--models", "empty"]) == 2  # saved without masks: a message, not a traceback
    assert "--save-masks" in capsys.readouterr().err
