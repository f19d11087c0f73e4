"""The evaluator end to end on a small generated corpus in the refer layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evfbench import run as run_module
from evfbench.data.images import ImageError
from evfbench.models.reference import Box
from evfbench.prep.shapes import build_shapes
from evfbench.run import RunError, main, run

SPLIT = "shapes_val"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    build_shapes(root, n_images={"train": 2, "val": 10, "testA": 3, "testB": 3}, seed=0, progress=False)
    return root


def _read(folder: Path) -> tuple[dict, list[dict]]:
    results = json.loads((folder / "results.json").read_text())
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return results, samples


def test_reference_rows(data_root: Path, tmp_path: Path) -> None:
    out = run(["oracle", "empty", "box"], [SPLIT], data_root=data_root, output_dir=tmp_path)
    metrics = {r["model"]: r["metrics"] for r in out}
    assert metrics["oracle"] == {"ciou": 1.0, "giou": 1.0, "p@0.5": 1.0, "p@0.6": 1.0, "p@0.7": 1.0,
                                 "p@0.8": 1.0, "p@0.9": 1.0}
    assert metrics["empty"]["ciou"] == 0.0 and metrics["empty"]["giou"] == 0.0
    assert 0.0 < metrics["box"]["ciou"] < 1.0 and 0.0 < metrics["box"]["giou"] < 1.0

    results, samples = _read(tmp_path / f"box__{SPLIT}")
    assert results["n_sentences"] == len(samples) == sum(1 for _ in samples)
    assert results["convention"].startswith("evf_sam/lisa")
    assert {"torch", "numpy", "python"} <= set(results["versions"])
    assert results["card"]["dataset"] == "shapes" and results["uses_ground_truth"] is True
    # cIoU is recomputed exactly from the per-sentence integers
    assert results["metrics"]["ciou"] == sum(s["intersection"] for s in samples) / sum(s["union"] for s in samples)
    assert results["metrics"]["giou"] == pytest.approx(np.mean([s["iou"] for s in samples]))
    assert set(samples[0]) == {"sent_id", "ref_id", "image_id", "text", "intersection", "union", "iou"}


class CrashAfter(Box):
    """Box that dies on its n-th image, like a run killed half-way."""

    calls = 0

    def __init__(self, crash_at: int | None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.crash_at = crash_at

    def predict(self, image: np.ndarray, group) -> np.ndarray:  # type: ignore[no-untyped-def]
        type(self).calls += 1
        if self.crash_at is not None and type(self).calls == self.crash_at:
            raise KeyboardInterrupt("killed")
        return super().predict(image, group)


def test_resume_after_interruption_is_identical(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    reference = run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path / "whole", save_masks=True)[0]

    monkeypatch.setattr(run_module, "create_model", lambda name, **kw: CrashAfter(crash_at=4, **kw))
    CrashAfter.calls = 0
    with pytest.raises(KeyboardInterrupt):
        run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path / "cut", save_masks=True)
    folder = tmp_path / "cut" / f"box__{SPLIT}"
    part = folder / "samples.rank0.jsonl"
    finished = part.read_text().splitlines()
    assert len(finished) > 0 and not (folder / "results.json").exists()
    with part.open("a") as f:  # a torn write at the moment of the crash
        f.write('{"sent_id": 99999, "inter')

    with pytest.raises(RunError, match="--resume"):
        run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path / "cut", save_masks=True)

    CrashAfter.calls = 0
    monkeypatch.setattr(run_module, "create_model", lambda name, **kw: CrashAfter(crash_at=None, **kw))
    resumed = run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path / "cut", save_masks=True,
                  resume=True)[0]
    assert CrashAfter.calls == 10 - 3  # the three finished images were not recomputed
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["n_scored_this_run"] == reference["n_sentences"] - len(finished)
    assert (folder / "samples.jsonl").read_text() == (tmp_path / "whole" / f"box__{SPLIT}" / "samples.jsonl").read_text()
    assert not part.exists()


def test_resume_refuses_other_settings(data_root: Path, tmp_path: Path) -> None:
    run(["empty"], [SPLIT], data_root=data_root, output_dir=tmp_path, limit=5)
    with pytest.raises(RunError, match="different settings.*limit"):
        run(["empty"], [SPLIT], data_root=data_root, output_dir=tmp_path, limit=6, resume=True)
    again = run(["empty"], [SPLIT], data_root=data_root, output_dir=tmp_path, limit=6, overwrite=True)[0]
    assert again["n_sentences"] == 6


def test_finished_run_resumes_without_building_the_model(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    first = run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path)[0]
    monkeypatch.setattr(run_module, "create_model", lambda *a, **k: pytest.fail("model rebuilt"))
    again = run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path, resume=True)[0]
    assert again["metrics"] == first["metrics"] and again["n_scored_this_run"] == 0


def test_changed_weights_are_another_run(data_root: Path, tmp_path: Path) -> None:
    """A card's weights can change under the same name (new shipped weights): a resumed run
    refuses them, and a refreshing one (make demo) scores again instead of keeping stale numbers."""
    from evfbench.registry import model_args

    weights = tmp_path / "weights"
    shutil.copytree(model_args("evf_sam_tiny.shapes")["weights"], weights)
    args = {"weights": str(weights)}
    first = run(["evf_sam_tiny.shapes"], [SPLIT], data_root=data_root, output_dir=tmp_path / "runs", model_args=args)[0]
    assert first["weights_sha256"] == run_module.weights_sha256("evf_sam_tiny.shapes", args)
    (weights / "TRAINING.md").write_text("notes change nothing")  # not a weights file
    again = run(["evf_sam_tiny.shapes"], [SPLIT], data_root=data_root, output_dir=tmp_path / "runs", model_args=args,
                resume=True, refresh=True)[0]
    assert again["n_scored_this_run"] == 0
    config = json.loads((weights / "tokenizer_config.json").read_text())
    (weights / "tokenizer_config.json").write_text(json.dumps(config, indent=4))  # same tokenizer, other bytes
    with pytest.raises(RunError, match="different settings.*weights_sha256"):
        run(["evf_sam_tiny.shapes"], [SPLIT], data_root=data_root, output_dir=tmp_path / "runs", model_args=args,
            resume=True)
    fresh = run(["evf_sam_tiny.shapes"], [SPLIT], data_root=data_root, output_dir=tmp_path / "runs", model_args=args,
                resume=True, refresh=True)[0]
    assert fresh["n_scored_this_run"] == fresh["n_sentences"] and fresh["metrics"] == first["metrics"]
    assert fresh["weights_sha256"] != first["weights_sha256"]


def test_limit_cuts_inside_an_image(data_root: Path, tmp_path: Path) -> None:
    out = run(["oracle"], [SPLIT], data_root=data_root, output_dir=tmp_path, limit=4)[0]
    assert out["n_sentences"] == 4
    _, samples = _read(tmp_path / f"oracle__{SPLIT}")
    assert len(samples) == 4


def test_missing_image_names_the_file_and_keeps_finished_work(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    from evfbench.data import load_split
    from evfbench.registry import get_split

    groups = load_split(get_split(SPLIT), root)
    victim = groups[5].path
    victim.unlink()
    with pytest.raises(ImageError, match=str(victim.name)):
        run(["box"], [SPLIT], data_root=root, output_dir=tmp_path / "out")
    part = tmp_path / "out" / f"box__{SPLIT}" / "samples.rank0.jsonl"
    assert len(part.read_text().splitlines()) == sum(len(g.samples) for g in groups[:5])

    victim.write_bytes(b"not a png")
    with pytest.raises(ImageError, match=f"(?s)cannot decode image .*{victim.name}.*download it again"):
        run(["box"], [SPLIT], data_root=root, output_dir=tmp_path / "out", resume=True)

    shutil.copy(data_root / victim.relative_to(root), victim)
    done = run(["box"], [SPLIT], data_root=root, output_dir=tmp_path / "out", resume=True)[0]
    assert done["metrics"] == run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path / "ref")[0]["metrics"]


def test_predictions_model_scores_saved_masks(data_root: Path, tmp_path: Path) -> None:
    box = run(["box"], [SPLIT], data_root=data_root, output_dir=tmp_path, save_masks=True)[0]
    _, samples = _read(tmp_path / f"box__{SPLIT}")
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"sent_id": s["sent_id"], "segmentation": s["segmentation"]}) + "\n"
                             for s in samples))
    scored = run(["predictions"], [SPLIT], data_root=data_root, output_dir=tmp_path,
                 model_args={"path": str(preds)})[0]
    assert scored["metrics"] == box["metrics"]


def test_cli_errors_are_messages(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "box", "--split", "shapes_vall", "--data-root", str(data_root),
                 "--output-dir", str(tmp_path)]) == 2
    assert "Did you mean 'shapes_val'" in capsys.readouterr().err
    assert main(["--model", "bx", "--split", SPLIT, "--data-root", str(data_root),
                 "--output-dir", str(tmp_path)]) == 2
    assert "Did you mean 'box'" in capsys.readouterr().err
    assert main(["--model", "box", "--split", SPLIT, "--data-root", str(tmp_path / "nowhere"),
                 "--output-dir", str(tmp_path)]) == 2
    assert "prep shapes" in capsys.readouterr().err
    assert main(["--model", "box", "--split", SPLIT, "--data-root", str(data_root), "--output-dir",
                 str(tmp_path), "--model-args", "colour=red"]) == 2
    assert "cannot take the arguments" in capsys.readouterr().err


def test_model_args_are_typed() -> None:
    assert run_module.parse_model_args("a=1,b=0.5,c=true,d=/x/y,e=bf16") == {
        "a": 1, "b": 0.5, "c": True, "d": "/x/y", "e": "bf16"}
    with pytest.raises(RunError):
        run_module.parse_model_args("novalue")


def test_torchrun_two_processes_match_one(data_root: Path, tmp_path: Path) -> None:
    single = {r["model"]: r for r in run(["box", "largest"], [SPLIT], data_root=data_root,
                                         output_dir=tmp_path / "one")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "evfbench.run", "--model", "box,largest", "--split", SPLIT,
           "--data-root", str(data_root), "--output-dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model, ref in single.items():
        results, _ = _read(tmp_path / "two" / f"{model}__{SPLIT}")
        assert results["world_size"] == 2
        assert results["metrics"] == ref["metrics"]  # bit-identical, not approximately
        assert (tmp_path / "two" / f"{model}__{SPLIT}" / "samples.jsonl").read_text() == \
            (tmp_path / "one" / f"{model}__{SPLIT}" / "samples.jsonl").read_text()


def test_outputs_are_not_private(data_root: Path, tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (0600); results must be readable like any file."""
    run(["empty"], [SPLIT], data_root=data_root, output_dir=tmp_path, limit=2)
    mode = (tmp_path / f"empty__{SPLIT}" / "results.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
