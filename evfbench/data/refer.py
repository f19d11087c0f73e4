"""Refer-format reader (RefCOCO, RefCOCO+, RefCOCOg, RefCLEF; gRefCOCO as an extension).

Expected folder tree (``<root>`` is ``--data-root``, else ``$EVFBENCH_DATA``)::

    <root>/
    ├── refcoco/       refs(unc).p   refs(google).p     instances.json
    ├── refcoco+/      refs(unc).p                      instances.json
    ├── refcocog/      refs(umd).p   refs(google).p     instances.json
    ├── refclef/       refs(unc).p   refs(berkeley).p   instances.json
    ├── grefcoco/      grefs(unc).json                  instances.json   (optional extension)
    └── images/
        ├── mscoco/images/train2014/COCO_train2014_000000000009.jpg ...   (refcoco, +, g)
        └── saiapr_tc-12/<file_name from instances.json>                 (refclef)

Catalogue, in the spirit of pycocotools (index once into dicts, then getters)::

    refer = Refer(root, "refcoco", "unc")            # or open_refer(...): cached per process
    refer.get_ref_ids(image_ids=(), cat_ids=(), split=None)  -> list[int]
    refer.get_ann_ids(image_ids=(), cat_ids=(), ref_ids=())  -> list[int]
    refer.get_img_ids(ref_ids=())                            -> list[int]
    refer.load_refs(ids) / load_anns / load_imgs / load_sents / load_cats  -> list[dict]
    refer.image_path(image_id)                               -> Path
    indexes: refs, anns, imgs, cats, sents, ref_to_ann_ids, ref_to_ann, ann_to_refs,
             img_to_refs, img_to_anns, cat_to_refs, sent_to_ref

    load_split(card, data_root=None) -> list[ImageGroup]     what the runner calls

Traps of the layout, all handled here:

- ``refs(X).p`` is a Python 2 pickle: loaded with latin-1 by a restricted unpickler
  (:mod:`evfbench.data.safe_pickle`), since a pickle can run code.
- A ref's ``file_name`` (``COCO_train2014_..._<ann_id>.jpg``) is not the image file; the file
  is ``images[image_id].file_name`` of ``instances.json`` under the card's image root.
- Split filter of the reference API: ``testA``/``testB``/``testC`` select every ref whose split
  has that letter after ``test`` (a ``testAB`` ref is in testA and in testB); ``test`` selects
  every split containing "test"; any other name (``train``, ``val``, ``testAB``) matches exactly.
- Segmentations are polygons (parts unioned, i.e. clipped to {0, 1}), RLE (refclef) or empty
  (all-zero mask); :mod:`evfbench.data.masks` decodes them.
- gRefCOCO's ``grefs(X).json`` (read when no ``refs(X).p`` exists) has a list of ``ann_id``;
  ``[-1]`` means no target, i.e. ``Sample.ann_ids == ()`` and an all-zero ground truth.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from evfbench.cards import SplitCard, split_cards
from evfbench.data import default_data_root
from evfbench.data.safe_pickle import load_refs as load_refs_file
from evfbench.data.safe_pickle import validate_refs
from evfbench.data.types import Annotation, ImageGroup, Sample
from evfbench.errors import EvfbenchError

INSTANCES = "instances.json"
PROVENANCE = "provenance.json"  # written by converters (evfbench.data.hf): source and caveats per split
NO_TARGET = -1


class ReferDataError(EvfbenchError):
    """A refer-layout file that is missing or inconsistent with its neighbours."""


def dataset_cards(name: str) -> list[SplitCard]:
    """The split cards of dataset ``name`` (or an alias such as ``refcocoplus``), sorted by name."""
    found: dict[str, SplitCard] = {}
    for key, card in split_cards().items():
        rest = key[len(name) + 1:] if key.startswith(name + "_") else None
        if rest in (card.split, f"{card.split_by}_{card.split}"):
            found[card.name] = card
    return [found[k] for k in sorted(found)]


def default_split_by(name: str) -> str:
    """The partition a bare split name means (``refcoco_val`` -> ``unc``), from the split cards."""
    cards = dataset_cards(name)
    if not cards:
        raise ReferDataError(f"no split card for dataset '{name}'\n  fix: `python -m evfbench.ls splits` lists them")
    defaults = [c.split_by for c in cards if c.name == f"{c.dataset}_{c.split}"]
    return defaults[0] if defaults else cards[0].split_by


def _fix_hint(dataset: str, root: Path) -> str:
    cards = dataset_cards(dataset)
    source = cards[0].source if cards and cards[0].source else f"the {dataset} annotations"
    return (f"get {source} and unpack it under {root} as drawn in evfbench/data/refer.py; "
            f"`python -m evfbench.prep {dataset} --data-root {root}` checks the layout")


def refs_file(folder: Path, split_by: str) -> Path:
    """``refs(<split_by>).p``, else gRefCOCO's ``grefs(<split_by>).json``; missing -> error naming both."""
    for name in (f"refs({split_by}).p", f"grefs({split_by}).json"):
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.glob("*refs(*)*")) if folder.is_dir() else []
    seen = f" (the folder holds: {', '.join(present)}; is --split-by right?)" if present else ""
    raise ReferDataError(
        f"refs file not found: {folder / f'refs({split_by}).p'}{seen}\n"
        f"  fix: {_fix_hint(folder.name, folder.parent)}"
    )


def split_matches(ref_split: str, split: str) -> bool:
    """The reference API's split filter (see the module docstring)."""
    if split == "test":
        return "test" in ref_split
    if re.fullmatch(r"test[A-Z]", split):
        return ref_split.startswith("test") and split[-1] in ref_split[4:]
    return ref_split == split


def target_ids(ann_id: int | list[int]) -> tuple[int, ...]:
    """A ref's targets: one id (refer) or a list (gRefCOCO) where ``[-1]`` means no target."""
    ids = ann_id if isinstance(ann_id, (list, tuple)) else [ann_id]
    return tuple(int(a) for a in ids if int(a) != NO_TARGET)


def sentence_text(sent: dict[str, Any]) -> str:
    """The text the evaluation feeds a model: ``sent``, else ``raw``, stripped and lower-cased."""
    return str(sent.get("sent") or sent.get("raw") or "").strip().lower()


def _read_refs(path: Path) -> list[dict]:
    if path.suffix == ".p":
        return load_refs_file(path)
    try:
        refs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReferDataError(f"{path} is not valid JSON ({err})\n  fix: download it again") from err
    return validate_refs(refs, path)


def _read_instances(path: Path, dataset: str, root: Path) -> dict[str, list[dict]]:
    if not path.is_file():
        raise ReferDataError(f"annotation file not found: {path}\n  fix: {_fix_hint(dataset, root)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReferDataError(f"{path} is not valid JSON ({err})\n  fix: download it again") from err
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or key not in data:
            raise ReferDataError(f"{path} lacks the field '{key}'; it is not a COCO-style instances file\n"
                                 f"  fix: {_fix_hint(dataset, root)}")
    data.setdefault("categories", [])
    return data


class Refer:
    """One dataset partition (``refcoco``/``unc``) indexed in dicts; treat the dicts as read-only.

    ``image_root`` is the image folder relative to ``data_root``; by default the split card's.
    """

    def __init__(self, data_root: Path, dataset: str, split_by: str, image_root: str | None = None) -> None:
        self.data_root = Path(data_root)
        self.dataset = dataset
        self.split_by = split_by
        self.folder = self.data_root / dataset
        self.refs_path = refs_file(self.folder, split_by)
        self.instances_path = self.folder / INSTANCES
        if image_root is None:
            cards = dataset_cards(dataset)
            if not cards:
                raise ReferDataError(f"no split card for dataset '{dataset}' tells where its images are\n"
                                     f"  fix: pass image_root=... or add registry/splits/{dataset}.yaml")
            image_root = cards[0].image_root
        self.image_dir = self.data_root / image_root
        self._index(_read_refs(self.refs_path), _read_instances(self.instances_path, dataset, self.data_root))

    def _index(self, refs: list[dict], instances: dict[str, list[dict]]) -> None:
        self.imgs: dict[int, dict] = {int(img["id"]): img for img in instances["images"]}
        self.anns: dict[int, dict] = {int(ann["id"]): ann for ann in instances["annotations"]}
        self.cats: dict[int, dict] = {int(cat["id"]): cat for cat in instances["categories"]}
        self.img_to_anns: dict[int, list[dict]] = defaultdict(list)
        for ann in self.anns.values():
            self.img_to_anns[int(ann["image_id"])].append(ann)

        self.refs: dict[int, dict] = {}
        self.sents: dict[int, dict] = {}
        self.sent_to_ref: dict[int, dict] = {}
        self.ref_to_ann_ids: dict[int, tuple[int, ...]] = {}
        self.ref_to_ann: dict[int, dict] = {}  # refs with exactly one target, as in the reference API
        self.ann_to_refs: dict[int, list[dict]] = defaultdict(list)
        self.img_to_refs: dict[int, list[dict]] = defaultdict(list)
        self.cat_to_refs: dict[int, list[dict]] = defaultdict(list)
        for ref in refs:
            ref_id, image_id = int(ref["ref_id"]), int(ref["image_id"])
            if image_id not in self.imgs:
                raise self._mismatch(ref_id, "image_id", image_id, "images")
            ann_ids = target_ids(ref["ann_id"])
            for ann_id in ann_ids:
                if ann_id not in self.anns:
                    raise self._mismatch(ref_id, "ann_id", ann_id, "annotations")
                self.ann_to_refs[ann_id].append(ref)
            self.refs[ref_id] = ref
            self.ref_to_ann_ids[ref_id] = ann_ids
            if len(ann_ids) == 1:
                self.ref_to_ann[ref_id] = self.anns[ann_ids[0]]
            self.img_to_refs[image_id].append(ref)
            self.cat_to_refs[int(ref.get("category_id", -1))].append(ref)
            for sent in ref["sentences"]:
                self.sents[int(sent["sent_id"])] = sent
                self.sent_to_ref[int(sent["sent_id"])] = ref

    def _mismatch(self, ref_id: int, field: str, value: int, table: str) -> ReferDataError:
        return ReferDataError(
            f"{self.refs_path}: ref {ref_id} has {field} {value}, which {self.instances_path} lacks in '{table}'\n"
            f"  fix: the refs file and instances.json come from different releases; unpack both from one zip"
        )

    def get_ref_ids(self, image_ids: Iterable[int] = (), cat_ids: Iterable[int] = (),
                    split: str | None = None) -> list[int]:
        """Refs on any of ``image_ids``, of any of ``cat_ids``, in ``split`` (empty filter = all)."""
        image_ids, cat_ids = set(image_ids), set(cat_ids)
        refs: Iterable[dict] = self.refs.values()
        if image_ids:
            refs = [r for i in image_ids for r in self.img_to_refs.get(i, [])]
        if cat_ids:
            refs = [r for r in refs if int(r.get("category_id", -1)) in cat_ids]
        if split is not None:
            refs = [r for r in refs if split_matches(str(r["split"]), split)]
        return sorted(int(r["ref_id"]) for r in refs)

    def get_ann_ids(self, image_ids: Iterable[int] = (), cat_ids: Iterable[int] = (),
                    ref_ids: Iterable[int] = ()) -> list[int]:
        """Annotations on any of ``image_ids``, of any of ``cat_ids``, targeted by any of ``ref_ids``."""
        image_ids, cat_ids, ref_ids = set(image_ids), set(cat_ids), set(ref_ids)
        anns: Iterable[dict] = self.anns.values()
        if image_ids:
            anns = [a for i in image_ids for a in self.img_to_anns.get(i, [])]
        if cat_ids:
            anns = [a for a in anns if int(a.get("category_id", -1)) in cat_ids]
        ids = {int(a["id"]) for a in anns}
        if ref_ids:
            ids &= {a for r in ref_ids for a in self.ref_to_ann_ids.get(r, ())}
        return sorted(ids)

    def get_img_ids(self, ref_ids: Iterable[int] = ()) -> list[int]:
        """Images of ``ref_ids``; every image of ``instances.json`` without a filter."""
        ref_ids = list(ref_ids)
        if not ref_ids:
            return sorted(self.imgs)
        return sorted({int(self.refs[r]["image_id"]) for r in ref_ids})

    def load_refs(self, ref_ids: Iterable[int]) -> list[dict]:
        return [self.refs[i] for i in ref_ids]

    def load_anns(self, ann_ids: Iterable[int]) -> list[dict]:
        return [self.anns[i] for i in ann_ids]

    def load_imgs(self, image_ids: Iterable[int]) -> list[dict]:
        return [self.imgs[i] for i in image_ids]

    def load_sents(self, sent_ids: Iterable[int]) -> list[dict]:
        return [self.sents[i] for i in sent_ids]

    def load_cats(self, cat_ids: Iterable[int]) -> list[dict]:
        return [self.cats[i] for i in cat_ids]

    def image_path(self, image_id: int) -> Path:
        """The image file: ``instances.json`` ``file_name`` under the image root (never the ref's)."""
        try:
            return self.image_dir / self.imgs[image_id]["file_name"]
        except KeyError:
            raise ReferDataError(f"{self.instances_path} has no image {image_id} with a 'file_name'\n"
                                 f"  fix: download the annotations again") from None


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _cached_refer(root: Path, dataset: str, split_by: str, image_root: str | None, _stamps: Any) -> Refer:
    return Refer(root, dataset, split_by, image_root)


def open_refer(data_root: Path, dataset: str, split_by: str, image_root: str | None = None) -> Refer:
    """A :class:`Refer` parsed once per process for each (root, dataset, split_by); reparsed if a file changes."""
    root = Path(data_root).expanduser().resolve()
    refs_path = refs_file(root / dataset, split_by)
    stamps = (_stamp(refs_path), _stamp(root / dataset / INSTANCES))
    return _cached_refer(root, dataset, split_by, image_root, stamps)


def _annotation(ann: dict) -> Annotation:
    return Annotation(
        ann_id=int(ann["id"]),
        category_id=int(ann.get("category_id", -1)),
        bbox=tuple(float(v) for v in ann.get("bbox", (0.0, 0.0, 0.0, 0.0))),
        segmentation=ann.get("segmentation", []),
        area=float(ann.get("area", 0.0)),
        attributes=dict(ann.get("attributes") or {}),
    )


def _warn_provenance(refer: Refer, splits: set[str]) -> None:
    """Repeat a converter's caveat (e.g. a non-standard val) whenever such a split is loaded."""
    path = refer.folder / PROVENANCE
    if not path.is_file():
        return
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("split_by") != refer.split_by:
        return
    for split in sorted(splits & set(info.get("warnings", {}))):
        warnings.warn(f"{refer.dataset} split '{split}' was converted from {info.get('source')}: "
                      f"{info['warnings'][split]}", UserWarning, stacklevel=3)


def load_split(card: SplitCard, data_root: Path | None = None) -> list[ImageGroup]:
    """Every sentence of ``card``'s split as samples grouped by image.

    One :class:`Sample` per sentence; groups sorted by image id, samples by sentence id. Each
    group carries every annotation of its image (not only the referred ones), for text-agnostic
    baselines such as "largest object"; height and width come from ``instances.json``.
    """
    root = Path(data_root) if data_root else default_data_root()
    refer = open_refer(root, card.dataset, card.split_by, card.image_root)
    refs = refer.load_refs(refer.get_ref_ids(split=card.split))
    if not refs:
        present = sorted({str(r["split"]) for r in refer.refs.values()})
        raise ReferDataError(f"{refer.refs_path} holds no ref of split '{card.split}' (its splits: "
                             f"{', '.join(present) or 'none'})\n  fix: check the split card {card.path} and --split-by")
    _warn_provenance(refer, {str(r["split"]) for r in refs})
    samples: dict[int, list[Sample]] = defaultdict(list)
    for ref in refs:
        image_id = int(ref["image_id"])
        for sent in ref["sentences"]:
            samples[image_id].append(Sample(
                sent_id=int(sent["sent_id"]),
                ref_id=int(ref["ref_id"]),
                image_id=image_id,
                text=sentence_text(sent),
                ann_ids=refer.ref_to_ann_ids[int(ref["ref_id"])],
                category_id=int(ref.get("category_id", -1)),
                split=str(ref["split"]),
                kind=str(sent.get("kind", "")),
            ))
    groups = []
    for image_id in sorted(samples):
        img = refer.imgs[image_id]
        anns = sorted(refer.img_to_anns.get(image_id, []), key=lambda a: int(a["id"]))
        groups.append(ImageGroup(
            image_id=image_id,
            path=refer.image_path(image_id),
            height=int(img["height"]),
            width=int(img["width"]),
            samples=sorted(samples[image_id], key=lambda s: s.sent_id),
            annotations={int(a["id"]): _annotation(a) for a in anns},
        ))
    return groups


def category_names(card: SplitCard, data_root: Path | None = None) -> dict[int, str]:
    """``category_id`` -> name, from the ``categories`` of the dataset's ``instances.json``."""
    root = Path(data_root) if data_root else default_data_root()
    refer = open_refer(root, card.dataset, card.split_by, card.image_root)
    return {cat_id: str(cat["name"]) for cat_id, cat in refer.cats.items()}
