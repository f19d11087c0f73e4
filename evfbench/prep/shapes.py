"""``python -m evfbench.prep shapes``: the synthetic referring-segmentation benchmark ``shapes``.

No machine here can download RefCOCO, so the toolkit generates its own corpus in the exact
refer layout (see ``data_prep/shapes.md`` for the tree, the grammar and the statistics)::

    <root>/shapes/refs(unc).p          refs, one to three sentences each (refer schema)
    <root>/shapes/instances.json       COCO subset; segmentation = compressed RLE of the visible mask
    <root>/shapes/MANIFEST.json        seed, scale, generator version, checksums: "the corpus is complete"
    <root>/images/shapes/shapes_000001.png ...

Each image holds 3-6 coloured shapes (6 categories, 6 colours, 3 size classes) on a lightly
textured background, drawn in z-order; some overlap, and then an annotation holds only the
visible part. Every expression is emitted only if exactly one shape of its image satisfies it
and no shape sits in the margin where the predicate would be unclear (a shape "left of" another
is >= 8 % of the image further left, every other candidate is not left of it at all), so the
ground truth is unambiguous. Splits mirror RefCOCO unc: testA targets circles (the "people" of
this corpus) in images with at least two circles, testB targets the other categories in images
with at least two shapes of one such category; train and val target every category.

Same seed and scale -> byte-identical files: every image draws from its own
``numpy.random.Generator`` seeded with ``(seed, split, index, stream)``; geometry and text use
stream 0 and pixels stream 1, so statistics can be computed without rendering a pixel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from evfbench.data import default_data_root
from evfbench.data.masks import encode_rle
from evfbench.data.refer_writer import write_refer
from evfbench.errors import EvfbenchError
from evfbench.io import atomic_write_json

DATASET = "shapes"
SPLIT_BY = "unc"
IMAGE_DIR = "images/shapes"  # relative to the data root; the split card's image_root
GENERATOR_VERSION = 1  # bump whenever the output for a given seed changes
SPLITS = ("train", "val", "testA", "testB")
SCALES: dict[str, dict[str, int]] = {
    "default": {"train": 2000, "val": 200, "testA": 200, "testB": 200},
    "large": {"train": 20000, "val": 2000, "testA": 2000, "testB": 2000},
}

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "circle", "supercategory": "round"},
    {"id": 2, "name": "square", "supercategory": "polygon"},
    {"id": 3, "name": "triangle", "supercategory": "polygon"},
    {"id": 4, "name": "diamond", "supercategory": "polygon"},
    {"id": 5, "name": "star", "supercategory": "symbol"},
    {"id": 6, "name": "cross", "supercategory": "symbol"},
)
CATEGORY_IDS = {c["name"]: c["id"] for c in CATEGORIES}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "star": "stars", "cross": "crosses", "shape": "shapes"}
# Circles are the dominant category, as people are in RefCOCO (testA is about them).
CATEGORY_WEIGHTS = (0.30, 0.14, 0.14, 0.14, 0.14, 0.14)
TEST_A_CATEGORY = "circle"
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (45, 165, 65),
    "blue": (40, 85, 220),
    "yellow": (240, 210, 40),
    "purple": (145, 65, 190),
    "orange": (245, 135, 30),
}
# Nominal radius as a fraction of min(height, width); classes are >= 1.2x apart.
SIZES: dict[str, tuple[float, float]] = {"small": (0.065, 0.08), "medium": (0.10, 0.12), "large": (0.145, 0.17)}
SIZE_WEIGHTS = (0.35, 0.35, 0.30)
SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium-sized"), "large": ("large", "big")}
# Distance from the centre to the farthest point, in nominal radii (keeps shapes inside the image).
EXTENT = {"circle": 1.0, "square": 0.89 * math.sqrt(2), "diamond": 0.89 * math.sqrt(2), "triangle": 1.25,
          "star": 1.3, "cross": math.hypot(1.05, 0.38)}
IMAGE_SIZES = ((128, 128), (128, 128), (144, 144), (160, 160), (160, 128), (128, 160), (144, 128), (128, 144))  # (W, H)

OVERLAP_PROB = 0.3  # chance that a shape is placed overlapping an earlier one
MIN_VISIBLE = 0.6  # an occluded shape keeps at least this share of its pixels
MIN_OVERLAP_PX = 12  # below this an overlap is too thin to call "behind"
GAP = 0.08  # ordering margin (extremes, ordinals, relations) as a fraction of min(H, W)
SIZE_MARGIN = 1.15  # comparatives need both radius and area this much apart
NEAR_MARGIN = 1.4  # "next to": nearest distance x this <= second nearest
HIDDEN_TRUE, HIDDEN_FALSE = 0.12, 0.02  # hidden share for "partially hidden" / clearly not
REFS_PER_IMAGE = {1: 0.10, 2: 0.40, 3: 0.35, 4: 0.15}
SENTS_PER_REF = {1: 0.08, 2: 0.12, 3: 0.80}
PLUS_REF_PROB = 0.3  # share of refs drawn only from location-free expressions (RefCOCO+ style)
# Expression kinds, the weight with which a sentence picks each, and which carry no location words.
KIND_WEIGHTS = {"attribute": 1.0, "comparative": 0.8, "hidden": 0.6, "extreme": 1.0, "ordinal": 0.7,
                "region": 0.6, "relation": 1.0, "occlusion": 0.7}
PLUS_KINDS = frozenset({"attribute", "comparative", "hidden"})
ORDINALS = {2: "second", 3: "third", 4: "fourth"}

Filter = tuple[str | None, str | None, str | None]  # (size, colour, category); None = any
T = TypeVar("T")


def _one(rng: np.random.Generator, options: Sequence[T]) -> T:
    """A uniform pick (``rng.choice`` would turn strings into numpy scalars)."""
    return options[int(rng.integers(len(options)))]


def _weighted(rng: np.random.Generator, weights: Sequence[float]) -> int:
    """Index drawn with the given (unnormalised) weights."""
    u = rng.random() * sum(weights)
    for i, w in enumerate(weights):
        u -= w
        if u < 0:
            return i
    return len(weights) - 1


@dataclass
class Shape:
    """One drawn shape; ``z`` is its drawing order (later = in front)."""

    category: str
    color: str
    size: str
    radius: float
    cx: float
    cy: float
    angle: float
    z: int
    full: np.ndarray  # (H, W) bool, the whole shape
    full_area: int = 0
    visible: np.ndarray | None = None  # (H, W) bool, what is left after the shapes in front
    visible_area: int = 0

    def __post_init__(self) -> None:
        self.full_area = int(self.full.sum())

    @property
    def extent(self) -> float:
        return self.radius * EXTENT[self.category]


@dataclass
class Scene:
    width: int
    height: int
    shapes: list[Shape]

    @property
    def scale(self) -> float:
        return float(min(self.width, self.height))


# ----------------------------------------------------------------------------- geometry


def _outline(category: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices (image coordinates, y down) of a non-circle shape."""
    if category in {"square", "diamond"}:
        polar = [(0.89 * r * math.sqrt(2), 45 + 90 * k) for k in range(4)]
    elif category == "triangle":
        polar = [(1.25 * r, -90 + 120 * k) for k in range(3)]
    elif category == "star":
        polar = [((1.3 if k % 2 == 0 else 0.55) * r, -90 + 36 * k) for k in range(10)]
    elif category == "cross":
        a, w = 1.05 * r, 0.38 * r
        pts = [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a),
               (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)]
        polar = [(math.hypot(x, y), math.degrees(math.atan2(y, x))) for x, y in pts]
    else:
        raise ValueError(f"unknown shape category '{category}'")
    return [(cx + d * math.cos(math.radians(t + angle)), cy + d * math.sin(math.radians(t + angle))) for d, t in polar]


def _rasterize(category: str, cx: float, cy: float, r: float, angle: float, width: int, height: int) -> np.ndarray:
    """The shape's pixels as ``(H, W) bool``; the image paints exactly these, so masks are exact.

    Drawn on a canvas around the shape only (a whole-image canvas costs 5x more).
    """
    e = r * EXTENT[category] + 2
    x0, y0 = max(0, int(cx - e)), max(0, int(cy - e))
    x1, y1 = min(width, int(cx + e) + 2), min(height, int(cy + e) + 2)
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    if category == "circle":
        draw.ellipse([cx - r - x0, cy - r - y0, cx + r - x0, cy + r - y0], fill=1)
    else:
        draw.polygon(_outline(category, cx - x0, cy - y0, r, angle), fill=1)
    full = np.zeros((height, width), dtype=bool)
    full[y0:y1, x0:x1] = np.asarray(canvas, dtype=bool)
    return full


def _angle(category: str, rng: np.random.Generator) -> float:
    if category in {"square", "cross"}:
        return float(rng.uniform(-8, 8))
    if category == "diamond":
        return float(45 + rng.uniform(-8, 8))
    if category == "triangle":
        return float(rng.uniform(0, 120))
    if category == "star":
        return float(rng.uniform(0, 72))
    return 0.0


def _set_visible(shapes: list[Shape]) -> bool:
    """Compute every visible mask from the z-order; False if a shape would be mostly hidden."""
    covered = np.zeros_like(shapes[0].full)
    for s in reversed(shapes):
        s.visible = s.full & ~covered
        s.visible_area = int(s.visible.sum())
        covered |= s.full
        if s.visible_area < MIN_VISIBLE * s.full_area:
            return False
    return True


def _categories(n: int, split: str, rng: np.random.Generator) -> list[str]:
    """Draw ``n`` categories; testA images get >= 2 circles, testB >= 2 of one other category."""
    names = [c["name"] for c in CATEGORIES]
    cats = [names[_weighted(rng, CATEGORY_WEIGHTS)] for _ in range(n)]
    if split == "testA":
        for i in range(n):
            if cats.count(TEST_A_CATEGORY) >= 2:
                break
            if cats[i] != TEST_A_CATEGORY:
                cats[i] = TEST_A_CATEGORY
    elif split == "testB" and not _has_other_pair(cats):
        other = [i for i, c in enumerate(cats) if c != TEST_A_CATEGORY]
        pick = _one(rng, names[1:]) if not other else cats[other[0]]
        cats[0] = cats[1] = pick
    return cats


def _has_other_pair(cats: list[str]) -> bool:
    return any(cats.count(c) >= 2 for c in set(cats) if c != TEST_A_CATEGORY)


def _scene_fits_split(scene: Scene, split: str) -> bool:
    cats = [s.category for s in scene.shapes]
    if split == "testA":
        return cats.count(TEST_A_CATEGORY) >= 2
    if split == "testB":
        return _has_other_pair(cats)
    return True


def _sample_scene(split: str, rng: np.random.Generator) -> Scene | None:
    """Place 3-6 shapes; some overlap an earlier one. None when fewer than 3 fit."""
    width, height = _one(rng, IMAGE_SIZES)
    scale = min(width, height)
    n = int(rng.integers(3, 7))
    shapes: list[Shape] = []
    for category in _categories(n, split, rng):
        color = _one(rng, list(COLORS))
        size = list(SIZES)[_weighted(rng, SIZE_WEIGHTS)]
        r = round(float(scale * rng.uniform(*SIZES[size])), 2)
        angle = round(_angle(category, rng), 2)
        e = r * EXTENT[category]
        overlap_with = int(rng.integers(len(shapes))) if shapes and rng.random() < OVERLAP_PROB else None
        for _ in range(30):
            if overlap_with is None:
                cx, cy = rng.uniform(e + 2, width - e - 2), rng.uniform(e + 2, height - e - 2)
            else:
                other = shapes[overlap_with]
                dist = rng.uniform(0.55, 0.95) * (e + other.extent)
                theta = rng.uniform(0, 2 * math.pi)
                cx, cy = other.cx + dist * math.cos(theta), other.cy + dist * math.sin(theta)
                if not (e + 2 <= cx <= width - e - 2 and e + 2 <= cy <= height - e - 2):
                    continue
            cx, cy = round(float(cx), 2), round(float(cy), 2)
            if any(math.hypot(cx - s.cx, cy - s.cy) < e + s.extent + 2
                   for k, s in enumerate(shapes) if k != overlap_with):
                continue
            shape = Shape(category, color, size, r, cx, cy, angle, len(shapes),
                          _rasterize(category, cx, cy, r, angle, width, height))
            if overlap_with is not None and (
                (shape.full & shapes[overlap_with].full).sum() < MIN_OVERLAP_PX or not _set_visible([*shapes, shape])
            ):
                continue
            shapes.append(shape)
            break
    if len(shapes) < 3:
        return None
    _set_visible(shapes)
    return Scene(width, height, shapes)


# ----------------------------------------------------------------------------- expressions
# A candidate is (kind, target index, spec); the spec says what the sentence asserts and is
# turned into words by _say(). Predicates answer True / False / None (= unclear, in the margin):
# a candidate exists only if exactly one shape is True and none is unclear.


def _filters(scene: Scene) -> dict[Filter, list[int]]:
    """Every attribute filter some shape satisfies -> the indices of the shapes it selects."""
    attrs = [(s.size, s.color, s.category) for s in scene.shapes]
    out: dict[Filter, list[int]] = {}
    for a in attrs:
        for mask in range(8):
            f = (a[0] if mask & 1 else None, a[1] if mask & 2 else None, a[2] if mask & 4 else None)
            if f not in out:
                out[f] = [i for i, b in enumerate(attrs)
                          if (f[0] is None or f[0] == b[0]) and (f[1] is None or f[1] == b[1])
                          and (f[2] is None or f[2] == b[2])]
    return out


def _n_attrs(f: Filter) -> int:
    return sum(v is not None for v in f)


Predicate = tuple[int, int]  # bitmasks over the shapes of a scene: (true, unclear)


def _predicate(flags: Sequence[bool | None]) -> Predicate:
    """Bitmasks of the shapes for which a predicate is True and for which it is unclear (None)."""
    true = unclear = 0
    for i, flag in enumerate(flags):
        if flag is None:
            unclear |= 1 << i
        elif flag:
            true |= 1 << i
    return true, unclear


def _only(members: int, predicate: Predicate) -> int | None:
    """The one member for which the predicate is True, if no member is unclear; else None."""
    hits = members & predicate[0]
    if members & predicate[1] or not hits or hits & (hits - 1):
        return None
    return hits.bit_length() - 1


def _trinary(value: float, true_below: float, false_above: float) -> bool | None:
    """True if ``value <= true_below``, False if ``value >= false_above``, else unclear (None)."""
    return True if value <= true_below else False if value >= false_above else None


def _hidden(area: float, full_area: float) -> bool | None:
    """Is a shape with ``area`` of its ``full_area`` visible "partially hidden" (None = unclear)?"""
    return _trinary(area / full_area, 1 - HIDDEN_TRUE, 1 - HIDDEN_FALSE)


def _region(s: Shape, region: str, w: int, h: int) -> bool | None:
    """Is the centre in the named region of the image (None = near its border)?"""
    x, y = s.cx / w, s.cy / h
    if region == "center":
        return _trinary(max(abs(x - 0.5), abs(y - 0.5)), 0.1, 0.2)
    vert, horiz = region.split()
    u = x if horiz == "left" else 1 - x
    v = y if vert == "top" else 1 - y
    return _trinary(max(u, v), 0.4, 0.5)


REGIONS = ("top left", "top right", "bottom left", "bottom right", "center")
DIRECTIONS = ("left", "right", "top", "bottom")
RELATIONS = ("left", "right", "above", "below")


def _candidates(scene: Scene) -> dict[int, list[tuple[str, tuple]]]:
    """Every unambiguous expression of the scene, grouped by the shape it refers to."""
    shapes, n = scene.shapes, len(scene.shapes)
    gap = GAP * scene.scale
    filters = _filters(scene)
    bits = {f: sum(1 << i for i in members) for f, members in filters.items()}
    out: dict[int, list[tuple[str, tuple]]] = {i: [] for i in range(n)}

    def add(kind: str, members: int, predicate: Predicate, spec: tuple) -> None:
        target = _only(members, predicate)
        if target is not None:
            out[target].append((kind, spec))

    # Per-shape facts, computed once: the sort key 'from the <direction>' (first = that side),
    # region membership, how much of the shape is hidden.
    coord = {"left": [s.cx for s in shapes], "right": [-s.cx for s in shapes],
             "top": [s.cy for s in shapes], "bottom": [-s.cy for s in shapes]}
    region = {r: _predicate([_region(s, r, scene.width, scene.height) for s in shapes]) for r in REGIONS}
    occluded = any(s.visible_area < s.full_area for s in shapes)
    hidden = _predicate([_hidden(s.visible_area, s.full_area) for s in shapes])

    for f, members in filters.items():
        if len(members) == 1:
            if f != (None, None, None):
                out[members[0]].append(("attribute", (f,)))
            continue
        if f[0] is None:  # comparatives never also name a size class
            by_size = sorted(members, key=lambda i: (shapes[i].radius, shapes[i].full_area))
            for word, first, second in (("largest", by_size[-1], by_size[-2]), ("smallest", by_size[0], by_size[1])):
                big, small = (shapes[first], shapes[second]) if word == "largest" else (shapes[second], shapes[first])
                if big.radius >= SIZE_MARGIN * small.radius and big.full_area >= SIZE_MARGIN * small.full_area:
                    out[first].append(("comparative", (f, word, len(members))))
        for direction in DIRECTIONS:
            key = coord[direction]
            order = sorted(members, key=key.__getitem__)
            gaps = [key[b] - key[a] for a, b in zip(order, order[1:])]
            if gaps[0] >= gap:
                out[order[0]].append(("extreme", (f, direction, len(members))))
            for k in range(2, min(len(members), max(ORDINALS)) + 1):
                if gaps[k - 2] >= gap and (k - 1 >= len(gaps) or gaps[k - 1] >= gap):
                    out[order[k - 1]].append(("ordinal", (f, direction, k)))
        for r in REGIONS:
            add("region", bits[f], region[r], (f, r))
        if occluded:
            add("hidden", bits[f], hidden, (f,))

    # Relations: the anchor by one of its two shortest unique descriptions, the target among
    # the other shapes of a set named by at most a colour or a category (or all shapes).
    anchor_names: dict[int, list[Filter]] = {}
    for f, members in filters.items():
        if len(members) == 1 and 0 < _n_attrs(f) <= 2:
            anchor_names.setdefault(members[0], []).append(f)
    target_sets = [f for f in filters if _n_attrs(f) <= 1 and f[0] is None]
    for a, names in sorted(anchor_names.items()):
        names = tuple(sorted(names, key=lambda f: (_n_attrs(f), f[0] is not None, f[2] is None))[:2])
        anchor = shapes[a]
        dx = [s.cx - anchor.cx for s in shapes]
        dy = [s.cy - anchor.cy for s in shapes]
        dist = [math.hypot(x, y) for x, y in zip(dx, dy)]
        spatial = {"left": _predicate([_trinary(d, -gap, 0.0) for d in dx]),
                   "right": _predicate([_trinary(-d, -gap, 0.0) for d in dx]),
                   "above": _predicate([_trinary(d, -gap, 0.0) for d in dy]),
                   "below": _predicate([_trinary(-d, -gap, 0.0) for d in dy])}
        depth = {}
        if occluded:
            px = [int((s.full & anchor.full).sum()) if s is not anchor and d < s.extent + anchor.extent else 0
                  for s, d in zip(shapes, dist)]
            for rel, in_order in (("behind", lambda i: i < a), ("front", lambda i: i > a)):  # index = z-order
                depth[rel] = _predicate([False if p == 0 or not in_order(i) else True if p >= MIN_OVERLAP_PX else None
                                         for i, p in enumerate(px)])
        for f in target_sets:
            members = bits[f] & ~(1 << a)
            if members & (members - 1):  # at least two shapes besides the anchor
                for rel in RELATIONS:
                    add("relation", members, spatial[rel], (f, rel, names))
                near = sorted((dist[i], i) for i in filters[f] if i != a)
                if near[0][0] * NEAR_MARGIN <= near[1][0]:
                    out[near[0][1]].append(("relation", (f, "near", names)))
            if members:
                for rel, predicate in depth.items():
                    add("occlusion", members, predicate, (f, rel, names))
    return out


def _np(f: Filter, rng: np.random.Generator, plural: bool = False) -> str:
    """Noun phrase for a filter: 'small red circle', 'blue shapes', 'shape'."""
    size, color, category = f
    noun = category or "shape"
    words = [_one(rng, SIZE_WORDS[size])] if size else []
    words += [color] if color else []
    words.append(PLURALS[noun] if plural else noun)
    return " ".join(words)


_EXTREME = {
    "left": (("the left {np}", "the {np} on the left", "the leftmost {np}"),
             ("the leftmost {np}", "the {np} on the far left", "the {np} furthest to the left")),
    "right": (("the right {np}", "the {np} on the right", "the rightmost {np}"),
              ("the rightmost {np}", "the {np} on the far right", "the {np} furthest to the right")),
    "top": (("the top {np}", "the upper {np}", "the {np} at the top"),
            ("the topmost {np}", "the highest {np}", "the {np} at the very top")),
    "bottom": (("the bottom {np}", "the lower {np}", "the {np} at the bottom"),
               ("the lowest {np}", "the bottommost {np}", "the {np} at the very bottom")),
}
_REGION = {
    "center": ("the {np} in the middle", "the {np} in the center"),
    **{r: (f"the {{np}} in the {r} corner", f"the {{np}} at the {r}", f"the {r} {{np}}")
       for r in ("top left", "top right", "bottom left", "bottom right")},
}
_RELATION = {
    "left": ("the {np} left of the {anchor}", "the {np} to the left of the {anchor}"),
    "right": ("the {np} right of the {anchor}", "the {np} to the right of the {anchor}"),
    "above": ("the {np} above the {anchor}",),
    "below": ("the {np} below the {anchor}", "the {np} under the {anchor}"),
    "near": ("the {np} next to the {anchor}", "the {np} closest to the {anchor}", "the {np} nearest the {anchor}"),
    "behind": ("the {np} behind the {anchor}", "the {np} partly covered by the {anchor}"),
    "front": ("the {np} in front of the {anchor}", "the {np} covering the {anchor}"),
}


def _say(kind: str, spec: tuple, rng: np.random.Generator) -> str:
    """Words for a candidate (lower case, starting with 'the')."""
    f = spec[0]
    np_ = _np(f, rng)
    if kind == "attribute":
        return f"the {np_}"
    if kind == "comparative":
        word, count = spec[1], spec[2]
        if count == 2:
            comp = "bigger" if word == "largest" else "smaller"
            options = (f"the {comp} of the two {_np(f, rng, plural=True)}", f"the {comp} {np_}")
        else:
            options = (f"the biggest {np_}", f"the largest {np_}") if word == "largest" else (f"the smallest {np_}",)
        return _one(rng, options)
    if kind == "extreme":
        direction, count = spec[1], spec[2]
        return _one(rng, _EXTREME[direction][count > 2]).format(np=np_)
    if kind == "ordinal":
        direction, k = spec[1], spec[2]
        return f"the {ORDINALS[k]} {np_} from the {direction}"
    if kind == "region":
        return _one(rng, _REGION[spec[1]]).format(np=np_)
    if kind == "hidden":
        return _one(rng, ("the partially hidden {np}", "the {np} that is partly covered")).format(np=np_)
    if kind in {"relation", "occlusion"}:
        return _one(rng, _RELATION[spec[1]]).format(np=np_, anchor=_np(_one(rng, spec[2]), rng))
    raise ValueError(f"unknown expression kind '{kind}'")


def _choose_sentences(cands: list[tuple[str, tuple]], count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Up to ``count`` distinct (kind, sentence) pairs, spreading over kinds before repeating one."""
    by_kind: dict[str, list[tuple]] = {}
    for kind, spec in cands:
        by_kind.setdefault(kind, []).append(spec)
    chosen: list[tuple[str, str]] = []
    fresh = set(by_kind)
    for _ in range(4 * count):
        if len(chosen) == count or not by_kind:
            break
        kinds = sorted(fresh or by_kind, key=list(KIND_WEIGHTS).index)
        kind = kinds[_weighted(rng, [KIND_WEIGHTS[k] for k in kinds])]
        specs = by_kind[kind]
        spec = specs.pop(int(rng.integers(len(specs))))
        if not specs:
            del by_kind[kind]
        fresh.discard(kind)
        text = _say(kind, spec, rng)
        if all(text != t for _, t in chosen):
            chosen.append((kind, text))
    return chosen


def _sentence(sent_id: int, kind: str, text: str, rng: np.random.Generator) -> dict[str, Any]:
    """Refer sentence record; ``raw`` is varied a little like typed text, ``sent`` normalised."""
    raw = text[4:] if rng.random() < 0.25 else text
    if rng.random() < 0.3:
        raw = raw[0].upper() + raw[1:]
    sent = raw.lower()
    return {"sent_id": sent_id, "raw": raw, "sent": sent, "tokens": sent.split(), "kind": kind}


def _eligible(shape: Shape, split: str) -> bool:
    """May a ref of ``split`` target this shape? testA refs are about circles, testB refs never."""
    if split == "testA":
        return shape.category == TEST_A_CATEGORY
    if split == "testB":
        return shape.category != TEST_A_CATEGORY
    return True


@dataclass
class ImageRefs:
    """One generated image: its scene and, per referred shape, the chosen (kind, sentence) pairs."""

    scene: Scene
    refs: list[tuple[int, list[tuple[str, str]]]]  # (shape index, [(kind, text)])
    rng: np.random.Generator  # continues the geometry stream, for the sentences' raw forms


def _generate_image(seed: int, split: str, index: int) -> ImageRefs:
    """The scene and referring expressions of image ``index`` of ``split`` (pixels not drawn)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 0])
    while True:
        scene = _sample_scene(split, rng)
        if scene is None or not _scene_fits_split(scene, split):
            continue
        cands = _candidates(scene)
        pool = [i for i, s in enumerate(scene.shapes) if cands[i] and _eligible(s, split)]
        if pool:
            break
    n_refs = min(len(pool), list(REFS_PER_IMAGE)[_weighted(rng, list(REFS_PER_IMAGE.values()))])
    refs = []
    for target in sorted(int(i) for i in rng.permutation(pool)[:n_refs]):
        options = cands[target]
        plus = [c for c in options if c[0] in PLUS_KINDS]
        if plus and rng.random() < PLUS_REF_PROB:
            options = plus
        n_sents = list(SENTS_PER_REF)[_weighted(rng, list(SENTS_PER_REF.values()))]
        refs.append((target, _choose_sentences(list(options), n_sents, rng)))
    return ImageRefs(scene, refs, rng)


# ----------------------------------------------------------------------------- pixels


def _render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """RGB ``HWC uint8``: a tinted grey background with a soft gradient, flat shapes, light grain.

    The grain is 2x2 pixels: fine enough that nothing is flat, coarse enough that the PNGs
    stay small and fast to write.
    """
    h, w = scene.height, scene.width
    base = rng.uniform(95, 200) + rng.uniform(-12, 12, size=3)
    direction, strength = rng.uniform(0, 2 * math.pi), rng.uniform(10, 30)
    ramp = (math.cos(direction) * strength * (np.arange(w, dtype=np.float32) / w - 0.5))[None, :] \
        + (math.sin(direction) * strength * (np.arange(h, dtype=np.float32) / h - 0.5))[:, None]
    grain = rng.integers(-3, 4, size=((h + 1) // 2, (w + 1) // 2), dtype=np.int16)
    grain = np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)[:h, :w]
    planes = np.rint(ramp).astype(np.int16)[None] + np.rint(base).astype(np.int16)[:, None, None]  # CHW: fast
    for s in scene.shapes:
        color = np.rint(np.array(COLORS[s.color]) + rng.uniform(-12, 12, size=3)).astype(np.int16)
        for c in range(3):
            planes[c][s.visible] = color[c]
    planes += grain[None]
    return np.ascontiguousarray(np.clip(planes, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def _bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


# ----------------------------------------------------------------------------- corpus



@dataclass
class _Drawn:
    """One image, drawn and annotated in a worker; corpus-wide ids are assigned in order later."""

    file_name: str  # temporary name inside the partial image folder
    height: int
    width: int
    shapes: list[dict[str, Any]]  # annotations without id / image_id
    refs: list[tuple[int, list[dict[str, Any]], bool]]  # (target, sentences numbered from 0, location-free)


def _draw(task: tuple[int, str, int, str]) -> _Drawn:
    """Generate, render and save image ``index`` of ``split``: a pure function of the task,
    so the corpus is byte-identical however many processes draw it."""
    seed, split, index, folder = task
    gen = _generate_image(seed, split, index)
    scene = gen.scene
    pixels = _render(scene, np.random.default_rng([seed, SPLITS.index(split), index, 1]))
    file_name = f".{split}_{index:07d}.png"
    Image.fromarray(pixels).save(Path(folder) / file_name, format="PNG", compress_level=1)
    shapes = [{
        "category_id": CATEGORY_IDS[s.category], "segmentation": encode_rle(s.visible),
        "area": int(s.visible.sum()), "bbox": _bbox(s.visible), "iscrowd": 0,
        "attributes": {"color": s.color, "size": s.size, "center": [s.cx, s.cy], "radius": s.radius,
                       "full_area": s.full_area, "z": s.z},
    } for s in scene.shapes]
    refs = [(target, [_sentence(k, kind, text, gen.rng) for k, (kind, text) in enumerate(sentences)],
             all(k in PLUS_KINDS for k, _ in sentences))
            for target, sentences in gen.refs]
    return _Drawn(file_name, scene.height, scene.width, shapes, refs)


class _Serial:
    """``map`` in this process, for small builds where starting workers costs more than it saves."""

    def __enter__(self) -> "_Serial":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Any, items: Sequence[Any], chunksize: int = 1) -> Any:
        return map(fn, items)


def _pool(n_tasks: int) -> Any:
    """Worker processes for a large build (one per core); the output does not depend on it."""
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or n_tasks < 256:
        return _Serial()
    return ProcessPoolExecutor(max_workers=workers)


def _check_counts(n_images: Mapping[str, int]) -> dict[str, int]:
    unknown = set(n_images) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown shapes split(s) {sorted(unknown)}; the splits are {', '.join(SPLITS)}")
    counts = {split: int(n_images.get(split, 0)) for split in SPLITS}
    if any(c < 0 for c in counts.values()) or not any(counts.values()):
        raise ValueError(f"image counts must be >= 0 and not all zero, got {counts}")
    return counts


def corpus_statistics(n_images: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, dict[str, int]]:
    """``{split: {refs, sentences, images}}`` the generator produces, without drawing pixels.

    Exactly the numbers :func:`build_shapes` writes (it runs the same code); the split card's
    counts are checked against this at the default scale.
    """
    counts = _check_counts(SCALES["default"] if n_images is None else n_images)
    stats = {}
    for split, n in counts.items():
        gens = [_generate_image(seed, split, i) for i in range(n)]
        stats[split] = {"refs": sum(len(g.refs) for g in gens),
                        "sentences": sum(len(s) for g in gens for _, s in g.refs),
                        "images": sum(1 for g in gens if g.refs)}
    return stats


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_path(root: Path) -> Path:
    return Path(root) / DATASET / "MANIFEST.json"


def _manifest(root: Path) -> dict[str, Any] | None:
    """The MANIFEST.json under ``root``, or None when it is missing or unreadable."""
    try:
        return json.loads(_manifest_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _settings(n_images: Mapping[str, int] | None, scale: str, seed: int) -> dict[str, Any]:
    """What MANIFEST.json records of the corpus ``build_shapes(n_images, scale=, seed=)`` builds."""
    if n_images is None:
        if scale not in SCALES:
            raise ValueError(f"unknown shapes scale '{scale}'; choose one of {', '.join(SCALES)}")
        n_images = SCALES[scale]
    else:
        scale = "custom"
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "scale": scale, "n_images": _check_counts(n_images)}


def _is_complete(root: Path, settings: dict[str, Any]) -> bool:
    """True when MANIFEST.json says this corpus (same settings) is built and its files still match."""
    manifest = _manifest(root)
    if manifest is None or {k: manifest.get(k) for k in settings} != settings:
        return False
    folder = _manifest_path(root).parent
    for name, digest in manifest.get("files", {}).items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            return False
    return sum(1 for _ in (Path(root) / IMAGE_DIR).glob("shapes_*.png")) == manifest.get("n_image_files")


def n_images_for(scale: str = "default", train_images: int | None = None) -> dict[str, int] | None:
    """Images per split of ``prep shapes --scale S --train-images N`` (None: the scale's own)."""
    if scale not in SCALES:
        raise ValueError(f"unknown shapes scale '{scale}'; choose one of {', '.join(SCALES)}")
    return None if train_images is None else {**SCALES[scale], "train": train_images}


def is_built(root: Path, *, scale: str = "default", seed: int = 0, train_images: int | None = None) -> bool:
    """True when ``root`` holds, complete, the corpus ``prep shapes`` builds with these options."""
    return _is_complete(root, _settings(n_images_for(scale, train_images), scale, seed))


def describe(root: Path) -> str:
    """What MANIFEST.json says the corpus under ``root`` is, for error messages."""
    manifest = _manifest(root)
    if manifest is None:
        return f"no complete shapes corpus ({_manifest_path(root)} is missing or unreadable)"
    counts = " / ".join(str(manifest.get("n_images", {}).get(split, "?")) for split in SPLITS)
    return (f"the shapes corpus of seed {manifest.get('seed')}, scale {manifest.get('scale')}, with "
            f"{counts} images in {' / '.join(SPLITS)} ({_manifest_path(root)})")


def build_shapes(
    root: Path,
    n_images: Mapping[str, int] | None = None,
    *,
    scale: str = "default",
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, int]] | None:
    """Generate the corpus under ``root``; returns ``{split: {refs, sentences, images}}``.

    ``n_images`` (images per split) overrides ``scale`` (a key of :data:`SCALES`), for tests.
    Returns None without touching anything when the same corpus is already complete, unless
    ``force``. Images go to a temporary folder that is renamed into place, the annotations are
    written atomically, and MANIFEST.json last, so an interrupted run never looks complete.
    """
    settings = _settings(n_images, scale, seed)
    counts = settings["n_images"]
    root = Path(root)
    if not force and _is_complete(root, settings):
        return None

    _manifest_path(root).unlink(missing_ok=True)
    image_dir = root / IMAGE_DIR
    partial = image_dir.with_name(f".{image_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    images, annotations, refs = [], [], []
    stats = {split: {"refs": 0, "sentences": 0, "images": 0} for split in SPLITS}
    tasks = [(seed, split, index, str(partial)) for split in SPLITS for index in range(counts[split])]
    image_id = ann_id = ref_id = sent_id = 0
    with _pool(len(tasks)) as pool, tqdm(total=len(tasks), desc="shapes", unit="img", disable=not progress) as bar:
        for (_, split, _, _), drawn in zip(tasks, pool.map(_draw, tasks, chunksize=32)):
            image_id += 1
            file_name = f"shapes_{image_id:06d}.png"
            (partial / drawn.file_name).rename(partial / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": drawn.height, "width": drawn.width})
            ann_ids = []
            for shape in drawn.shapes:
                ann_id += 1
                ann_ids.append(ann_id)
                annotations.append({"id": ann_id, "image_id": image_id, **shape})
            for target, records, plus in drawn.refs:
                for record in records:
                    record["sent_id"] += sent_id
                sent_id += len(records)
                refs.append({
                    "ref_id": ref_id, "ann_id": ann_ids[target], "image_id": image_id,
                    "category_id": drawn.shapes[target]["category_id"], "split": split,
                    "sent_ids": [r["sent_id"] for r in records],
                    # RefCOCO convention: <image stem>_<ann_id>, NOT the image file
                    "file_name": f"shapes_{image_id:06d}_{ann_ids[target]}.png",
                    "sentences": records,
                    "style": "plus" if plus else "loc",
                })
                ref_id += 1
            stats[split]["refs"] += len(drawn.refs)
            stats[split]["sentences"] += sum(len(r) for _, r, _ in drawn.refs)
            stats[split]["images"] += bool(drawn.refs)
            bar.update()

    if image_dir.exists():
        old = image_dir.with_name(f".{image_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        image_dir.rename(old)
        partial.rename(image_dir)
        shutil.rmtree(old)
    else:
        partial.rename(image_dir)
    instances = {
        "info": {"description": "shapes: synthetic referring segmentation (evfbench)", "version": GENERATOR_VERSION,
                 "seed": seed},
        "images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES],
    }
    folder = write_refer(root, DATASET, SPLIT_BY, refs, instances)
    files = {name: _sha256(folder / name) for name in (f"refs({SPLIT_BY}).p", "instances.json")}
    atomic_write_json(_manifest_path(root), {**settings, "files": files, "n_image_files": len(images),
                                             "statistics": stats})
    return stats


def _sentences(root: Path | None) -> list[dict[str, Any]]:
    """Every sentence record of a built corpus."""
    from evfbench.data.safe_pickle import load_refs

    path = Path(root or default_data_root()) / DATASET / f"refs({SPLIT_BY}).p"
    if not path.is_file():
        raise EvfbenchError(f"{path} does not exist\n  fix: python -m evfbench.prep shapes --data-root {path.parent.parent}")
    return [s for ref in load_refs(path) for s in ref["sentences"]]


def sentence_kinds(root: Path | None = None) -> dict[int, str]:
    """``sent_id`` -> the grammar rule (``kind``) of every sentence of a built corpus: the
    labels of a per-kind breakdown (:func:`evfbench.report.breakdown`)."""
    return {int(s["sent_id"]): str(s["kind"]) for s in _sentences(root)}


def attribute_words(root: Path | None = None) -> dict[int, str]:
    """``sent_id`` -> the attributes an "attribute" sentence names (``colour``, ``size+category``,
    ...; every other kind -> ``other kinds``): tells which words a model reads."""
    vocab = (("size", {w for words in SIZE_WORDS.values() for w in words}), ("colour", set(COLORS)), ("category", set(CATEGORY_IDS)))
    out = {}
    for s in _sentences(root):
        words = set(s["tokens"])
        named = "+".join(name for name, known in vocab if words & known) or "shape"
        out[int(s["sent_id"])] = named if s["kind"] == "attribute" else "other kinds"
    return out


def hidden_class(area: float, full_area: float) -> str:
    """A shape's hidden share in the three classes its "hidden" sentences tell apart: ``partly``
    ("the partially hidden circle"), ``whole`` (never called hidden) and ``slightly`` (neither).
    Training reads it as the derived attribute ``hidden`` (:mod:`evfbench.train_data`)."""
    hidden = _hidden(area, full_area)
    return "slightly" if hidden is None else "partly" if hidden else "whole"


def format_statistics(stats: Mapping[str, Mapping[str, int]]) -> str:
    """A markdown table of refs / sentences / images per split."""
    lines = ["| split | refs | sentences | images |", "|---|---:|---:|---:|"]
    for split, c in stats.items():
        lines.append(f"| {split} | {c['refs']} | {c['sentences']} | {c['images']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; ``argv[0]`` is the dataset name, as the prep dispatcher passes it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == DATASET:
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="python -m evfbench.prep shapes",
                                description="Generate the synthetic referring-segmentation benchmark 'shapes'.")
    p.add_argument("--data-root", type=Path, default=None, help="default: $EVFBENCH_DATA or ~/.cache/evfbench/data")
    sizes = ", ".join(f"{name}: {sum(counts.values())} images" for name, counts in SCALES.items())
    p.add_argument("--scale", choices=sorted(SCALES), default="default", help=f"default: %(default)s ({sizes})")
    p.add_argument("--train-images", type=int, default=None,
                   help="train images instead of the scale's; val and test keep the scale's (the very same images "
                        "and sentences), so a model trained on more data is scored on the same benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the same corpus is already complete")
    args = p.parse_args(argv)
    root = args.data_root or default_data_root()
    n_images = n_images_for(args.scale, args.train_images)
    train = "" if n_images is None else f", {args.train_images} train images"
    start = time.perf_counter()
    try:
        stats = build_shapes(root, n_images, scale=args.scale, seed=args.seed, force=args.force)
    except OSError as err:
        print(f"error: cannot write the shapes corpus under {root}: {err}\n  fix: pass a writable --data-root",
              file=sys.stderr)
        return 1
    if stats is None:
        print(f"shapes corpus already complete under {root} (seed {args.seed}, scale {args.scale}{train}); "
              f"--force rebuilds it")
        return 0
    print(f"wrote the shapes corpus under {root} in {time.perf_counter() - start:.1f} s "
          f"(seed {args.seed}, scale {args.scale}{train})")
    print(format_statistics(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
