"""Seconds of a chain of text stages with the frozen SAM features in memory vs in a feature store, side by side.

    python benchmarks/bench_feature_store.py [--images 400] [--stages 3] [--steps 60] [--repeats 3]

memory: ``cache: true``: each stage (a new process in a recipe) computes the features of an
    (image, flip) the first time a batch draws it and keeps them for the rest of the stage.
store:  ``feature_store``: the first stage encodes every (image, flip) once into memory-mapped
    files; the later stages, whose frozen encoder is the same, map them and encode nothing.

Workload: ``--stages`` text stages of ``--steps`` steps each, one process, 8 images a step,
flip 0.5, the architecture of ``evf_sam_tiny.shapes`` (randomly initialised; every stage
starts from the same weights, so the frozen encoder is the same), on a generated shapes
corpus of ``--images`` train images. A stage draws ``8 x steps`` images; the shipped recipe's
stages draw 4800 to 28800 per process from 2000 images, so most of its (image, flip) pairs are
encoded in every stage. The whole ``evfbench.train`` run is timed (building the model, loading
the data, training), as a recipe pays it. The variants alternate within every repeat (which
goes first alternates too) and the median of the repeats is reported. Nothing is asserted:
the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evfbench.prep.shapes import build_shapes
from evfbench.registry import get_model_card
from evfbench.train import TrainConfig, train
from evfbench.train_data import TrainingData, train_tokenizer


def chain(cfg: TrainConfig, stages: int, folder: Path, store: bool) -> list[float]:
    """Seconds of each stage of one chain (a fresh store for the store variant)."""
    shutil.rmtree(folder, ignore_errors=True)
    out = []
    for k in range(stages):
        stage = dataclasses.replace(cfg, feature_store=str(folder / "store") if store else None)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # train() announces each finished run
            train(stage, folder / f"stage{k}", progress=False)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="train images of the generated corpus")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="steps per stage")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="evf_bench_store_"))
    build_shapes(root / "data", n_images={"train": args.images, "val": 2, "testA": 2, "testB": 2}, seed=0, progress=False)
    data = TrainingData(["shapes"], None, root / "data")
    tokenizer = train_tokenizer(data.sentences(), root / "tokenizer", vocab_size=120)
    shapes = get_model_card("evf_sam_tiny")[0].tags["shapes"].args
    cfg = TrainConfig(model="evf_sam_tiny", tokenizer=str(tokenizer), data=["shapes"], data_root=str(root / "data"),
                      precision="fp32", cache=True, steps=args.steps, global_batch=8, per_device_batch=8, flip_prob=0.5,
                      lr=5e-4, log_every=args.steps, checkpoint_every=args.steps, seed=0,
                      model_args={"beit3_config": shapes["beit3_config"], "sam_config": shapes["sam_config"],
                                  "fusion": "text"})
    times: dict[str, list[list[float]]] = {"memory": [], "store": []}
    for r in range(args.repeats):
        for name in (["memory", "store"] if r % 2 == 0 else ["store", "memory"]):
            times[name].append(chain(cfg, args.stages, root / name, name == "store"))
    shutil.rmtree(root, ignore_errors=True)

    def median(name: str, which: slice) -> float:
        return statistics.median(sum(t[which]) for t in times[name])

    print(f"{args.stages} text stages x {args.steps} steps x 8 images, {args.images} train images (x2 flips), "
          f"{args.threads} thread(s), median of {args.repeats}")
    rows = [("whole chain", slice(None)), ("first stage", slice(0, 1))]
    for label, which in rows + ([("later stages", slice(1, None))] if args.stages > 1 else []):
        mem, st = median("memory", which), median("store", which)
        print(f"  {label:13s} memory {mem:6.1f} s   store {st:6.1f} s   store speed: {mem / st:.2f}x")


if __name__ == "__main__":
    main()
