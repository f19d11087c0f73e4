"""Run a chain of training stages in order: ``python -m evfbench.recipe``.

The shipped tiny weights come from chains of six ``evfbench.train`` stages, each starting from
an earlier one (``init: runs/<stage>/checkpoints/step-N`` or ``sam_checkpoint:
runs/<stage>/model`` in its config). A recipe file lists them in order::

    stages:
      - {config: sam_boxes_config.yaml, output: shapes_sam_boxes}
      - {config: ../evf_sam_tiny_text_shapes/colour_config.yaml, output: shapes_text_colour}

``config`` is relative to the recipe file; ``output`` is the run folder under
``<workdir>/runs/``. An optional ``corpus: {shapes: {train_images: 8000}}`` names the options of
``python -m evfbench.prep shapes`` that built the corpus the stages trained on (``scale``,
``seed``, ``train_images``); the data root must hold that very corpus, or the chain would train
on other data than its numbers come from. Every stage runs in ``<workdir>``, so the configs'
relative paths resolve, as ``torchrun --nproc_per_node N`` (cores / N threads each unless
``OMP_NUM_THREADS`` is set) or, with ``--nproc 1``, as one process. A finished stage (its ``model/`` exists) is skipped,
once its ``config.yaml`` is found to match the stage's (all but ``data_root`` and the fields
that do not change a run), and an interrupted one is resumed from its last checkpoint:
rerunning the command continues the chain.
Before anything runs, every link is checked: each path under ``runs/`` must name an earlier
stage and a checkpoint that stage keeps. At the end (and with ``--dry-run`` once some stage has
run) a table gives each stage's minutes and the cIoU of its last evaluation (the run's own:
box-prompted for a SAM stage, on the first ``eval_limit`` val sentences), and the sum of the
minutes: the recipe's training time.

    python -m evfbench.recipe evf_sam_tiny_shapes --data-root DATA            # the shipped weights
    python -m evfbench.recipe evf_sam_tiny_shapes --data-root DATA --seed 1 --workdir seed1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from evfbench.cards import registry_root
from evfbench.data import default_data_root
from evfbench.errors import EvfbenchError, cli
from evfbench.prep import shapes
from evfbench.train import TrainConfig, build_parser as train_parser, config_changes, config_from_args, read_csv


class RecipeError(EvfbenchError):
    """A recipe file, or a link between its stages, that cannot run."""


@dataclass(frozen=True)
class Stage:
    config_path: Path
    output: str
    config: TrainConfig

    @property
    def run_dir(self) -> PurePosixPath:
        return PurePosixPath("runs") / self.output

    def kept_steps(self) -> set[int]:
        """The steps whose checkpoints survive the run (``keep_checkpoints`` of them, or all if 0)."""
        cfg = self.config
        steps = sorted({*range(cfg.checkpoint_every, cfg.steps + 1, cfg.checkpoint_every), cfg.steps})
        return set(steps[-cfg.keep_checkpoints:] if cfg.keep_checkpoints > 0 else steps)


def resolve(recipe: str) -> Path:
    """A recipe file, a folder holding ``recipe.yaml``, or a folder of ``registry/weights``."""
    for path in (Path(recipe), Path(recipe) / "recipe.yaml", registry_root() / "weights" / recipe / "recipe.yaml"):
        if path.is_file():
            return path
    raise RecipeError(f"no recipe {recipe!r}: not a file, a folder holding recipe.yaml, or a folder of "
                      f"{registry_root() / 'weights'}\n  fix: pass the path of a recipe.yaml")


def load(path: Path) -> list[Stage]:
    """The stages of ``path``, each config parsed and validated as ``evfbench.train`` would."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = data.get("stages") if isinstance(data, dict) else None
    if not entries or not all(isinstance(e, dict) and {"config", "output"} <= set(e) for e in entries):
        raise RecipeError(f"{path}: 'stages' must list mappings with 'config' and 'output'\n"
                          "  fix: see `python -m evfbench.recipe --help` for the format")
    stages = []
    for entry in entries:
        config_path = (path.parent / entry["config"]).resolve()
        if not config_path.is_file():
            raise RecipeError(f"{path}: stage {entry['output']!r}: config {config_path} does not exist")
        args = train_parser().parse_args(["--config", str(config_path), "--output-dir", "unused"])
        stages.append(Stage(config_path, str(entry["output"]), config_from_args(args)))
    outputs = [s.output for s in stages]
    if len(set(outputs)) != len(outputs):
        raise RecipeError(f"{path}: two stages write the same output folder ({outputs})")
    check_links(path, stages)
    return stages


def corpus(path: Path) -> dict[str, Any]:
    """The recipe's ``corpus`` entry: the ``prep shapes`` options of its training corpus ({} if none)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entry = (data.get("corpus") if isinstance(data, dict) else None) or {}
    options = entry.get("shapes") if isinstance(entry, dict) and set(entry) == {"shapes"} else None
    if entry and not (isinstance(options, dict) and set(options) <= {"scale", "seed", "train_images"}):
        raise RecipeError(f"{path}: 'corpus' must be {{shapes: {{...}}}} with some of scale, seed, train_images "
                          f"(the options of python -m evfbench.prep shapes); got {entry!r}")
    return dict(options or {})


def corpus_problem(path: Path, data_root: Path | None) -> str | None:
    """Why the data root does not hold the corpus the recipe names (None when it does, or names none)."""
    options = corpus(path)
    if not options:
        return None
    root = data_root or default_data_root()
    if shapes.is_built(root, **options):
        return None
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
    return (f"{path} trains on the shapes corpus of `python -m evfbench.prep shapes {flags}`; {root} holds "
            f"{shapes.describe(root)}\n"
            f"  fix: python -m evfbench.prep shapes --data-root NEW_ROOT {flags}, then pass --data-root NEW_ROOT")


def check_links(path: Path, stages: list[Stage]) -> None:
    """Each ``runs/...`` path of a stage must name an earlier stage and a checkpoint it keeps."""
    for i, stage in enumerate(stages):
        earlier = {s.output: s for s in stages[:i]}
        for field in ("init", "sam_checkpoint", "beit3_checkpoint"):
            value = getattr(stage.config, field)
            parts = PurePosixPath(value).parts if value else ()
            if len(parts) < 2 or parts[0] != "runs":
                continue
            where = f"{path}: stage {stage.output!r} ({stage.config_path.name}): {field}: {value}"
            source = earlier.get(parts[1])
            if source is None:
                raise RecipeError(f"{where} names no earlier stage (earlier: {list(earlier) or 'none'})\n"
                                  "  fix: list the stage that writes it before this one")
            if len(parts) == 4 and parts[2] == "checkpoints":
                step = int(parts[3].removeprefix("step-")) if parts[3].startswith("step-") else -1
                if step not in source.kept_steps():
                    raise RecipeError(f"{where}: {source.output} keeps the checkpoints of steps "
                                      f"{sorted(source.kept_steps())}, not {parts[3]}\n"
                                      f"  fix: point {field} at step-{source.config.steps:06d}")


def train_argv(stage: Stage, data_root: Path | None, seed: int | None) -> list[str]:
    """The ``evfbench.train`` arguments of a stage (paths absolute: it runs in the work folder)."""
    argv = ["--config", str(stage.config_path), "--output-dir", str(stage.run_dir)]
    if data_root is not None:
        argv += ["--data-root", str(data_root.resolve())]
    return argv + (["--seed", str(seed)] if seed is not None else [])


def check_finished(stage: Stage, folder: Path, argv: list[str]) -> None:
    """A finished run must be the one this stage would train, or the chain would build on another."""
    if not (folder / "config.yaml").is_file():
        raise RecipeError(f"{folder} holds a model/ but no config.yaml, so it cannot be checked against stage "
                          f"{stage.output}\n  fix: use another --workdir, or delete that folder to train it again")
    changes = config_changes(folder, config_from_args(train_parser().parse_args(argv)))
    changes.pop("data_root", None)
    if changes:
        lines = "\n  ".join(f"{k}: was {old!r}, the stage asks {new!r}" for k, (old, new) in changes.items())
        raise RecipeError(f"{folder} is finished but was trained with other settings than stage {stage.output} "
                          f"({stage.config_path}):\n  {lines}\n"
                          "  fix: use another --workdir, or delete that folder to train it again")


def command(argv: list[str], nproc: int, resume: bool) -> list[str]:
    launcher = [sys.executable, "-m", "evfbench.train"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "evfbench.train"]
    return launcher + argv + (["--resume"] if resume else [])


def summary(stages: list[Stage], workdir: Path) -> str:
    """One line per stage: steps, minutes (``elapsed_s``, evaluations included), last val cIoU."""
    lines, total = [f"{'stage':<36} {'steps':>6} {'min':>6} {'val cIoU':>9}"], 0.0
    for stage in stages:
        folder = workdir / stage.run_dir
        log = read_csv(folder / "train_log.csv")
        minutes = float(log[-1]["elapsed_s"]) / 60 if log else 0.0
        total += minutes
        evals = [r for r in read_csv(folder / "eval_log.csv") if r["split"] == stage.config.val_split]
        ciou = f"{float(evals[-1]['ciou']):.3f}" if evals else "-"
        lines.append(f"{stage.output:<36} {stage.config.steps:>6} {f'{minutes:.1f}' if log else '-':>6} {ciou:>9}")
    lines.append(f"{'total':<36} {'':>6} {total:>6.1f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evfbench.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a recipe.yaml, a folder holding one, or a folder of registry/weights")
    p.add_argument("--workdir", type=Path, default=Path("."), help="where runs/ is written (default: .)")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--nproc", type=int, default=2, help="processes per stage (torchrun); 1 runs it plainly")
    p.add_argument("--seed", type=int, default=None, help="overrides every stage's seed")
    p.add_argument("--dry-run", action="store_true", help="check the links and print the commands only")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc < 1:
        raise RecipeError(f"--nproc must be at least 1; got {args.nproc}")
    path = resolve(args.recipe)
    stages = load(path)
    problem = corpus_problem(path, args.data_root)
    if problem and not args.dry_run:
        raise RecipeError(problem)
    if problem:
        print(f"note: {problem}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    for i, stage in enumerate(stages, 1):
        folder = args.workdir / stage.run_dir
        head = f"[{i}/{len(stages)}] {stage.output}"
        stage_argv = train_argv(stage, args.data_root, args.seed)
        if (folder / "model").is_dir():
            check_finished(stage, folder, stage_argv)
            print(f"{head}: done ({folder / 'model'})")
            continue
        resume = (folder / "checkpoints" / "LATEST").is_file()
        cmd = command(stage_argv, args.nproc, resume)
        print(f"{head}: {'resuming' if resume else 'training'}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        args.workdir.mkdir(parents=True, exist_ok=True)
        if subprocess.run(cmd, cwd=args.workdir, env=env).returncode:
            raise RecipeError(f"stage {stage.output} ({stage.config_path}) failed; its output is above\n"
                              f"  fix: correct the cause and rerun the same command: finished stages are skipped "
                              f"and {folder} resumes from its last checkpoint")
    if any((args.workdir / s.run_dir / "train_log.csv").is_file() for s in stages):
        print(summary(stages, args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
