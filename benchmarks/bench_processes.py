"""Training images per second on a small CPU: one process, one process with more threads, or
one process per core under ``torchrun`` (DDP, gloo), side by side.

    python benchmarks/bench_processes.py [--steps 60] [--repeats 3] [--cores 2]

Workload: stage 2c of ``evf_sam_tiny.shapes`` (``registry/weights/evf_sam_tiny_shapes/
train_config.yaml``: early fusion with the grounding loss, 8 images x up to 3 expressions per
process) with the SAM image encoder trained as well: the shipped stage keeps it frozen and
caches its embeddings, which would make the rate depend on how often an image comes back.
From random initialisation on a generated shapes corpus, through the real command line
(``python -m evfbench.train``). Three variants:

    1 process x 1 thread           global batch 8
    1 process x N threads          global batch 8 (PyTorch's intra-op threads)
    N processes x 1 thread         global batch 8 N (torchrun --nproc_per_node N)

Intra-op threads split each of the tiny models' small operations, which parallelises only
part of a step; one process per core runs N micro-batches at once and pays one gradient
all-reduce per step.
The rate of a run is images per second between its first and last log row (the first
``log_every`` steps, with start-up, are left out). The variants alternate within every repeat
(the order rotates) and the median of the repeats is reported. Nothing is asserted: the
machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from evfbench.prep.shapes import build_shapes
from evfbench.train import MODULES, read_csv

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "registry/weights/evf_sam_tiny_shapes/train_config.yaml"


def images_per_second(log: Path, batch: int) -> float:
    """Images / s between the first and the last row of a ``train_log.csv``."""
    rows = read_csv(log)
    first, last = rows[0], rows[-1]
    steps = int(last["step"]) - int(first["step"])
    return steps * batch / (float(last["elapsed_s"]) - float(first["elapsed_s"]))


def run(work: Path, name: str, processes: int, threads: int, steps: int, root: Path) -> float:
    """One training run of ``steps`` steps -> its images per second."""
    raw = yaml.safe_load(CONFIG.read_text())
    batch = 8 * processes
    raw.update(init=None, tokenizer_vocab=120, data_root=str(root), steps=steps, warmup_steps=5, global_batch=batch,
               per_device_batch=8, val_split=None, eval_every=0, checkpoint_every=10**9, log_every=20,
               train=list(MODULES), cache=False)
    config, out = work / f"{name}.yaml", work / name
    config.write_text(yaml.safe_dump(raw))
    command = ["-m", "evfbench.train", "--config", str(config), "--output-dir", str(out), "--no-progress"]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *command], check=True, env=env, cwd=work, stdout=subprocess.DEVNULL)
    rate = images_per_second(out / "train_log.csv", batch)
    shutil.rmtree(out)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per run (the first 20 are left out)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="N: threads of the second variant, processes of the third")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="evf_bench_processes_"))
    root = work / "data"
    build_shapes(root, n_images={"train": 64, "val": 2, "testA": 2, "testB": 2}, seed=0, progress=False)
    n = args.cores
    variants = {"1 process x 1 thread, batch 8": (1, 1), f"1 process x {n} threads, batch 8": (1, n),
                f"{n} processes x 1 thread, batch {8 * n}": (n, 1)}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        names = list(variants)
        for name in names[r % len(names):] + names[: r % len(names)]:
            rates[name].append(run(work, f"run{len(rates[name])}_{variants[name][0]}x{variants[name][1]}",
                                   *variants[name], args.steps, root))
    base = statistics.median(rates[next(iter(variants))])
    print(f"stage-2c training of evf_sam_tiny.shapes on {os.cpu_count()} CPUs, median of {args.repeats} runs "
          f"of {args.steps} steps")
    for name in variants:
        median = statistics.median(rates[name])
        print(f"  {name:34s} {median:6.1f} images/s  {median / base:4.2f}x")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
