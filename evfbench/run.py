"""Evaluate registered models on registered splits.

    python -m evfbench.run --model evf_sam --split refcoco_testA
    python -m evfbench.run --model oracle,empty,box --split shapes_val,shapes_testA --save-masks
    torchrun --nproc_per_node 2 -m evfbench.run --model box --split shapes_val

Each (model, split) pair writes ``<output-dir>/<model>__<split>/`` (see
:mod:`evfbench.results`). Images are visited one at a time with all their sentences, so a
model embeds each image once. A rerun with ``--resume`` skips every finished sentence and
gives the same metrics as an uninterrupted run; under ``torchrun`` each process takes every
``world_size``-th image and the integer sums are all-reduced, so the metrics equal those of
one process.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm import tqdm

from evfbench import results as rs
from evfbench.cards import SplitCard
from evfbench.data import default_data_root, load_split
from evfbench.data.masks import encode_rle
from evfbench.data.types import ImageGroup
from evfbench.distributed import Context, distributed
from evfbench.errors import EvfbenchError, cli
from evfbench.io import atomic_write_json
from evfbench.metrics import CONVENTION, MetricAccumulator, add_exact, intersection_union
from evfbench.models.base import SegmentationModel
from evfbench.registry import create_model, get_model_card, get_split, model_args as card_args

SYNC_SECONDS = 5.0  # fsync the sample log at most this often; every image is flushed anyway


class RunError(EvfbenchError):
    """A run that cannot start or continue as asked; the message says what to do."""


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``"weights=/ckpt,dtype=bf16,batch_size=8"`` -> typed dict (values parsed as YAML scalars)."""
    args: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunError(f"--model-args item {item!r} is not key=value")
        args[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return args


def limit_groups(groups: list[ImageGroup], limit: int | None) -> list[ImageGroup]:
    """The first ``limit`` sentences in dataset order (a group may be cut)."""
    if limit is None:
        return groups
    out, left = [], limit
    for group in groups:
        if left <= 0:
            break
        if len(group.samples) > left:
            group = ImageGroup(group.image_id, group.path, group.height, group.width,
                               group.samples[:left], group.annotations)
        out.append(group)
        left -= len(group.samples)
    return out


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("evfbench", "torch", "numpy", "pycocotools", "segment-anything", "sam2",
                    "transformers", "open-clip-torch"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


WEIGHT_SUFFIXES = frozenset({".safetensors", ".pth", ".pt", ".bin", ".json", ".model"})


def weights_sha256(model: str, overrides: dict[str, Any]) -> dict[str, str]:
    """``{argument: sha256}`` of each local file or folder the model's arguments name (its weight,
    config and tokenizer files): a card's weights can change under the same name, and a run of
    the old ones must not pass for one of the new."""
    out = {}
    for key, value in card_args(model, **overrides).items():
        path = Path(value) if isinstance(value, str) and value else None
        if path is None or not path.exists():
            continue
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        out[key] = digest.hexdigest()
    return out


def _check_run_spec(folder: Path, spec: dict[str, Any], resume: bool, overwrite: bool, refresh: bool = False) -> None:
    """Refuse to mix two different runs in one folder, and to redo finished work by accident;
    with ``refresh``, a run started with other settings (or other weights) starts over."""
    spec_path = folder / rs.RUN
    started = spec_path.is_file()
    diff: dict[str, tuple[Any, Any]] = {}
    if started and not overwrite:
        old = json.loads(spec_path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in spec.items() if old.get(k) != v}
    if started and (overwrite or (refresh and diff)):
        for path in [*rs.sample_files(folder), folder / rs.RESULTS, spec_path]:
            path.unlink(missing_ok=True)
        started = False
    if started and not resume:
        state = "finished" if (folder / rs.RESULTS).is_file() else "unfinished"
        raise RunError(f"{folder} already holds an {state} run.\n"
                       "  fix: pass --resume to continue it (finished sentences are kept) or --overwrite to start over")
    if started and diff:
        raise RunError(f"--resume: {spec_path} was started with different settings "
                       f"{ {k: o for k, (o, _) in diff.items()} }, now { {k: n for k, (_, n) in diff.items()} }.\n"
                       "  fix: rerun with the original settings, or use --overwrite / another --output-dir")
    if not started:
        atomic_write_json(spec_path, spec)


def evaluate_split(
    model_name: str,
    get_model: Callable[[], SegmentationModel],
    card: SplitCard,
    groups: list[ImageGroup],
    folder: Path,
    ctx: Context,
    save_masks: bool = False,
) -> dict[str, Any]:
    """Score ``groups`` (already limited) into ``folder``; returns the scores and timings.

    ``get_model`` is called only when some sentence is left to score, so resuming a
    finished run needs no weights.
    """
    shard = ctx.shard(groups)
    done = rs.read_samples(folder)
    acc = MetricAccumulator()
    todo: list[ImageGroup] = []
    for group in shard:
        if all(s.sent_id in done for s in group.samples):
            for s in group.samples:
                acc.add(int(done[s.sent_id]["intersection"]), int(done[s.sent_id]["union"]))
        else:
            todo.append(group)

    n_shard = sum(len(g.samples) for g in shard)
    n_new = 0
    model_info = None
    started = time.perf_counter()
    if todo:
        model = get_model()
        model_info = model.describe()
        progress = tqdm(total=n_shard, initial=n_shard - sum(len(g.samples) for g in todo),
                        desc=f"{model_name} {card.name}", unit="sent", disable=not ctx.is_main,
                        dynamic_ncols=True)
        last_sync = time.monotonic()
        with rs.open_part(folder, ctx.rank) as log:
            for group in todo:
                image = group.load_image()
                masks = model.predict(image, group)
                if masks.shape != (len(group.samples), group.height, group.width):
                    raise RunError(f"model {model_name} returned masks of shape {masks.shape} for image "
                                   f"{group.image_id}; expected {(len(group.samples), group.height, group.width)}")
                for sample, mask in zip(group.samples, masks):
                    if sample.sent_id in done:
                        record = done[sample.sent_id]
                        acc.add(int(record["intersection"]), int(record["union"]))
                        continue
                    inter, union = intersection_union(mask, group.target_mask(sample))
                    record = {"sent_id": sample.sent_id, "ref_id": sample.ref_id, "image_id": sample.image_id,
                              "text": sample.text, "intersection": inter, "union": union,
                              "iou": acc.add(inter, union)}
                    if save_masks:
                        record["segmentation"] = encode_rle(mask)
                    rs.write_record(log, record)
                    n_new += 1
                log.flush()
                if time.monotonic() - last_sync > SYNC_SECONDS:
                    rs.sync(log)
                    last_sync = time.monotonic()
                progress.update(len(group.samples))
            rs.sync(log)
        progress.close()
    elapsed = time.perf_counter() - started

    totals = ctx.all_reduce_ints([acc.n, acc.inter, acc.union, *acc.hits, n_new])
    merged = MetricAccumulator(n=totals[0], inter=totals[1], union=totals[2], hits=totals[3:-1])
    for partials in ctx.all_gather(acc.iou_partials):  # exact, so the order of ranks is irrelevant
        for p in partials:
            add_exact(merged.iou_partials, p)
    n_new_all = totals[-1]
    elapsed = max(ctx.all_gather(elapsed))
    if merged.n != sum(len(g.samples) for g in groups):
        raise RunError(f"scored {merged.n} sentences but the split has {sum(len(g.samples) for g in groups)}")
    return {
        "metrics": merged.compute(),
        "n_sentences": merged.n,
        "n_images": len(groups),
        "n_scored_this_run": n_new_all,
        "elapsed_s": round(elapsed, 3),
        "sentences_per_s": round(n_new_all / elapsed, 3) if n_new_all and elapsed > 0 else None,
        "model_info": model_info,
    }


def run(
    models: list[str],
    splits: list[str],
    data_root: Path | None = None,
    output_dir: Path = Path("runs"),
    model_args: dict[str, Any] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    save_masks: bool = False,
    refresh: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate every model on every split; returns the results dicts (also written to disk).

    ``refresh`` (with ``resume``): keep what was done with the same settings and weights, and
    start over where they changed (``make demo`` after new weights are shipped)."""
    model_args = dict(model_args or {})
    cards = [get_split(s) for s in splits]  # unknown names fail before any work
    for name in models:
        get_model_card(name)
    data_root = Path(data_root) if data_root else default_data_root()
    out: list[dict[str, Any]] = []
    with distributed(device) as ctx:
        dev = ctx.device(device)
        for name in models:
            get_model = functools.cache(
                functools.partial(create_model, name, device=dev, batch_size=batch_size, **model_args)
            )
            weights = weights_sha256(name, model_args)
            for card in cards:
                groups = limit_groups(load_split(card, data_root), limit)
                folder = rs.run_dir(output_dir, name, card.name)
                spec = {"model": name, "model_args": model_args, "split": card.name,
                        "limit": limit, "save_masks": save_masks, "weights_sha256": weights}
                if ctx.is_main:
                    folder.mkdir(parents=True, exist_ok=True)
                    _check_run_spec(folder, spec, resume, overwrite, refresh)
                ctx.barrier()
                scored = evaluate_split(name, get_model, card, groups, folder, ctx, save_masks)
                model_card, _ = get_model_card(name)
                result = {
                    "model": name,
                    "model_args": model_args,
                    "split": card.name,
                    "card": {k: v for k, v in vars(card).items() if k != "path"},
                    "uses_ground_truth": model_card.uses_ground_truth,
                    "weights_sha256": weights,
                    "convention": CONVENTION,
                    **scored,
                    "limit": limit,
                    "world_size": ctx.world_size,
                    "device": str(device),
                    "versions": _versions(),
                    "git_commit": _git_commit(),
                    "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                ctx.barrier()
                if ctx.is_main:
                    rs.merge_parts(folder, [s.sent_id for g in groups for s in g.samples])
                    atomic_write_json(folder / rs.RESULTS, result)
                    m = result["metrics"]
                    print(f"{name:>16} {card.name:<18} cIoU {m['ciou']:.4f}  gIoU {m['giou']:.4f}  "
                          f"P@0.5 {m['p@0.5']:.4f}  ({result['n_sentences']} sentences) -> {folder}")
                ctx.barrier()
                out.append(result)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evfbench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered model(s), comma-separated: evf_sam, box, ...")
    p.add_argument("--split", required=True, help="split(s), comma-separated: refcoco_testA, shapes_val, ...")
    p.add_argument("--data-root", type=Path, default=None,
                   help="datasets root (default: $EVFBENCH_DATA, else ~/.cache/evfbench/data)")
    p.add_argument("--output-dir", type=Path, default=Path("runs"), help="where results go (default: runs)")
    p.add_argument("--model-args", default=None, help="builder arguments k=v,k2=v2 (e.g. weights=DIR,dtype=bf16)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N sentences")
    p.add_argument("--batch-size", type=int, default=16, help="expressions per forward pass")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run, keeping finished sentences")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in the same folder")
    p.add_argument("--save-masks", action="store_true", help="store each predicted mask (RLE) in samples.jsonl")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(
        models=[m for m in args.model.split(",") if m],
        splits=[s for s in args.split.split(",") if s],
        data_root=args.data_root,
        output_dir=args.output_dir,
        model_args=parse_model_args(args.model_args),
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        save_masks=args.save_masks,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
