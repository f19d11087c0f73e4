"""python -m evfbench.recipe: the links between stages are checked before anything runs, the shipped
recipes link up, and a chain runs, skips its finished stages and resumes an unfinished one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from evfbench import recipe
from evfbench.cards import registry_root
from evfbench.prep import shapes
from evfbench.prep.shapes import build_shapes
from evfbench.train import TrainConfig

BOXES = dict(stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"])


def write_recipe(folder: Path, stages: dict[str, TrainConfig]) -> Path:
    """One config file per stage and a recipe.yaml listing them in order."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in stages.items():
        (folder / f"{name}.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"config": f"{n}.yaml", "output": n} for n in stages]}), encoding="utf-8")
    return path


def tiny(**overrides) -> TrainConfig:
    base = dict(model="evf_sam_tiny", tokenizer_vocab=60, data=["shapes"], precision="fp32", cache=True, steps=2,
                global_batch=2, per_device_batch=2, log_every=1, checkpoint_every=100, seed=0, lr=1e-3)
    return TrainConfig(**{**base, **overrides})


def test_links_are_checked_before_anything_runs(tmp_path: Path) -> None:
    boxes = tiny(**BOXES, steps=4, checkpoint_every=2, keep_checkpoints=1)
    stale = write_recipe(tmp_path / "a", {"s1": boxes, "s2": tiny(init="runs/s1/checkpoints/step-000002")})
    with pytest.raises(recipe.RecipeError, match=r"(?s)keeps the checkpoints of steps \[4\], not step-000002.*step-000004"):
        recipe.load(stale)
    kept = write_recipe(tmp_path / "b", {"s1": tiny(**BOXES, steps=4, checkpoint_every=2, keep_checkpoints=2),
                                         "s2": tiny(init="runs/s1/checkpoints/step-000002")})
    assert [s.output for s in recipe.load(kept)] == ["s1", "s2"]
    backwards = write_recipe(tmp_path / "c", {"s2": tiny(sam_checkpoint="runs/s1/model"), "s1": boxes})
    with pytest.raises(recipe.RecipeError, match="names no earlier stage"):
        recipe.load(backwards)
    (tmp_path / "c" / "s1.yaml").unlink()
    with pytest.raises(recipe.RecipeError, match="s1.yaml does not exist"):
        recipe.load(backwards)
    with pytest.raises(recipe.RecipeError, match="no recipe .*nowhere'"):
        recipe.resolve(str(tmp_path / "nowhere"))


def test_the_corpus_a_recipe_names_must_be_under_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(shapes.SCALES, "default", {"train": 3, "val": 1, "testA": 1, "testB": 1})
    build_shapes(tmp_path / "small", progress=False)
    build_shapes(tmp_path / "big", shapes.n_images_for(train_images=5), progress=False)
    path = write_recipe(tmp_path / "recipe", {"s1": tiny(**BOXES)})
    path.write_text(path.read_text() + "corpus: {shapes: {train_images: 5}}\n", encoding="utf-8")
    argv = [str(path), "--workdir", str(tmp_path / "work")]
    assert recipe.main(argv + ["--data-root", str(tmp_path / "small")]) == 2  # nothing trained on the wrong corpus
    err = capsys.readouterr().err
    assert "prep shapes --train-images 5" in err and "fix: python -m evfbench.prep shapes --data-root NEW_ROOT" in err
    assert "scale default, with 3 / 1 / 1 / 1 images in train / val / testA / testB" in err
    assert not (tmp_path / "work").exists()
    assert recipe.main(argv + ["--data-root", str(tmp_path / "small"), "--dry-run"]) == 0
    assert "note: " in capsys.readouterr().out
    assert recipe.main(argv + ["--data-root", str(tmp_path / "big"), "--dry-run"]) == 0
    assert "note: " not in capsys.readouterr().out
    path.write_text(path.read_text().replace("train_images: 5", "images: 5"), encoding="utf-8")
    with pytest.raises(recipe.RecipeError, match="'corpus' must be"):
        recipe.corpus(path)


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (registry_root() / "weights").glob("*/recipe.yaml")))
def test_shipped_recipes_link_up_and_end_with_the_shipped_config(folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    stages = recipe.load(recipe.resolve(folder))
    assert stages[-1].config_path.parent == registry_root() / "weights" / folder
    assert recipe.main([folder, "--dry-run", "--workdir", "nowhere"]) == 0
    out = capsys.readouterr().out
    assert all(f"--output-dir runs/{s.output}" in out for s in stages)


def test_the_three_shipped_models_have_recipes() -> None:
    names = {p.parent.name for p in (registry_root() / "weights").glob("*/recipe.yaml")}
    assert {"evf_sam_tiny_shapes", "evf_sam_tiny_text_shapes", "evf_sam_tiny_late_shapes"} <= names


@pytest.mark.slow
def test_a_chain_runs_skips_finished_stages_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    build_shapes(data, n_images={"train": 4, "val": 2, "testA": 1, "testB": 1}, seed=0, progress=False)
    path = write_recipe(tmp_path / "recipe", {"s1": tiny(**BOXES), "s2": tiny(sam_checkpoint="runs/s1/model")})
    work = tmp_path / "work"
    argv = [str(path), "--workdir", str(work), "--data-root", str(data), "--nproc", "1"]
    assert recipe.main(argv) == 0
    s1, s2 = work / "runs/s1/model/sam.safetensors", work / "runs/s2/model/model.safetensors"
    assert s1.is_file() and s2.is_file()
    out = capsys.readouterr().out
    assert "[1/2] s1: training" in out and "[2/2] s2: training" in out and "total" in out

    first = s1.stat().st_mtime_ns
    shutil.rmtree(work / "runs/s2/model")  # as if stopped after its last checkpoint
    assert recipe.main(argv + ["--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] s1: done" in out and "[2/2] s2: resuming" in out
    assert s1.stat().st_mtime_ns == first and s2.is_file()

    assert recipe.main(argv + ["--seed", "1"]) == 2  # finished runs of another seed are not built on
    assert "seed: was 0, the stage asks 1" in capsys.readouterr().err
