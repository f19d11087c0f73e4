"""The synthetic ``shapes`` benchmark: determinism, refer schema, exact masks, unambiguous
expressions (checked by an interpreter written here, independently of the generator), the need
for the text, the split card's counts, and the resumable CLI."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from evfbench.cards import registry_root
from evfbench.data.masks import decode_segmentation
from evfbench.data.safe_pickle import load_refs
from evfbench.prep import shapes

SMALL = {"train": 30, "val": 12, "testA": 12, "testB": 12}


def _build(root: Path, **kwargs: Any) -> dict | None:
    return shapes.build_shapes(root, kwargs.pop("n_images", SMALL), progress=False, **kwargs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    _build(root)
    return root


@pytest.fixture(scope="module")
def decoded(corpus: Path) -> tuple[list[dict], dict[int, list[dict]], dict[int, dict]]:
    return _objects(corpus)


def _load(root: Path) -> tuple[list[dict], dict]:
    with open(root / "shapes" / "refs(unc).p", "rb") as f:
        refs = pickle.load(f, encoding="latin1")
    instances = json.loads((root / "shapes" / "instances.json").read_text())
    return refs, instances


def _objects(root: Path) -> tuple[list[dict], dict[int, list[dict]], dict[int, dict]]:
    """refs, the decoded objects of each image, and the image records."""
    refs, inst = _load(root)
    images = {im["id"]: im for im in inst["images"]}
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        im = images[a["image_id"]]
        attrs = a["attributes"]
        objects.setdefault(a["image_id"], []).append({
            "id": a["id"], "category": names[a["category_id"]], "color": attrs["color"], "size": attrs["size"],
            "cx": attrs["center"][0], "cy": attrs["center"][1], "radius": attrs["radius"],
            "full_area": attrs["full_area"], "z": attrs["z"], "area": a["area"], "bbox": a["bbox"],
            "mask": decode_segmentation(a["segmentation"], im["height"], im["width"]),
        })
    return refs, objects, images


# ----------------------------------------------------------------------------- files


def test_same_seed_gives_byte_identical_files(corpus: Path, tmp_path: Path) -> None:
    _build(tmp_path)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                           if p.is_file() and p.name != "MANIFEST.json")
    assert len(files) == sum(SMALL.values()) + 2
    for rel in files:
        assert (corpus / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    other = tmp_path / "seed1"
    _build(other, seed=1)
    assert (other / "shapes" / "instances.json").read_bytes() != (corpus / "shapes" / "instances.json").read_bytes()


def test_worker_processes_give_the_same_bytes(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large builds draw images in worker processes; the files must not depend on that."""
    from concurrent.futures import ProcessPoolExecutor

    import evfbench.prep.shapes as shapes

    monkeypatch.setattr(shapes, "_pool", lambda n: ProcessPoolExecutor(max_workers=2))
    _build(tmp_path)
    for rel in ("shapes/refs(unc).p", "shapes/instances.json", "images/shapes/shapes_000003.png"):
        assert (corpus / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_refer_schema(corpus: Path) -> None:
    refs, inst = _load(corpus)
    assert refs == load_refs(corpus / "shapes" / "refs(unc).p")  # the project's safe loader agrees
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    assert [c["name"] for c in inst["categories"]] == ["circle", "square", "triangle", "diamond", "star", "cross"]
    assert all(set(c) == {"id", "name", "supercategory"} for c in inst["categories"])
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert sent_ids == list(range(len(sent_ids)))
    assert [r["ref_id"] for r in refs] == list(range(len(refs)))
    for r in refs:
        assert set(r) == {"ref_id", "ann_id", "image_id", "category_id", "split", "sent_ids", "file_name",
                          "sentences", "style"}
        ann, image = anns[r["ann_id"]], images[r["image_id"]]
        assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"]
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        assert 1 <= len(r["sentences"]) <= 3
        # the RefCOCO trap: the ref's file_name names <image stem>_<ann_id>, not the image file
        assert r["file_name"] == f"{Path(image['file_name']).stem}_{r['ann_id']}.png" != image["file_name"]
        assert not (corpus / shapes.IMAGE_DIR / r["file_name"]).exists()
        for s in r["sentences"]:
            assert set(s) == {"sent_id", "raw", "sent", "tokens", "kind"}
            assert s["sent"] == s["raw"].lower() and s["tokens"] == s["sent"].split()
            assert s["kind"] in shapes.KIND_WEIGHTS
        assert len({s["sent"] for s in r["sentences"]}) == len(r["sentences"])
        location_free = all(s["kind"] in shapes.PLUS_KINDS for s in r["sentences"])
        assert r["style"] == ("plus" if location_free else "loc")
        if location_free:
            words = {w for s in r["sentences"] for w in s["tokens"]}
            assert not words & {"left", "right", "top", "bottom", "above", "below", "under", "leftmost",
                                "rightmost", "middle", "center", "next", "behind", "front", "upper", "lower"}
    # testA: circles (RefCOCO's people); testB: the other categories
    assert {r["category_id"] for r in refs if r["split"] == "testA"} == {1}
    assert 1 not in {r["category_id"] for r in refs if r["split"] == "testB"}
    assert len({r["category_id"] for r in refs if r["split"] == "train"}) == 6
    assert {"plus", "loc"} <= {r["style"] for r in refs}
    for im in inst["images"]:
        assert re.fullmatch(r"shapes_\d{6}\.png", im["file_name"]) and im["file_name"] == f"shapes_{im['id']:06d}.png"
        with Image.open(corpus / shapes.IMAGE_DIR / im["file_name"]) as pil:
            assert pil.mode == "RGB" and pil.size == (im["width"], im["height"])
    assert any(im["width"] != im["height"] for im in inst["images"])  # padding logic gets exercised


def test_masks_are_exact_and_match_the_pixels(corpus: Path, decoded: tuple) -> None:
    _, objects, images = decoded
    for image_id, objs in objects.items():
        im = images[image_id]
        pixels = np.asarray(Image.open(corpus / shapes.IMAGE_DIR / im["file_name"])).astype(int)
        assert 3 <= len(objs) <= 6
        union = np.zeros((im["height"], im["width"]), dtype=int)
        for o in objs:
            m = o["mask"]
            assert m.any() and o["area"] == int(m.sum())
            ys, xs = np.nonzero(m)
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert shapes.MIN_VISIBLE * o["full_area"] <= o["area"] <= o["full_area"]
            # the mask holds exactly the pixels painted in the shape's colour (+-12 tint, +-3 grain)
            diff = np.abs(pixels[m] - np.array(shapes.COLORS[o["color"]]))
            assert diff.max() <= 16, (image_id, o["id"])
            union += m
        assert union.max() == 1  # visible masks never overlap: z-order was applied


def test_some_shapes_overlap(decoded: tuple) -> None:
    _, objects, _ = decoded
    occluded = [o for objs in objects.values() for o in objs if o["area"] < o["full_area"]]
    assert 0.05 < len(occluded) / sum(len(v) for v in objects.values()) < 0.5


# ----------------------------------------------------------------------------- expressions
# An interpreter of the grammar written from data_prep/shapes.md, without margins: each
# sentence must select exactly its target among the objects of its image.

SIZE_WORDS = {"small": "small", "little": "small", "medium": "medium", "medium-sized": "medium",
              "large": "large", "big": "large"}
NOUNS = ("circle", "square", "triangle", "diamond", "star", "cross", "shape")
PLURAL_NOUNS = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
                "stars": "star", "crosses": "cross", "shapes": "shape"}
COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange")
AXIS = {"left": ("cx", 1), "right": ("cx", -1), "top": ("cy", 1), "bottom": ("cy", -1)}
EXTREME_WORDS = {"left": "left", "leftmost": "left", "far left": "left", "right": "right", "rightmost": "right",
                 "far right": "right", "top": "top", "upper": "top", "topmost": "top", "highest": "top",
                 "very top": "top", "bottom": "bottom", "lower": "bottom", "lowest": "bottom",
                 "bottommost": "bottom", "very bottom": "bottom"}
RELATION_WORDS = {"left of": "left", "to the left of": "left", "right of": "right", "to the right of": "right",
                  "above": "above", "below": "below", "under": "below", "next to": "near", "closest to": "near",
                  "nearest": "near", "behind": "behind", "partly covered by": "behind", "in front of": "front",
                  "covering": "front"}


def _alt(words: Any) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


def _np_re(p: str, plural: bool = False) -> str:
    """A noun phrase with named groups ``<p>size``, ``<p>color``, ``<p>noun``."""
    nouns = PLURAL_NOUNS if plural else NOUNS
    return (rf"(?:(?P<{p}size>{_alt(SIZE_WORDS)}) )?(?:(?P<{p}color>{_alt(COLOR_WORDS)}) )?"
            rf"(?P<{p}noun>{_alt(nouns)})")


T, A = _np_re("t"), _np_re("a")
REGIONS = "top left|top right|bottom left|bottom right"
GRAMMAR = [  # (kind, pattern); the first full match wins
    ("comparative", rf"the (?P<word>bigger|smaller) of the two {_np_re('t', plural=True)}"),
    ("comparative", rf"the (?P<word>bigger|smaller|biggest|largest|smallest) {T}"),
    ("hidden", rf"the partially hidden {T}"),
    ("hidden", rf"the {T} that is partly covered"),
    ("ordinal", rf"the (?P<ord>second|third|fourth) {T} from the (?P<dir>left|right|top|bottom)"),
    ("region", rf"the {T} (?:in the|at the) (?P<region>{REGIONS})(?: corner)?"),
    ("region", rf"the (?P<region>{REGIONS}) {T}"),
    ("region", rf"the {T} in the (?P<region>middle|center)"),
    ("relation", rf"the {T} (?P<rel>{_alt(RELATION_WORDS)}) the {A}"),
    ("extreme", rf"the (?P<ext>{_alt(EXTREME_WORDS)}) {T}"),
    ("extreme", rf"the {T} (?:on the|at the|furthest to the) (?P<ext>{_alt(EXTREME_WORDS)})"),
    ("attribute", rf"the {T}"),
]


def _np(m: re.Match, p: str) -> tuple[str | None, str | None, str | None]:
    """(size, colour, category) named by a noun phrase; None = any."""
    size, noun = m.group(f"{p}size"), PLURAL_NOUNS.get(m.group(f"{p}noun"), m.group(f"{p}noun"))
    return SIZE_WORDS[size] if size else None, m.group(f"{p}color"), None if noun == "shape" else noun


def _matches(o: dict, np_: tuple) -> bool:
    return all(v is None or v == o[k] for v, k in zip(np_, ("size", "color", "category")))


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


def _only(items: list[dict]) -> dict:
    assert len(items) == 1, [o["id"] for o in items]
    return items[0]


def interpret(sentence: str, objs: list[dict], width: int, height: int) -> tuple[str, dict]:
    """(kind, the one object the sentence selects); fails if it selects none or several.

    Semantics without margins: 'left of' = smaller centre x, 'top left' = that quadrant of the
    image, 'in the middle' = centre within 15 % of the image centre, 'partially hidden' = more
    than 5 % hidden, 'behind X' = drawn before X and touching it, sizes by radius.
    """
    text = sentence if sentence.startswith("the ") else "the " + sentence
    for kind, pattern in GRAMMAR:
        m = re.fullmatch(pattern, text)
        if m:
            break
    else:
        raise AssertionError(f"sentence outside the grammar: {sentence!r}")
    pool = [o for o in objs if _matches(o, _np(m, "t"))]
    if kind == "attribute":
        return kind, _only(pool)
    if kind == "comparative":
        pool.sort(key=lambda o: o["radius"])
        assert len(pool) >= 2 and (len(pool) == 2 or m["word"] not in {"bigger", "smaller"})
        pick, runner_up = (pool[-1], pool[-2]) if m["word"] in {"bigger", "biggest", "largest"} else pool[:2]
        assert pick["radius"] != runner_up["radius"]
        return kind, pick
    if kind == "hidden":
        return kind, _only([o for o in pool if 1 - o["area"] / o["full_area"] > 0.05])
    if kind in {"ordinal", "extreme"}:
        k = ["first", "second", "third", "fourth"].index(m["ord"]) if kind == "ordinal" else 0
        key, sign = AXIS[m["dir"] if kind == "ordinal" else EXTREME_WORDS[m["ext"]]]
        pool.sort(key=lambda o: sign * o[key])
        assert len(pool) >= max(k + 1, 2) and len({o[key] for o in pool}) == len(pool)
        return kind, pool[k]
    if kind == "region":
        if m["region"] in {"middle", "center"}:
            return kind, _only([o for o in pool if max(abs(o["cx"] / width - 0.5), abs(o["cy"] / height - 0.5)) < 0.15])
        vert, horiz = m["region"].split()
        return kind, _only([o for o in pool if (o["cx"] < width / 2) == (horiz == "left")
                            and (o["cy"] < height / 2) == (vert == "top")])
    rel = RELATION_WORDS[m["rel"]]
    anchor = _only([o for o in objs if _matches(o, _np(m, "a"))])
    pool = [o for o in pool if o is not anchor]
    if rel == "near":
        dist = [np.hypot(o["cx"] - anchor["cx"], o["cy"] - anchor["cy"]) for o in pool]
        assert len(pool) >= 2 and sorted(dist)[0] < sorted(dist)[1]
        return kind, pool[int(np.argmin(dist))]
    holds = {
        "left": lambda o: o["cx"] < anchor["cx"], "right": lambda o: o["cx"] > anchor["cx"],
        "above": lambda o: o["cy"] < anchor["cy"], "below": lambda o: o["cy"] > anchor["cy"],
        "behind": lambda o: o["z"] < anchor["z"] and _touch(o["mask"], anchor["mask"]),
        "front": lambda o: o["z"] > anchor["z"] and _touch(o["mask"], anchor["mask"]),
    }[rel]
    return ("occlusion" if rel in {"behind", "front"} else kind), _only([o for o in pool if holds(o)])


def test_interpreter_on_a_hand_made_scene() -> None:
    """The checker itself must be right: a scene and sentences with known answers."""
    def obj(i: int, cat: str, color: str, size: str, cx: float, cy: float, r: float) -> dict:
        mask = np.zeros((100, 100), dtype=bool)
        mask[int(cy) - 2:int(cy) + 2, int(cx) - 2:int(cx) + 2] = True
        return {"id": i, "category": cat, "color": color, "size": size, "cx": cx, "cy": cy, "radius": r,
                "area": 16, "full_area": 16, "z": i, "mask": mask}

    objs = [obj(1, "circle", "red", "small", 20, 20, 8), obj(2, "circle", "blue", "large", 80, 30, 18),
            obj(3, "square", "red", "medium", 45, 80, 13)]
    answers = {"the blue circle": 2, "small red circle": 1, "the square": 3, "the leftmost circle": 1,
               "the circle on the right": 2, "the bigger of the two red shapes": 3, "the smallest shape": 1,
               "the second shape from the top": 2, "the shape below the blue circle": 3,
               "the circle next to the square": 2, "the shape in the bottom left corner": 3,
               "the top right shape": 2, "the lowest shape": 3}
    for sentence, want in answers.items():
        assert interpret(sentence, objs, 100, 100)[1]["id"] == want, sentence
    for ambiguous in ("the circle", "the red shape", "the shape above the square"):
        with pytest.raises(AssertionError):
            interpret(ambiguous, objs, 100, 100)


def _check_expressions(refs: list[dict], objects: dict[int, list[dict]], images: dict[int, dict]) -> set[str]:
    kinds = set()
    for r in refs:
        im = images[r["image_id"]]
        for s in r["sentences"]:
            kind, picked = interpret(s["sent"], objects[r["image_id"]], im["width"], im["height"])
            assert picked["id"] == r["ann_id"], (r["ref_id"], s["sent"])
            assert kind == s["kind"], s["sent"]
            kinds.add(kind)
    return kinds


def test_every_expression_selects_exactly_its_target(decoded: tuple) -> None:
    assert _check_expressions(*decoded) >= {"attribute", "comparative", "extreme", "ordinal", "region", "relation"}


@pytest.mark.slow
def test_every_expression_of_a_larger_corpus_selects_exactly_its_target(tmp_path: Path) -> None:
    _build(tmp_path, n_images={"train": 400, "val": 200, "testA": 200, "testB": 200})
    assert _check_expressions(*_objects(tmp_path)) == set(shapes.KIND_WEIGHTS)


def test_text_is_needed(decoded: tuple) -> None:
    """Text-agnostic predictions (all shapes, the largest shape) score far below the target."""
    refs, objects, _ = decoded
    scores: dict[str, list[float]] = {"all shapes": [], "largest shape": []}
    for r in refs:
        objs = objects[r["image_id"]]
        target = next(o["mask"] for o in objs if o["id"] == r["ann_id"])
        guesses = {"all shapes": np.any([o["mask"] for o in objs], axis=0),
                   "largest shape": max(objs, key=lambda o: o["area"])["mask"]}
        for name, guess in guesses.items():
            scores[name] += [(target & guess).sum() / (target | guess).sum()] * len(r["sentences"])
    assert np.mean(scores["all shapes"]) < 0.4, np.mean(scores["all shapes"])
    assert np.mean(scores["largest shape"]) < 0.45, np.mean(scores["largest shape"])


def test_loads_through_the_refer_reader(corpus: Path, decoded: tuple) -> None:
    from evfbench.data.refer import load_split
    from evfbench.registry import get_split

    refs, objects, _ = decoded
    for split in ("val", "testA", "testB"):
        groups = load_split(get_split(f"shapes_{split}"), corpus)
        mine = [r for r in refs if r["split"] == split]
        assert [g.image_id for g in groups] == sorted({r["image_id"] for r in mine})
        assert sum(len(g.samples) for g in groups) == sum(len(r["sentences"]) for r in mine)
        group, sample = groups[0], groups[0].samples[0]
        ref = next(r for r in mine if r["ref_id"] == sample.ref_id)
        assert sample.text == ref["sentences"][0]["sent"] and sample.ann_ids == (ref["ann_id"],)
        assert group.path == corpus / shapes.IMAGE_DIR / f"shapes_{group.image_id:06d}.png"  # not the ref's name
        assert group.load_image().shape == (group.height, group.width, 3)
        assert len(group.annotations) == len(objects[group.image_id])
        target = next(o["mask"] for o in objects[group.image_id] if o["id"] == ref["ann_id"])
        assert np.array_equal(group.target_mask(sample), target)


# ----------------------------------------------------------------------------- statistics and card


def _card_counts() -> dict[str, dict[str, int]]:
    card = yaml.safe_load((registry_root() / "splits" / "shapes.yaml").read_text())
    assert card["dataset"] == "shapes" and card["image_root"] == shapes.IMAGE_DIR
    assert card["split_by"]["unc"]["default"] is True
    return card["split_by"]["unc"]["splits"]


def test_returned_statistics_match_the_files(corpus: Path, tmp_path: Path) -> None:
    refs, inst = _load(corpus)
    manifest = json.loads((corpus / "shapes" / "MANIFEST.json").read_text())
    counted = {split: {"refs": sum(r["split"] == split for r in refs),
                       "sentences": sum(len(r["sentences"]) for r in refs if r["split"] == split),
                       "images": len({r["image_id"] for r in refs if r["split"] == split})} for split in SMALL}
    assert manifest["statistics"] == counted == shapes.corpus_statistics(SMALL, seed=0)
    assert len(inst["images"]) == sum(SMALL.values())


def test_card_counts_of_the_evaluation_splits() -> None:
    """Each image draws from its own generator, so a split's counts do not depend on the others."""
    card = _card_counts()
    evaluation = {s: shapes.SCALES["default"][s] for s in ("val", "testA", "testB")}
    stats = shapes.corpus_statistics(evaluation, seed=0)
    for split in evaluation:
        assert card[split] == stats[split], split


@pytest.mark.slow
def test_card_counts_equal_the_default_scale() -> None:
    assert _card_counts() == shapes.corpus_statistics(shapes.SCALES["default"], seed=0)


# ----------------------------------------------------------------------------- resumable CLI


def test_rebuild_is_skipped_unless_changed_or_forced(tmp_path: Path) -> None:
    small = {"val": 4}
    assert _build(tmp_path, n_images=small) is not None
    instances = tmp_path / "shapes" / "instances.json"
    before = instances.stat().st_mtime_ns
    assert _build(tmp_path, n_images=small) is None  # complete: skipped
    assert instances.stat().st_mtime_ns == before
    assert _build(tmp_path, n_images=small, seed=3) is not None  # other settings: rebuilt
    assert _build(tmp_path, n_images=small, seed=3, force=True) is not None
    instances.write_text("{}")  # damaged annotations no longer match the manifest
    assert _build(tmp_path, n_images=small, seed=3) is not None
    (tmp_path / shapes.IMAGE_DIR / "shapes_000002.png").unlink()  # a lost image too
    assert _build(tmp_path, n_images=small, seed=3) is not None
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["shapes"]  # no temporary folders left


def test_interrupted_build_never_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"val": 4}
    _build(tmp_path, n_images=small)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "write_refer", crash)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, n_images=small, force=True)
    assert not (tmp_path / "shapes" / "MANIFEST.json").exists()
    monkeypatch.undo()
    assert _build(tmp_path, n_images=small) is not None  # rebuilt, not skipped


def test_cli_through_the_prep_dispatcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from evfbench.prep.__main__ import main as prep

    monkeypatch.setitem(shapes.SCALES, "default", {"train": 3, "val": 2, "testA": 2, "testB": 2})
    assert prep(["shapes", "--data-root", str(tmp_path), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "| split | refs | sentences | images |" in out and "| testB |" in out
    manifest = json.loads((tmp_path / "shapes" / "MANIFEST.json").read_text())
    assert manifest["scale"] == "default" and manifest["seed"] == 0
    assert prep(["shapes", "--data-root", str(tmp_path)]) == 0
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        prep(["shapes", "--scale", "huge"])


def test_more_train_images_keep_the_evaluation_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--train-images grows the train split only: its first images, and every val and test
    image and sentence, are those of the scale's corpus (only the image ids move)."""
    from evfbench.prep.__main__ import main as prep

    monkeypatch.setitem(shapes.SCALES, "default", {"train": 3, "val": 2, "testA": 2, "testB": 2})
    assert prep(["shapes", "--data-root", str(tmp_path / "small")]) == 0
    assert prep(["shapes", "--data-root", str(tmp_path / "big"), "--train-images", "7"]) == 0
    assert "7 train images" in capsys.readouterr().out
    assert shapes.is_built(tmp_path / "big", train_images=7) and shapes.is_built(tmp_path / "small")
    assert not shapes.is_built(tmp_path / "small", train_images=7) and not shapes.is_built(tmp_path / "big")
    (small, small_inst), (big, big_inst) = _load(tmp_path / "small"), _load(tmp_path / "big")
    assert len({r["image_id"] for r in big if r["split"] == "train"}) == 7

    def by_split(refs: list[dict], inst: dict, split: str) -> list[tuple[list[str], bytes]]:
        files = {im["id"]: im["file_name"] for im in inst["images"]}
        root = tmp_path / ("small" if inst is small_inst else "big") / "images" / "shapes"
        out, seen = [], set()
        for r in refs:
            if r["split"] == split and r["image_id"] not in seen:
                seen.add(r["image_id"])
                sentences = [s["sent"] for q in refs if q["image_id"] == r["image_id"] for s in q["sentences"]]
                out.append((sentences, (root / files[r["image_id"]]).read_bytes()))
        return out

    for split in ("val", "testA", "testB"):
        assert by_split(small, small_inst, split) == by_split(big, big_inst, split)
    assert by_split(small, small_inst, "train") == by_split(big, big_inst, "train")[:3]


def test_bad_counts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown shapes split"):
        shapes.build_shapes(tmp_path, {"test": 3})
    with pytest.raises(ValueError, match="unknown shapes scale"):
        shapes.build_shapes(tmp_path, scale="huge")
