"""The files an evaluation run leaves, and how to read them back.

``<output-dir>/<model>__<split>/``
    ``run.json``        what was asked (model, args, split, limit): a resumed run must match it
    ``samples.jsonl``   one line per sentence, in dataset order: ``sent_id, ref_id, image_id,
                        text, intersection, union, iou`` (+ ``segmentation`` RLE with --save-masks)
    ``results.json``    the metrics and the provenance (versions, git commit, convention)

While a run is in progress each process appends to ``samples.rank<R>.jsonl`` and flushes
after every image, so a crash loses at most the image being processed; a torn last line is
dropped on resume. The part files are merged into ``samples.jsonl`` when the run finishes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from evfbench.errors import EvfbenchError
from evfbench.io import atomic_write_text

SAMPLES = "samples.jsonl"
RESULTS = "results.json"
RUN = "run.json"


def run_dir(output_dir: Path, model: str, split: str) -> Path:
    return Path(output_dir) / f"{model}__{split}"


def split_runs(output_dir: Path, split: str, models: Iterable[str] = ()) -> list[Path]:
    """The runs of ``split`` under ``output_dir``: of ``models`` in that order, else every finished one."""
    wanted = list(models)
    if wanted:
        return [run_dir(output_dir, m, split) for m in wanted]
    return sorted(d for d in Path(output_dir).glob(f"*__{split}") if (d / RESULTS).is_file())


def add_run_arguments(p: argparse.ArgumentParser, what: str = "runs") -> None:
    """The options of a tool that reads saved runs: ``--runs``, ``--split``, ``--models``, ``--data-root``."""
    p.add_argument("--runs", type=Path, required=True, help=f"folder of <model>__<split> {what}")
    p.add_argument("--split", required=True)
    p.add_argument("--models", default="", help="comma-separated models (default: every run of the split)")
    p.add_argument("--data-root", type=Path, default=None)


def selected_runs(args: argparse.Namespace) -> tuple[str, list[Path]]:
    """(split name, run folders) of the options :func:`add_run_arguments` added."""
    from evfbench.registry import get_split

    split = get_split(args.split).name
    return split, split_runs(args.runs, split, [m for m in args.models.split(",") if m])


def part_path(folder: Path, rank: int) -> Path:
    return folder / f"samples.rank{rank}.jsonl"


def sample_files(folder: Path) -> list[Path]:
    """The merged file (if any) and every part file, in a stable order."""
    merged = folder / SAMPLES
    parts = sorted(folder.glob("samples.rank*.jsonl"))
    return ([merged] if merged.is_file() else []) + parts


def _complete_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(byte offset after the line, record)`` for every complete, valid line of ``path``."""
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # torn write at the end of an interrupted run
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                return
            offset += len(raw)
            yield offset, record


def read_samples(folder: Path) -> dict[int, dict[str, Any]]:
    """Every finished sentence recorded in ``folder``, keyed by ``sent_id``."""
    done: dict[int, dict[str, Any]] = {}
    for path in sample_files(folder):
        for _, record in _complete_lines(path):
            done[int(record["sent_id"])] = record
    return done


def open_part(folder: Path, rank: int) -> IO[str]:
    """This process's part file, opened for appending after its last complete line."""
    path = part_path(folder, rank)
    if path.exists():
        good = 0
        for good, _ in _complete_lines(path):
            pass
        with path.open("r+b") as f:
            f.truncate(good)
    return path.open("a", encoding="utf-8")


def write_record(f: IO[str], record: dict[str, Any]) -> None:
    f.write(json.dumps(record, separators=(",", ":")) + "\n")


def sync(f: IO[str]) -> None:
    f.flush()
    os.fsync(f.fileno())


def merge_parts(folder: Path, order: Iterable[int]) -> Path:
    """Write ``samples.jsonl`` in the given sentence order (atomically), then drop the parts."""
    done = read_samples(folder)
    lines = [json.dumps(done[sent_id], separators=(",", ":")) for sent_id in order]
    merged = folder / SAMPLES
    atomic_write_text(merged, "".join(line + "\n" for line in lines))
    for part in folder.glob("samples.rank*.jsonl"):
        part.unlink()
    return merged


def iter_samples(folder: Path) -> Iterator[dict[str, Any]]:
    """Stream the merged per-sentence records of a finished run."""
    for _, record in _complete_lines(Path(folder) / SAMPLES):
        yield record


def load_results(root: Path) -> list[dict[str, Any]]:
    """Every ``results.json`` below ``root`` (one level of ``<model>__<split>`` folders)."""
    out = []
    for path in sorted(Path(root).glob(f"*/{RESULTS}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); fix: delete it and rerun that evaluation") from err
        data["_dir"] = str(path.parent)
        out.append(data)
    return out


def saved_masks(folder: Path) -> tuple[str, dict[int, dict[str, Any]]]:
    """(model, sent_id -> record) of a finished run's sentences that carry a mask (``--save-masks``)."""
    results = json.loads((folder / RESULTS).read_text(encoding="utf-8"))
    records = {r["sent_id"]: r for r in iter_samples(folder) if "segmentation" in r}
    if not records:
        raise EvfbenchError(f"{folder}/{SAMPLES} holds no masks\n  fix: rerun the evaluation with --save-masks")
    return results["model"], records
