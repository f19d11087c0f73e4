"""Training data for :mod:`evfbench.train`: the multitask sampler, the flip augmentation, the tokenizer helper.

Every global batch is a pure function of ``(seed, step)``: an image is drawn from a source
picked with the ``--data-weights`` ratios, then up to ``texts_per_image`` of its sentences
(without replacement), then a horizontal flip with probability ``flip_prob``. Resuming at step
``k`` therefore replays exactly the batches an uninterrupted run would have seen, and every
process of a ``torchrun`` job sees the same global batch and takes its own slice of it.

Flipping mirrors the image and the masks and swaps the horizontal words of the expression
(``left`` <-> ``right``, ``leftmost`` <-> ``rightmost``, ``top left`` -> ``top right``, ...), so
the expression still names the same object.

A ``--data`` entry is ``NAME`` (every sentence of the train split) or ``NAME:VIEW``:

- ``NAME:semantic``: one ``[semantic] {category}`` prompt per category of each image, whose
  target is the union of that category's instances: the semantic-level data of the paper's
  multitask mix, made from the dataset's own instance annotations (train images only);
- ``NAME:KIND[+KIND...]``: only the sentences of these grammar rules, for corpora that record
  a ``kind`` per sentence (``shapes``): ``shapes:attribute+comparative+hidden`` is its
  location-free part, the counterpart of RefCOCO+ for a curriculum;
- ``shapes:named=LABEL[/LABEL...]``: only the "attribute" sentences that name exactly these
  attributes, as :func:`evfbench.prep.shapes.attribute_words` labels them (``colour``,
  ``size+colour``, ``category``, ...): ``shapes:named=colour/size+colour`` is the colour words
  without the category words, the first step of a curriculum that teaches one at a time.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from evfbench.cards import SplitCard
from evfbench.data.refer import category_names, load_split
from evfbench.data.types import Annotation, ImageGroup, Sample
from evfbench.errors import EvfbenchError
from evfbench.registry import get_split

__all__ = ["flip_text", "Item", "Example", "TrainingData", "resolve_train_split", "semantic_samples", "named_sentences",
           "source_groups", "train_tokenizer", "SEMANTIC", "DERIVED_ATTRIBUTES", "attribute_value"]

SEMANTIC = "[semantic]"  # the multitask checkpoints' added token; semantic prompts are "[semantic] {category}"


def _hidden(ann: Annotation) -> str:
    from evfbench.prep.shapes import hidden_class

    return hidden_class(ann.area, ann.attributes["full_area"])


# Attributes computed from a record: name -> (the recorded attribute they need, how). ``hidden``
# is the share of a shape that others cover (shapes), which its "hidden" and "occlusion" sentences
# name and nothing else in the record says per pixel.
DERIVED_ATTRIBUTES: dict[str, tuple[str, Callable[[Annotation], Any]]] = {"hidden": ("full_area", _hidden)}


def attribute_value(ann: Annotation, name: str) -> Any:
    """The ``attributes`` field ``name`` of ``ann``, or the derived attribute of that name
    (:data:`DERIVED_ATTRIBUTES`); ``KeyError`` if it has neither."""
    if name in ann.attributes:
        return ann.attributes[name]
    needs, derive = DERIVED_ATTRIBUTES.get(name, ("", None))
    if derive is None or needs not in ann.attributes:
        raise KeyError(name)
    return derive(ann)


# "left"/"right" as a word or the start of leftmost / left-most / lefthand / left-hand ...
_HORIZONTAL = re.compile(r"\b(left|right)(?=(most|-most|hand|-hand|ward|wards)?\b)", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left"}


def flip_text(text: str) -> str:
    """The expression of the mirrored image: left <-> right in every form, case kept."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(1)
        other = _SWAP[word.lower()]
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _HORIZONTAL.sub(swap, text)


@dataclass(frozen=True)
class Item:
    """One image of a global batch: ``texts`` index the group's samples."""

    source: int
    group: int
    texts: tuple[int, ...]
    flip: bool
    prompt_seed: int = 0  # draws the stage-1 point prompts (:meth:`Example.points`)


@dataclass
class Example:
    """An item made concrete: pixels, expressions and masks (mirrored when ``item.flip``)."""

    item: Item
    image: np.ndarray  # RGB HWC uint8
    texts: list[str]
    masks: np.ndarray  # (T, H, W) bool, original size
    categories: np.ndarray | None = None  # (H, W) int64 class per pixel (0 = background), when asked for
    attributes: np.ndarray | None = None  # (A, H, W) int64 class per pixel of each head attribute, with categories

    def boxes(self) -> np.ndarray:
        """``(T, 4)`` XYXY pixel boxes of the masks (the stage-1 box prompts); empty mask -> whole image."""
        out = np.zeros((len(self.masks), 4), dtype=np.float32)
        h, w = self.masks.shape[1:]
        for i, mask in enumerate(self.masks):
            ys, xs = np.nonzero(mask)
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, w, h)
        return out

    def points(self, point_prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Stage-1 point prompts: ``(T, 2)`` XY pixel centres, one drawn uniformly from each mask
        (as SAM's first click), and ``(T,)`` whether the target takes it instead of its box
        (probability ``point_prob``). A pure function of ``item.prompt_seed``."""
        rng = np.random.default_rng(self.item.prompt_seed)
        out = np.zeros((len(self.masks), 2), dtype=np.float32)
        h, w = self.masks.shape[1:]
        for i, mask in enumerate(self.masks):
            ys, xs = np.nonzero(mask)
            if len(xs):
                k = int(rng.integers(len(xs)))
                out[i] = (xs[k] + 0.5, ys[k] + 0.5)
            else:
                out[i] = (w / 2, h / 2)
        return out, rng.random(len(self.masks)) < point_prob


def resolve_train_split(name: str, split: str = "train") -> SplitCard:
    """``refcoco`` -> the card of ``refcoco_train``; a full split name (``refcocog_umd_train``) is kept."""
    for candidate in (f"{name}_{split}", name):
        try:
            return get_split(candidate)
        except KeyError:
            continue
    get_split(f"{name}_{split}")  # raises with the did-you-mean message
    raise AssertionError("unreachable")


def semantic_samples(group: ImageGroup, names: dict[int, str]) -> list[Sample]:
    """``[semantic] {category}`` for each category of ``group``; the target is all its instances."""
    by_category: dict[int, list[int]] = {}
    for ann_id, ann in sorted(group.annotations.items()):
        by_category.setdefault(ann.category_id, []).append(ann_id)
    unnamed = sorted(set(by_category) - set(names))
    if unnamed:
        raise EvfbenchError(f"image {group.image_id} ({group.path}): annotations of category {unnamed}, which instances.json "
                            "does not list under 'categories'\n  fix: add the categories or rebuild the dataset")
    return [Sample(sent_id=-1, ref_id=-1, image_id=group.image_id, text=f"{SEMANTIC} {names[cat]}", ann_ids=tuple(ids),
                   category_id=cat, kind="semantic")
            for cat, ids in sorted(by_category.items())]


def named_sentences(spec: str, card: SplitCard, data_root: Path | None) -> set[int]:
    """The ``sent_id`` of every sentence that the ``named=`` view of ``spec`` keeps (see the module docstring)."""
    from evfbench.prep.shapes import DATASET, attribute_words

    if card.dataset != DATASET:
        raise EvfbenchError(f"--data {spec}: the named= view reads the attribute words of the {DATASET} corpus; "
                            f"{card.name} is {card.dataset}\n  fix: use a kind view (NAME:KIND) or no view")
    named = attribute_words(data_root)
    wanted = set(spec.partition(":named=")[2].split("/"))
    known = set(named.values()) - {"other kinds"}
    if wanted - known:
        raise EvfbenchError(f"--data {spec}: no \"attribute\" sentence names {', '.join(sorted(wanted - known))}\n"
                            f"  fix: use labels among {', '.join(sorted(known))}, separated by /")
    return {sent_id for sent_id, label in named.items() if label in wanted}


def source_groups(spec: str, data_root: Path | None) -> tuple[SplitCard, list[ImageGroup]]:
    """The train split of one ``--data`` entry (``NAME`` or ``NAME:VIEW``, see the module
    docstring) as image groups; groups left without a sample are dropped."""
    name, _, view = spec.partition(":")
    card = resolve_train_split(name)
    groups = load_split(card, data_root)
    if view == "semantic":
        names = category_names(card, data_root)
        groups = [replace(g, samples=semantic_samples(g, names)) for g in groups]
    elif view.startswith("named="):
        keep = named_sentences(spec, card, data_root)
        groups = [replace(g, samples=[s for s in g.samples if s.sent_id in keep]) for g in groups]
    elif view:
        wanted = set(view.split("+"))
        recorded = {s.kind for g in groups for s in g.samples} - {""}
        if not recorded:
            raise EvfbenchError(f"--data {spec}: the sentences of {card.name} record no kind, so they cannot be "
                                f"selected by kind\n  fix: use --data {name} (kinds exist in corpora such as shapes)")
        if wanted - recorded:
            raise EvfbenchError(f"--data {spec}: {card.name} has no sentence of kind {', '.join(sorted(wanted - recorded))} "
                                f"(its kinds: {', '.join(sorted(recorded))}; or use the view 'semantic')")
        groups = [replace(g, samples=[s for s in g.samples if s.kind in wanted]) for g in groups]
    groups = [g for g in groups if g.samples]
    if not groups:
        raise EvfbenchError(f"--data {spec}: split {card.name} has no image with a sentence")
    return card, groups


class TrainingData:
    """The sources of one training run, indexed once; :meth:`global_batch` draws from them.

    Args:
        names: datasets (``refcoco``, ``refcoco+``, ``shapes``) or split names, their train split,
            each optionally with a view (``shapes:semantic``; see the module docstring).
        weights: sampling ratio per source (``None``: equal).
        data_root: the refer-layout root.
        class_attributes: annotation attributes (``instances.json`` ``attributes``, e.g. ``color``)
            crossed with the category in the classes of :meth:`category_map`.
        head_attributes: annotation attributes with classes of their own (:meth:`attribute_maps`).
    """

    def __init__(self, names: Sequence[str], weights: Sequence[float] | None, data_root: Path | None,
                 class_attributes: Sequence[str] = (), head_attributes: Sequence[str] = ()) -> None:
        if not names:
            raise EvfbenchError("no training data: pass --data NAME[,NAME...] (e.g. refcoco,refcoco+,refcocog,refclef)")
        weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(names) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise EvfbenchError(f"--data-weights {list(weights)} must give one non-negative ratio per --data source {list(names)}")
        self.names = list(names)
        sources = [source_groups(n, data_root) for n in self.names]
        self.cards = [card for card, _ in sources]
        self.groups: list[list[ImageGroup]] = [groups for _, groups in sources]
        self.probs = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.category_ids = sorted({a.category_id for groups in self.groups for g in groups for a in g.annotations.values()})
        # the classes of a per-pixel category map: pixel_classes[k - 1] is class k, 0 the background
        self.class_attributes = tuple(class_attributes)
        self.pixel_classes = sorted({self._class_key(g, i) for groups in self.groups for g in groups for i in g.annotations})
        self._pixel_class = {key: k + 1 for k, key in enumerate(self.pixel_classes)}
        # the classes of each head attribute: head_values[a][k - 1] is class k of attribute a, 0 the background
        self.head_values = {a: sorted({self._attributes(g, i, (a,))[0] for groups in self.groups for g in groups
                                       for i in g.annotations}) for a in head_attributes}
        self._head_class = {a: {v: k + 1 for k, v in enumerate(values)} for a, values in self.head_values.items()}

    def _attributes(self, group: ImageGroup, ann_id: int, names: Sequence[str]) -> tuple[Any, ...]:
        """The values of attributes ``names`` of annotation ``ann_id`` (recorded, or one of
        :data:`DERIVED_ATTRIBUTES`); a clear error if one is missing."""
        ann = group.annotations[ann_id]
        values, missing = [], []
        for name in names:
            try:
                values.append(attribute_value(ann, name))
            except KeyError:
                missing.append(name)
        if missing:
            raise EvfbenchError(f"image {group.image_id} ({group.path}), annotation {ann_id}: its instances.json record has no "
                                f"attribute {missing} (it has {sorted(ann.attributes) or 'none'})\n  fix: name only attributes "
                                "every annotation records in --category-aux-attributes and --category-aux-heads (shapes "
                                "records color and size, and full_area, from which training derives hidden)")
        return tuple(values)

    def _class_key(self, group: ImageGroup, ann_id: int) -> tuple[Any, ...]:
        """``(category_id, *attribute values)``: the pixel class of annotation ``ann_id``."""
        return (group.annotations[ann_id].category_id, *self._attributes(group, ann_id, self.class_attributes))

    def sentences(self) -> list[str]:
        """Every training sentence (the tokenizer corpus)."""
        return [s.text for groups in self.groups for g in groups for s in g.samples]

    def global_batch(self, seed: int, step: int, size: int, texts_per_image: int, flip_prob: float) -> list[Item]:
        """The ``size`` items of optimizer step ``step``; a pure function of its arguments."""
        rng = np.random.default_rng([seed, step])
        # a stream of its own, so the images, sentences and flips of a step do not depend on it
        prompt_seeds = np.random.default_rng([seed, step, 1]).integers(2**31, size=size)
        items = []
        for prompt_seed in prompt_seeds:
            source = int(rng.choice(len(self.groups), p=self.probs))
            g = int(rng.integers(len(self.groups[source])))
            n = len(self.groups[source][g].samples)
            texts = tuple(int(i) for i in rng.permutation(n)[: min(n, texts_per_image)])
            flip = bool(rng.random() < flip_prob)
            items.append(Item(source, g, texts, flip, int(prompt_seed)))
        return items

    def group(self, item: Item) -> ImageGroup:
        return self.groups[item.source][item.group]

    def pixel_maps(self, group: ImageGroup, heads: bool = True) -> np.ndarray:
        """``(1 + A, H, W)`` class index of every pixel, each object's mask decoded once: row 0
        as :meth:`category_map`, then one row per ``head_attributes`` value (1 + its position
        in :attr:`head_values`; A = 0 without ``heads``). 0 is the background, and later
        annotations win where masks overlap."""
        names = tuple(self.head_values) if heads else ()
        out = np.zeros((1 + len(names), group.height, group.width), dtype=np.int64)
        for ann_id, ann in group.annotations.items():
            mask = ann.mask(group.height, group.width)
            out[0][mask] = self._pixel_class[self._class_key(group, ann_id)]
            for row, (name, value) in enumerate(zip(names, self._attributes(group, ann_id, names)), start=1):
                out[row][mask] = self._head_class[name][value]
        return out

    def category_map(self, group: ImageGroup) -> np.ndarray:
        """``(H, W)`` class index of every pixel: 1 + the position of its object's category (with
        the ``class_attributes``) in :attr:`pixel_classes`, 0 for the background."""
        return self.pixel_maps(group, heads=False)[0]

    def attribute_maps(self, group: ImageGroup) -> np.ndarray:
        """``(A, H, W)`` class index of every pixel for each of the ``head_attributes``."""
        return self.pixel_maps(group)[1:]

    def example(self, item: Item, image: np.ndarray | None = None, categories: bool = False) -> Example:
        """Load ``item`` (``image``: the group's pixels if already read; ``categories``: also
        its :meth:`category_map` and, with ``head_attributes``, its :meth:`attribute_maps`)."""
        group = self.group(item)
        image = group.load_image() if image is None else image
        samples = [group.samples[i] for i in item.texts]
        texts = [s.text for s in samples]
        masks = np.stack([group.target_mask(s) for s in samples])
        maps = self.pixel_maps(group) if categories else None
        if item.flip:
            image = np.ascontiguousarray(image[:, ::-1])
            masks = np.ascontiguousarray(masks[:, :, ::-1])
            maps = None if maps is None else np.ascontiguousarray(maps[:, :, ::-1])
            texts = [flip_text(t) for t in texts]
        cats = None if maps is None else maps[0]
        heads = maps[1:] if maps is not None and self.head_values else None
        return Example(item, image, texts, masks, cats, heads)


def train_tokenizer(sentences: Iterable[str], folder: Path, vocab_size: int) -> Path:
    """Train a SentencePiece BPE model on ``sentences`` into ``folder/sentencepiece.bpe.model``.

    For models trained from scratch on a small vocabulary (the tiny ``shapes`` models); the
    ids follow the BEiT-3 layout (see :mod:`evfbench.models.tokenizer`), so the BEiT-3
    ``vocab_size`` must be at least ``vocab_size + 2``. Sorted unique sentences, one thread:
    the same corpus gives the same model.

    BPE, not unigram: on a corpus of a few thousand short sentences the unigram trainer stops
    at about 100 pieces whatever ``vocab_size`` asks for and spells frequent words letter by
    letter ("blue" -> "_b l u e"); BPE merges them into whole words.
    """
    import sentencepiece

    from evfbench.io import atomic_write_bytes
    from evfbench.models.tokenizer import SPM_FILE

    corpus = sorted({s.strip().lower() for s in sentences if s.strip()})
    if not corpus:
        raise EvfbenchError("no sentences to train a tokenizer on")
    # like the multitask checkpoints' added token, "[semantic]" is one piece
    symbols = [SEMANTIC] if any(s.startswith(SEMANTIC) for s in corpus) else []
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
        hard_vocab_limit=False, num_threads=1, minloglevel=2, character_coverage=1.0, user_defined_symbols=symbols,
    )
    atomic_write_bytes(Path(folder) / SPM_FILE, buffer.getvalue())
    return Path(folder)
