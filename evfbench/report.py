"""Comparison tables from evaluation results, with published numbers beside measured ones.

    python -m evfbench.report --results runs/demo --layout shapes --output-dir reports/shapes
    python -m evfbench.report --results runs --layout refcoco --published tab2_res_sota,tab6_foundation
    python -m evfbench.report --results runs/x --layout shapes --by kind,attribute --data-root DATA

Rows are models, columns the splits of a layout plus their average, cells percentages with
one decimal as in the paper. Measured rows come from ``results.json`` files; published rows
from ``registry/published/*.yaml`` and are marked with their source, so nobody mistakes a
number copied from a paper for one measured here. Every table states the metric convention.
Writes ``<output-dir>/{ciou,giou}.{csv,md,tex}`` and a ``README.md`` that stitches them.
``--by`` also splits the ``shapes_val`` runs by the grammar rule of each sentence (``kind``:
``by_kind.{csv,md}``) and their "attribute" sentences by the attributes they name
(``attribute``: ``by_attribute.{csv,md}``): where a model's errors are, which one average hides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from evfbench.cards import model_cards, published_tables
from evfbench.errors import EvfbenchError, cli
from evfbench.io import atomic_write_text
from evfbench.metrics import CONVENTION
from evfbench.prep import shapes
from evfbench.results import RESULTS, iter_samples, load_results

LAYOUTS: dict[str, list[str]] = {
    # the paper's Tab.2 / Tab.6 column order
    "refcoco": ["refcoco_val", "refcoco_testA", "refcoco_testB", "refcoco+_val", "refcoco+_testA",
                "refcoco+_testB", "refcocog_val", "refcocog_test"],
    # Tab.3 / Tab.4 / Tab.5: RefCOCO testA only
    "testA": ["refcoco_testA"],
    "shapes": ["shapes_val", "shapes_testA", "shapes_testB"],
}
METRICS = {"ciou": "cIoU", "giou": "gIoU"}
MEASURED = "measured"


def measured_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Long form: one row per (model, split) with every metric."""
    rows = []
    for r in results:
        card = model_cards().get(r["model"].partition(".")[0])
        rows.append({
            "model": r["model"],
            "split": r["split"],
            "group": card.group if card else "model",
            "uses_ground_truth": r.get("uses_ground_truth", False),
            "n_sentences": r["n_sentences"],
            **r["metrics"],
        })
    if not rows:
        return pd.DataFrame(columns=["model", "split", "group", "uses_ground_truth", "n_sentences", *METRICS])
    return pd.DataFrame(rows)


def measured_table(long: pd.DataFrame, columns: list[str], metric: str) -> pd.DataFrame:
    """Wide form: rows = models, columns = ``columns`` + avg, percentages."""
    sub = long[long["split"].isin(columns)]
    if sub.empty:
        return pd.DataFrame(columns=["model", "source", *columns, "avg"])
    wide = sub.pivot_table(index="model", columns="split", values=metric, aggfunc="first") * 100
    wide = wide.reindex(columns=columns)
    # an average only over a full row: a partial one would not be comparable with the paper's AVG
    wide["avg"] = wide[columns].mean(axis=1, skipna=False)
    order = long.drop_duplicates("model").set_index("model")
    gt = order["uses_ground_truth"].reindex(wide.index).fillna(False).astype(bool)
    wide.insert(0, "source", [f"{MEASURED} (reads ground truth)" if g else MEASURED for g in gt])
    # reference rows first, in a fixed order, then the models by their average
    rank = order["group"].reindex(wide.index).map({"reference": 0}).fillna(1)
    wide = wide.assign(_rank=rank.values, _avg=wide["avg"].fillna(-1).values)
    wide = wide.sort_values(["_rank", "_avg"], ascending=[True, False]).drop(columns=["_rank", "_avg"])
    return wide.reset_index()


def published_table(names: list[str], columns: list[str]) -> pd.DataFrame:
    """Rows of the published cards whose columns overlap the layout's."""
    tables = published_tables()
    rows = []
    for name in names:
        if name not in tables:
            raise EvfbenchError(f"no published card '{name}' in registry/published/ (have: {', '.join(tables)})")
        card = tables[name]
        for row in card["rows"]:
            values = row.get("values") or {}
            if not any(values.get(c) is not None for c in columns):
                continue
            cells = {c: values.get(c) for c in columns}
            avg = values.get("avg") if len(columns) > 1 else cells[columns[0]]
            rows.append({"model": row["model"], "source": f"published, {card['table']}", **cells, "avg": avg})
    return pd.DataFrame(rows, columns=["model", "source", *columns, "avg"])


def _markdown(pretty: pd.DataFrame) -> str:
    """Numbers right-aligned, kept exactly as formatted (no re-parsing by tabulate)."""
    align = ["left", "left"] + ["right"] * (len(pretty.columns) - 2)
    return pretty.to_markdown(index=False, disable_numparse=True, colalign=align)


def _format(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns[2:]:
        out[c] = out[c].map(lambda v: "-" if pd.isna(v) else f"{float(v):.1f}")
    return out


def write_tables(
    results_dirs: list[Path],
    output_dir: Path,
    layout: str,
    published: list[str],
    title: str | None = None,
    note: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Build and write the tables; returns them keyed by metric."""
    if layout not in LAYOUTS:
        raise EvfbenchError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    columns = LAYOUTS[layout]
    results = [r for d in results_dirs for r in load_results(d)]
    if not results:
        raise EvfbenchError(
            f"no results.json under {', '.join(map(str, results_dirs))}\n"
            "  fix: run python -m evfbench.run first, or point --results at its --output-dir"
        )
    long = measured_frame(results)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "measured_long.csv", long.sort_values(["model", "split"]).to_csv(index=False))
    tables: dict[str, pd.DataFrame] = {}
    sections = [f"# {title or f'Results: {layout} layout'}", "",
                f"Metric convention: {CONVENTION}.", "",
                "Cells are percentages. `measured` rows were computed by evfbench from `results.json`; "
                "rows marked `reads ground truth` are reference bounds, not models; `published` rows are "
                "copied from the paper's tables (registry/published/) and were not measured here. "
                "AVG is shown only when every column of the row is present.", ""]
    if note:
        sections += [note, ""]
    for metric, label in METRICS.items():
        table = measured_table(long, columns, metric)
        if metric == "ciou" and published:  # papers report cIoU; their gIoU columns are sparse
            table = pd.concat([table, published_table(published, columns)], ignore_index=True)
        tables[metric] = table
        pretty = _format(table)
        atomic_write_text(output_dir / f"{metric}.csv", table.to_csv(index=False, float_format="%.4f"))
        atomic_write_text(output_dir / f"{metric}.md", _markdown(pretty) + "\n")
        atomic_write_text(output_dir / f"{metric}.tex", pretty.to_latex(index=False, escape=True))
        sections += [f"## {label}", "", _markdown(pretty), ""]
    galleries = sorted(output_dir.glob("gallery_*.png"))
    if galleries:
        sections += ["## Galleries", ""] + [f"![{g.stem}]({g.name})" for g in galleries] + [""]
    atomic_write_text(output_dir / "README.md", "\n".join(sections))
    return tables


def breakdown(run_dirs: list[Path], labels: dict[int, str]) -> pd.DataFrame:
    """cIoU (%) of each finished run per sentence label (e.g. the grammar rule of a shapes
    sentence), plus a ``sentences`` row: where a model's errors are, which one average hides.

    ``labels`` maps ``sent_id`` to its label; a sentence without one is an error (the labels
    belong to another corpus or seed)."""
    rows, counts = [], None
    for folder in run_dirs:
        meta = json.loads((Path(folder) / RESULTS).read_text(encoding="utf-8"))
        frame = pd.DataFrame(
            [(r["sent_id"], r["intersection"], r["union"]) for r in iter_samples(folder)],
            columns=["sent_id", "intersection", "union"],
        )
        frame["label"] = frame["sent_id"].map(labels)
        if frame["label"].isna().any():
            missing = frame.loc[frame["label"].isna(), "sent_id"].head(3).tolist()
            raise EvfbenchError(f"{folder}: sentences {missing} have no label; the run and the labels come from "
                                "different corpora\n  fix: rerun the evaluation on the current data")
        if rows and meta["split"] != rows[0]["split"]:
            raise EvfbenchError(f"{folder}: split {meta['split']}, but {rows[0]['model']} was run on {rows[0]['split']}; "
                                "a breakdown compares runs of one split\n  fix: pass the runs of one split")
        sums = frame.groupby("label")[["intersection", "union"]].sum()
        rows.append({"model": meta["model"], "split": meta["split"],
                     **(100 * sums["intersection"] / sums["union"].clip(lower=1)).to_dict()})
        counts = frame.groupby("label").size().to_dict()
    if not rows:
        raise EvfbenchError("breakdown: no runs given")
    table = pd.DataFrame(rows + [{"model": "sentences", "split": rows[0]["split"], **counts}])
    order = sorted(counts, key=lambda k: -counts[k])
    return table[["model", "split", *order]]


def breakdown_markdown(table: pd.DataFrame) -> str:
    """A :func:`breakdown` table in markdown: cIoU with one decimal, sentence counts whole."""
    pretty = table.copy()
    for c in pretty.columns[2:]:
        pretty[c] = [f"{v:.0f}" if m == "sentences" else f"{v:.1f}" for m, v in zip(pretty["model"], pretty[c])]
    return _markdown(pretty)


def write_breakdown(table: pd.DataFrame, output_dir: Path, name: str, title: str) -> None:
    """``<name>.csv`` and ``<name>.md`` of a :func:`breakdown` table."""
    atomic_write_text(output_dir / f"{name}.csv", table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(output_dir / f"{name}.md", f"# {title}\n\n{breakdown_markdown(table)}\n")


BREAKDOWNS: dict[str, tuple[str, str]] = {  # --by: file name, title
    "kind": ("by_kind", "cIoU (%) on shapes_val per sentence kind (data_prep/shapes.md, Grammar)"),
    "attribute": ("by_attribute", "cIoU (%) on shapes_val 'attribute' sentences by the attributes they name "
                                  "(size, colour, category)"),
}


def write_breakdowns(results: list[Path], output_dir: Path, by: list[str], data_root: Path | None) -> list[pd.DataFrame]:
    """The ``--by`` tables of every ``*__shapes_val`` run under ``results``, written to ``output_dir``."""
    unknown = sorted(set(by) - set(BREAKDOWNS))
    if unknown:
        raise EvfbenchError(f"--by {','.join(unknown)}: unknown; known: {','.join(BREAKDOWNS)}")
    runs = sorted(d for r in results for d in Path(r).glob("*__shapes_val") if (d / RESULTS).is_file())
    if not runs:
        raise EvfbenchError(f"--by needs shapes_val runs; none under {', '.join(map(str, results))}\n"
                            "  fix: python -m evfbench.run --split shapes_val --output-dir <one of them>")
    labels = {"kind": shapes.sentence_kinds, "attribute": shapes.attribute_words}
    tables = []
    for name in by:
        table = breakdown(runs, labels[name](data_root))
        write_breakdown(table, output_dir, *BREAKDOWNS[name])
        tables.append(table)
    return tables


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evfbench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, nargs="+", default=[Path("runs")],
                   help="folders holding <model>__<split>/results.json (default: runs)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="refcoco")
    p.add_argument("--published", default="", help="published cards to show beside, comma-separated "
                   "(e.g. tab2_res_sota,tab6_foundation; see registry/published)")
    p.add_argument("--output-dir", type=Path, default=Path("reports"))
    p.add_argument("--title", default=None)
    p.add_argument("--note", default=None, help="a paragraph for the README (e.g. how to regenerate)")
    p.add_argument("--by", default="", help="also break the shapes_val runs down by sentence kind and/or by the "
                   f"attributes an 'attribute' sentence names, comma-separated ({','.join(BREAKDOWNS)})")
    p.add_argument("--data-root", type=Path, default=None, help="the shapes corpus the runs were evaluated on (--by)")
    args = p.parse_args(argv)
    by = [b for b in args.by.split(",") if b]
    parts = write_breakdowns(args.results, args.output_dir, by, args.data_root) if by else []
    tables = write_tables(args.results, args.output_dir, args.layout,
                          [n for n in args.published.split(",") if n], args.title, args.note)
    print(f"cIoU (%), {args.layout} layout; convention: EVF-SAM/LISA (see {args.output_dir / 'README.md'})\n")
    print(_markdown(_format(tables["ciou"])))
    print(f"\nwrote {args.output_dir}/{{ciou,giou}}.{{csv,md,tex}} and README.md")
    for name, table in zip(by, parts):
        file, title = BREAKDOWNS[name]
        print(f"\n{title}\n\n{breakdown_markdown(table)}\nwrote {args.output_dir / file}.{{csv,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
