"""make demo (python -m evfbench.demo), the main job: on a fresh corpus it regenerates the
committed tables of reports/shapes, and the shipped early-fusion model reads the text."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evfbench import demo
from evfbench.cards import registry_root

COMMITTED = registry_root().parent / "reports" / "shapes"


@pytest.mark.slow
def test_demo_regenerates_the_committed_tables(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    assert demo.main(["--data-root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                      "--reports", str(reports)]) == 0
    for name in ("ciou", "giou", "by_kind", "by_attribute", "outcomes"):
        fresh = pd.read_csv(reports / f"{name}.csv").set_index("model")
        committed = pd.read_csv(COMMITTED / f"{name}.csv").set_index("model")
        # the same rows and columns, and numbers equal up to float noise between CPUs
        pd.testing.assert_frame_equal(fresh, committed, check_exact=False, atol=0.05, check_dtype=False)
    assert all((reports / f"gallery_{s}.png").is_file() for s in demo.SPLITS)
    ciou = pd.read_csv(reports / "ciou.csv").set_index("model")
    assert ciou.loc["evf_sam_tiny.shapes", "shapes_val"] > ciou.loc["all_objects", "shapes_val"] + 20
