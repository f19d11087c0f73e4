"""The linear probe of the SAM embedding (evfbench.probe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evfbench.data import load_split
from evfbench.prep.shapes import build_shapes
from evfbench.probe import ProbeError, attribute, fit_probe, main
from evfbench.registry import get_split
from evfbench.train import TrainConfig, train
from model_fixtures import spm_folder  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    build_shapes(root, n_images={"train": 8, "val": 4, "testA": 2, "testB": 2}, seed=0, progress=False)
    return root


def test_fit_probe_reads_a_linearly_coded_label_and_misses_an_unseen_one() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    coded = torch.nn.functional.one_hot(labels, 3).float() * 4 + torch.randn(90, 3, generator=generator)
    features = torch.cat([coded, torch.randn(90, 5, generator=generator)], 1)  # and 5 dimensions of noise
    right = fit_probe(features[:60], labels[:60], features[60:], labels[60:], classes=3)
    assert right.all()
    unseen = labels[60:].clone()
    unseen[:4] = -1  # a value the train objects never have
    assert not fit_probe(features[:60], labels[:60], features[60:], unseen, classes=3)[:4].any()
    shuffled = labels[torch.randperm(90, generator=generator)]
    chance = fit_probe(features[:60], shuffled[:60], features[60:], shuffled[60:], classes=3).float().mean()
    assert chance < 0.7  # labels the features do not hold are not read


def test_probe_reads_a_stage_one_run_and_the_text_stage_after_it(data_root: Path, tmp_path: Path) -> None:
    base = dict(model="evf_sam_tiny", tokenizer_vocab=60, data=["shapes"], data_root=str(data_root), precision="fp32",
                cache=True, steps=2, global_batch=2, per_device_batch=2, log_every=1, checkpoint_every=100, seed=0)
    train(TrainConfig(**base, stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"]),
          tmp_path / "boxes", progress=False)
    train(TrainConfig(**base, stage="text", sam_checkpoint=str(tmp_path / "boxes" / "model")), tmp_path / "text",
          progress=False)
    results = {}
    for run in ("boxes", "text"):
        out = tmp_path / f"{run}.json"
        assert main(["--run", str(tmp_path / run), "--data-root", str(data_root), "--by", "size", "--train-limit", "8",
                     "--val-limit", "4", "--output", str(out)]) == 0
        results[run] = json.loads(out.read_text())
    val = load_split(get_split("shapes_val"), data_root)[:4]
    assert results["boxes"]["val_objects"] == sum(len(g.annotations) for g in val)
    assert set(results["boxes"]["accuracy"]) == {"category", "color", "size"}
    assert all(0 <= acc <= 100 for acc in results["boxes"]["accuracy"].values())
    sizes = {a.attributes["size"] for g in val for a in g.annotations.values()}
    assert set(results["boxes"]["accuracy_by_size"]["category"]) == sizes
    assert results["text"] == results["boxes"]  # the text stage kept the SAM encoder frozen


def test_probe_errors_name_the_fix(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   spm_folder: Path) -> None:
    assert main(["--data-root", str(data_root)]) == 2
    assert "give exactly one of --model" in capsys.readouterr().err
    assert main(["--run", str(tmp_path), "--data-root", str(data_root)]) == 2
    assert f"{tmp_path / 'config.yaml'} does not exist" in capsys.readouterr().err
    assert main(["--model", "evf_sam_tiny", "--model-args", f"tokenizer={spm_folder}", "--attributes", "center",
                 "--data-root", str(data_root), "--train-limit", "8", "--val-limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "has center = [" in err and "a measurement, not a class" in err
    ann = next(iter(load_split(get_split("shapes_val"), data_root)[0].annotations.values()))
    with pytest.raises(ProbeError, match=r"has no attribute 'shade' \(it records \[.*'color'.*'size'.*\]\)\n  fix: probe category"):
        attribute(ann, "shade", "shapes_val")


def test_probe_reads_the_derived_hidden_attribute(data_root: Path) -> None:
    anns = [a for g in load_split(get_split("shapes_val"), data_root) for a in g.annotations.values()]
    assert {attribute(a, "hidden", "shapes_val") for a in anns} <= {"whole", "slightly", "partly"}
    assert all(attribute(a, "hidden", "shapes_val") == "whole" for a in anns if a.area == a.attributes["full_area"])
