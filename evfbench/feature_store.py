"""Frozen SAM image features on disk: computed once per (image, flip), shared by processes and stages.

The text stages keep SAM's image encoder frozen (the paper), so an image's features depend
only on the encoder's weights and the pixels. The in-memory cache of :mod:`evfbench.train`
(``cache: true``) computes them once per process and per stage: a recipe of five text stages
run as two processes encodes every image ten times, once more for each source that shares it,
and a corpus of tens of thousands of images would be encoded again in most steps. A store
encodes each image once (under ``torchrun`` each process takes every ``world_size``-th image),
writes the features to ``.npy`` files, and every process and every later stage whose encoder
has the same weights maps those files (``numpy`` memory maps: the page cache holds one copy
for all processes).

Layout: ``<root>/<key>/`` with ``index.json`` (the image paths, in row order, the flips, and the
shape and dtype of each feature tensor) and ``<name>.npy`` of shape ``(images, flips, *shape)``, one per
tensor of :class:`~evfbench.models.sam_backends.SamFeatures` (``image_embed``, SAM-2's
``high_res.<level>``), plus ``input_size.npy``. ``key`` hashes the frozen encoder's tensors,
the backend and its input size, each image's path, size and modification time, and the flips:
a store is never read for other weights or other images (a regenerated corpus gets a new one). The folder is filled under a temporary name and renamed into
place, so an interrupted build is started again, never half read. Features are computed one
image at a time under the run's autocast, as :meth:`Trainer._sam_features` computes them
without a store, so a run gives the same result with or without one (and the precision is
part of the key).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from evfbench.distributed import Context
from evfbench.errors import EvfbenchError
from evfbench.io import atomic_write_text

__all__ = ["FeatureStore", "store_key"]

INDEX = "index.json"
VERSION = 2


def _frozen_state(net: nn.Module, skip: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The visual model's tensors outside ``skip`` (the prompt encoder and mask decoder, which
    the text stages train and encoding never reads)."""
    skipped = {name for name, child in net.visual_model.named_children() if any(child is s for s in skip)}
    return {k: v for k, v in net.visual_model.state_dict().items() if k.split(".", 1)[0] not in skipped}


def store_key(net: nn.Module, skip: Sequence[nn.Module], paths: Sequence[Path], flips: Sequence[bool],
              precision: str) -> str:
    """A digest of everything the stored features depend on (see the module docstring)."""
    h = hashlib.sha256()
    backend = net.backend
    files = [(str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in paths]  # a rewritten image is another image
    h.update(json.dumps({"version": VERSION, "family": backend.family, "img_size": backend.img_size,
                         "precision": precision, "flips": list(flips), "files": files}).encode())
    for name, tensor in sorted(_frozen_state(net, skip).items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()[:20]


def _tensors(features: Any) -> dict[str, torch.Tensor]:
    """The image-dependent tensors of one image's SamFeatures, by file name."""
    out = {"image_embed": features.image_embed}
    for level, t in enumerate(features.high_res or []):
        out[f"high_res.{level}"] = t
    return out


class FeatureStore:
    """Read access to a complete store folder; :meth:`open` builds it first when needed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        index = json.loads((folder / INDEX).read_text())
        self.paths: list[str] = index["paths"]
        self.flips: list[bool] = index["flips"]
        self._row = {p: i for i, p in enumerate(self.paths)}
        self._arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in index["tensors"]}
        self._dtypes = {name: getattr(torch, dtype) for name, dtype in index["dtypes"].items()}
        self._sizes = np.load(folder / "input_size.npy")

    @classmethod
    def open(cls, root: Path, net: nn.Module, skip: Sequence[nn.Module], paths: Sequence[Path],
             flips: Sequence[bool], precision: str, encode: Any, ctx: Context, progress: bool = True) -> FeatureStore:
        """The store of these images under ``root``, built first if no complete one exists.

        ``encode(path, flip)`` -> SamFeatures of one image, computed under the autocast of
        ``precision`` (the run's). Every process calls this; each encodes its shard into the
        shared files, and the main process publishes the folder.
        """
        paths = sorted({Path(p) for p in paths})
        folder = Path(root) / store_key(net, skip, paths, flips, precision)
        if not (folder / INDEX).is_file():
            cls._build(folder, paths, flips, encode, ctx, progress)
        return cls(folder)

    @staticmethod
    def _build(folder: Path, paths: list[Path], flips: Sequence[bool], encode: Any, ctx: Context, progress: bool) -> None:
        partial = folder.with_name(folder.name + ".partial")
        probe = _tensors(encode(paths[0], flips[0]))
        first = {name: t.shape[1:] for name, t in probe.items()}  # (1, C, H, W) -> (C, H, W)
        if ctx.is_main:
            shutil.rmtree(partial, ignore_errors=True)  # an interrupted build starts again
            try:
                partial.mkdir(parents=True)
                for name, shape in first.items():
                    np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=np.float32,
                                              shape=(len(paths), len(flips), *shape))
            except OSError as err:
                raise EvfbenchError(f"cannot write the SAM feature store {partial}: {err}\n"
                                    "  fix: point feature_store at a writable folder with space (or leave it unset: "
                                    "features are then kept in memory)") from err
        ctx.barrier()
        arrays = {name: np.load(partial / f"{name}.npy", mmap_mode="r+") for name in first}
        rows = list(range(ctx.rank, len(paths), ctx.world_size))
        sizes: dict[int, tuple[int, int]] = {}
        for row in tqdm(rows, desc="SAM features", unit="img", disable=not (progress and ctx.is_main)):
            for f, flip in enumerate(flips):
                features = encode(paths[row], flip)
                for name, t in _tensors(features).items():
                    arrays[name][row, f] = t[0].float().numpy()
                sizes[row] = tuple(features.input_size) if features.input_size is not None else (-1, -1)
        for array in arrays.values():
            array.flush()
        del arrays
        gathered = ctx.all_gather(sizes)
        if ctx.is_main:
            table = np.zeros((len(paths), 2), dtype=np.int64)
            for part in gathered:
                for row, size in part.items():
                    table[row] = size
            np.save(partial / "input_size.npy", table)
            index = {"version": VERSION, "paths": [str(p) for p in paths], "flips": list(flips),
                     "tensors": {name: list(shape) for name, shape in first.items()},
                     "dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in probe.items()}}
            atomic_write_text(partial / INDEX, json.dumps(index))
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
        ctx.barrier()

    def tensors(self, path: Path | str, flip: bool) -> tuple[dict[str, torch.Tensor], tuple[int, int] | None]:
        """``{name: (1, ...) tensor}`` in the dtype the encoder gave it (kept as float32, which holds
        a bf16 or fp16 value exactly) and the resized input size of one (image, flip)."""
        try:
            row, f = self._row[str(path)], self.flips.index(flip)
        except (KeyError, ValueError) as err:
            raise EvfbenchError(f"the SAM feature store {self.folder} holds no features of {path} (flip {flip})\n"
                                "  fix: delete the folder; the next run rebuilds it") from err
        out = {name: torch.from_numpy(np.array(a[row, f]))[None].to(self._dtypes[name]) for name, a in self._arrays.items()}
        h, w = (int(v) for v in self._sizes[row])
        return out, None if h < 0 else (h, w)
