"""Training steps per second: fused vs for-loop AdamW, and bf16 autocast vs fp32, side by side.

    python benchmarks/bench_train_step.py [--steps 20] [--repeats 5] [--threads 2]

Workload: one optimizer step of stage 2c of ``evf_sam_tiny.shapes`` (registry/weights/
evf_sam_tiny_shapes/TRAINING.md) with every module trained (the shipped stage keeps the SAM
image encoder frozen): the card's ``shapes`` architecture, randomly initialised, early fusion
with ``grounding_aux`` 1, 8 images x up to 3 expressions of a generated shapes corpus, fp32.
Every variant starts from the same parameters and sees the same batches; the first two differ
only in the optimizer kernel (``evfbench.train.build_optimizer`` picks the fused one). The
tiny models have ~300 parameter tensors, so the for-loop optimizer's dozen small ops per
tensor are a visible share of a step. A third variant runs the fused step under bf16 autocast,
as ``--precision bf16`` trains: how much that buys depends on the CPU (AVX512-BF16 or AMX
matrix units), and the shipped recipes train in fp32.

The variants alternate within every repeat (which one goes first alternates too) and the
median seconds per step of the repeats is reported. Nothing is asserted: the machine is shared
and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evfbench.prep.shapes import build_shapes
from evfbench.registry import get_model_card
from evfbench.train import TrainConfig, Trainer, build_model, build_optimizer, param_groups, set_trainable
from evfbench.train_data import TrainingData, train_tokenizer


def make_trainer(cfg: TrainConfig, fused: bool) -> tuple[Trainer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"), None)
    set_trainable(model.net.float().train(), cfg.train)
    trainer = Trainer(model, cfg, torch.device("cpu"))
    groups = param_groups(model.net, cfg, trainer.heads())
    if fused:  # exactly what evfbench.train builds
        return trainer, build_optimizer(cfg, groups, torch.device("cpu"))
    return trainer, torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=False)


def run(trainer: Trainer, optimizer: torch.optim.Optimizer, data: TrainingData, cfg: TrainConfig, start: int,
        steps: int, bf16: bool = False) -> float:
    """Seconds per step over ``steps`` steps from ``start`` (the forward under bf16 autocast if ``bf16``)."""
    batches = [[data.example(item) for item in data.global_batch(cfg.seed, s, cfg.global_batch, cfg.texts_per_image,
                                                                  cfg.flip_prob)] for s in range(start, start + steps)]
    t0 = time.perf_counter()
    for examples in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = trainer(examples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="evf_bench_train_"))
    build_shapes(root, n_images={"train": 40, "val": 2, "testA": 2, "testB": 2}, seed=0, progress=False)
    data = TrainingData(["shapes"], None, root)
    tokenizer = train_tokenizer(data.sentences(), root / "tokenizer", vocab_size=120)
    shapes = get_model_card("evf_sam_tiny")[0].tags["shapes"].args
    cfg = TrainConfig(model="evf_sam_tiny", tokenizer=str(tokenizer), data=["shapes"], data_root=str(root), precision="fp32",
                      global_batch=8, per_device_batch=8, flip_prob=0.5, lr=5e-4, grounding_aux=1.0, beit3_position_std=0.3,
                      train=["image_encoder", "mm_encoder", "projector", "prompt_encoder", "mask_decoder"],
                      model_args={"beit3_config": shapes["beit3_config"], "sam_config": shapes["sam_config"],
                                  "fusion": "early"})
    variants = {name: (*make_trainer(cfg, fused), bf16) for name, fused, bf16 in
                (("for-loop AdamW", False, False), ("fused AdamW", True, False), ("fused, bf16", True, True))}
    for trainer, optimizer, bf16 in variants.values():  # warm-up
        run(trainer, optimizer, data, cfg, 0, 2, bf16)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            trainer, optimizer, bf16 = variants[name]
            times[name].append(run(trainer, optimizer, data, cfg, 2 + r * args.steps, args.steps, bf16))
    plain, fused, fused_bf16 = (statistics.median(times[name]) for name in variants)
    n_params = sum(1 for g in variants["fused AdamW"][1].param_groups for _ in g["params"])
    print(f"stage-2c step of evf_sam_tiny.shapes: {n_params} parameter tensors, {args.threads} threads, "
          f"median of {args.repeats} x {args.steps} steps")
    for name in variants:
        print(f"  {name:15s} {statistics.median(times[name]) * 1000:7.1f} ms/step")
    print(f"  fused / for-loop speed: {plain / fused:.2f}x")
    print(f"  bf16 / fp32 speed (fused): {fused / fused_bf16:.2f}x")


if __name__ == "__main__":
    main()
