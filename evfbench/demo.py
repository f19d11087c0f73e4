"""The main job on the embedded default: ``make demo`` runs this.

1. build the synthetic ``shapes`` benchmark (refer layout; skipped when already built);
2. evaluate the reference rows and every model whose card ships trained ``shapes`` weights
   on shapes val/testA/testB (resumable: a rerun only does what is missing, and redoes a model
   whose weights changed);
3. write the comparison tables (CSV, markdown, LaTeX), breakdowns of val by sentence kind and by
   the attributes an "attribute" sentence names, what the wrong masks cover
   (:mod:`evfbench.outcomes`), and overlay galleries to ``reports/shapes``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evfbench import gallery, outcomes, report, run
from evfbench.cards import model_cards, registry_root
from evfbench.data import default_data_root
from evfbench.errors import cli
from evfbench.prep import shapes
from evfbench.registry import model_args

SPLITS = ["shapes_val", "shapes_testA", "shapes_testB"]
REFERENCE_ROWS = ["oracle", "empty", "box", "all_objects", "largest"]
NOTE = ("Regenerate with `make demo` (`python -m evfbench.demo`): it builds the corpus with "
        "`python -m evfbench.prep shapes` (seed 0), evaluates the reference rows and every model card's "
        "`shapes` weights with `python -m evfbench.run`, and writes this folder. `all_objects` and `largest` "
        "ignore the text: a model that reads the expression must beat them by a wide margin. "
        "[by_kind.md](by_kind.md) splits shapes_val by the grammar rule of each sentence, "
        "[by_attribute.md](by_attribute.md) its 'attribute' sentences by the words that name the target, "
        "[outcomes.md](outcomes.md) what each model's masks cover on shapes_val when they are wrong "
        "(the target and other objects, another object, ...).")


def trained_models() -> list[str]:
    """``arch.shapes`` for every card whose ``shapes`` tag ships trained weights."""
    names = []
    for card in model_cards().values():
        if "shapes" in card.tags:
            weights = model_args(f"{card.name}.shapes").get("weights")
            if weights and Path(weights).exists():
                names.append(f"{card.name}.shapes")
    return sorted(names)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evfbench.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--runs", type=Path, default=Path("runs/demo"))
    p.add_argument("--reports", type=Path, default=Path("reports/shapes"))
    args = p.parse_args(argv)
    data_root = args.data_root or default_data_root()
    if shapes.main(["shapes", "--data-root", str(data_root)]):
        return 1
    models = REFERENCE_ROWS + trained_models()
    run.run(models, SPLITS, data_root=data_root, output_dir=args.runs, resume=True, refresh=True, save_masks=True)
    for split in SPLITS:
        out = args.reports / f"gallery_{split}.png"
        runs = [args.runs / f"{m}__{split}" for m in models if m not in {"empty", "all_objects"}]
        gallery.render_gallery(runs, split, out, data_root, n=6)
        print(f"wrote {out}")
    table = outcomes.outcome_table([args.runs / f"{m}__shapes_val" for m in models if m != "oracle"], "shapes_val", data_root)
    for path in outcomes.write_outcomes(table, args.reports, "shapes_val"):
        print(f"wrote {path}")
    trained = [f"`{m}`: {Path(model_args(m)['weights']).relative_to(registry_root().parent)}/TRAINING.md"
               for m in models if m not in REFERENCE_ROWS]
    note = NOTE + ("\n\nTraining time, command, seed and logs of each trained model: " + "; ".join(trained)
                   if trained else "")
    return report.main(["--results", str(args.runs), "--layout", "shapes", "--output-dir", str(args.reports),
                        "--title", "shapes benchmark (embedded default)", "--note", note,
                        "--by", "kind,attribute", "--data-root", str(data_root)])


if __name__ == "__main__":
    sys.exit(main())
