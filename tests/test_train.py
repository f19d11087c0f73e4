"""python -m evfbench.train on a tiny generated shapes corpus: losses, flips, freezing, resume,
torchrun parity, checkpoints that the registry loads, and the fusion baselines."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
import yaml
from safetensors.torch import load_file

from evfbench import train as train_module
from evfbench.errors import EvfbenchError
from evfbench.feature_store import FeatureStore
from evfbench.models.evf_sam import EvfConfig, build_net
from evfbench.prep.shapes import build_shapes
from evfbench.registry import create_model
from evfbench.train import (
    MODULES, TrainConfig, TrainError, Trainer, build_model, config_from_args, build_parser, mask_losses, read_csv,
    set_trainable, trainable_modules, train,
)
from evfbench.models.tokenizer import BeitTokenizer
from evfbench.train_data import Item, TrainingData, flip_text, semantic_samples, train_tokenizer
from model_fixtures import make_group, random_image, spm_folder  # noqa: F401 (fixture)
from refer_fixtures import write_fixture


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    build_shapes(root, n_images={"train": 8, "val": 4, "testA": 2, "testB": 2}, seed=0, progress=False)
    return root


def tiny_config(data_root: Path, **overrides) -> TrainConfig:
    """``evf_sam_tiny`` (the test architecture) trained from scratch with its own tokenizer."""
    base = dict(model="evf_sam_tiny", tokenizer_vocab=60, data=["shapes"], data_root=str(data_root), precision="fp32",
                cache=True, steps=4, global_batch=2, per_device_batch=2, log_every=1, checkpoint_every=100, seed=0, lr=1e-3)
    return TrainConfig(**{**base, **overrides})


# ---- pieces -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, flipped", [
    ("the leftmost red circle", "the rightmost red circle"),
    ("the square to the left of the star", "the square to the right of the star"),
    ("top right cross", "top left cross"),
    ("Left zebra, right-most one", "Right zebra, left-most one"),
    ("second circle from the right", "second circle from the left"),
    ("bright light on the leftward side", "bright light on the rightward side"),
])
def test_flip_text_swaps_horizontal_words(text: str, flipped: str) -> None:
    assert flip_text(text) == flipped
    assert flip_text(flipped) == text


def test_flip_mirrors_image_masks_and_words(data_root: Path) -> None:
    data = TrainingData(["shapes"], None, data_root)
    group = next(i for i, g in enumerate(data.groups[0]) if any("left" in s.text or "right" in s.text for s in g.samples))
    n = len(data.groups[0][group].samples)
    plain = data.example(Item(0, group, tuple(range(n)), False))
    mirrored = data.example(Item(0, group, tuple(range(n)), True))
    assert np.array_equal(mirrored.image, plain.image[:, ::-1])
    assert np.array_equal(mirrored.masks, plain.masks[:, :, ::-1])
    assert mirrored.texts == [flip_text(t) for t in plain.texts] != plain.texts
    w = plain.image.shape[1]
    for box, mbox in zip(plain.boxes(), mirrored.boxes()):
        assert (mbox[0], mbox[2]) == (w - box[2], w - box[0]) and (mbox[1], mbox[3]) == (box[1], box[3])


def test_global_batch_is_a_function_of_seed_and_step(data_root: Path) -> None:
    data = TrainingData(["shapes", "shapes_train"], [3, 1], data_root)
    a = data.global_batch(seed=1, step=5, size=16, texts_per_image=3, flip_prob=0.5)
    assert a == data.global_batch(seed=1, step=5, size=16, texts_per_image=3, flip_prob=0.5)
    assert a != data.global_batch(seed=1, step=6, size=16, texts_per_image=3, flip_prob=0.5)
    assert all(1 <= len(i.texts) <= 3 and len(set(i.texts)) == len(i.texts) for i in a)
    assert {i.flip for i in a} == {True, False}
    assert not any(i.flip for i in data.global_batch(1, 5, 16, 3, flip_prob=0.0))


def test_semantic_view_prompts_each_category_with_all_its_instances(data_root: Path) -> None:
    plain = TrainingData(["shapes"], None, data_root).groups[0]
    semantic = TrainingData(["shapes:semantic"], None, data_root).groups[0]
    assert [g.image_id for g in semantic] == [g.image_id for g in plain]
    names = {c["id"]: c["name"] for c in json.loads((data_root / "shapes" / "instances.json").read_text())["categories"]}
    for g in semantic:
        assert [s.category_id for s in g.samples] == sorted({a.category_id for a in g.annotations.values()})
        for s in g.samples:
            assert (s.text, s.kind) == (f"[semantic] {names[s.category_id]}", "semantic")
            expected = np.zeros((g.height, g.width), dtype=bool)
            for a in g.annotations.values():
                if a.category_id == s.category_id:
                    expected |= a.mask(g.height, g.width)
            assert np.array_equal(g.target_mask(s), expected)


def test_kind_view_keeps_the_sentences_of_those_kinds(data_root: Path) -> None:
    everything = [s for g in TrainingData(["shapes"], None, data_root).groups[0] for s in g.samples]
    free = [s for g in TrainingData(["shapes:attribute+comparative"], None, data_root).groups[0] for s in g.samples]
    assert free == [s for s in everything if s.kind in ("attribute", "comparative")]
    assert free and len(free) < len(everything)
    with pytest.raises(EvfbenchError, match="no sentence of kind bogus"):
        TrainingData(["shapes:attribute+bogus"], None, data_root)


def test_named_view_keeps_the_attribute_sentences_that_name_those_attributes(data_root: Path) -> None:
    from evfbench.prep.shapes import CATEGORY_IDS, COLORS

    everything = [s for g in TrainingData(["shapes"], None, data_root).groups[0] for s in g.samples]
    colour = [s for g in TrainingData(["shapes:named=colour/size+colour"], None, data_root).groups[0] for s in g.samples]
    assert colour and all(s.kind == "attribute" for s in colour)
    for s in everything:  # kept exactly when it names a colour and no category
        words = set(s.text.split())
        assert (s in colour) == (s.kind == "attribute" and bool(words & set(COLORS)) and not words & set(CATEGORY_IDS))
    with pytest.raises(EvfbenchError, match=r'no "attribute" sentence names colour\+bogus'):
        TrainingData(["shapes:named=colour+bogus"], None, data_root)


def test_a_source_of_weight_zero_gives_only_its_words(data_root: Path) -> None:
    data = TrainingData(["shapes:attribute", "shapes"], [1, 0], data_root)
    assert {i.source for step in range(20) for i in data.global_batch(0, step, 8, 3, 0.5)} == {0}
    assert set(data.sentences()) == {s.text for g in data.groups[1] for s in g.samples}  # the tokenizer corpus


def test_views_of_a_refer_dataset(tmp_path: Path) -> None:
    write_fixture(tmp_path)  # refcoco: train split = image 3, one blob (ann 301), no sentence kinds
    (group,) = TrainingData(["refcoco:semantic"], None, tmp_path).groups[0]
    assert [(s.text, s.ann_ids) for s in group.samples] == [("[semantic] blob", (301,))]
    with pytest.raises(EvfbenchError, match="record no kind"):
        TrainingData(["refcoco:attribute"], None, tmp_path)
    with pytest.raises(EvfbenchError, match="the named= view reads the attribute words of the shapes corpus"):
        TrainingData(["refcoco:named=colour"], None, tmp_path)
    with pytest.raises(EvfbenchError, match="does not list"):
        semantic_samples(group, {})


def test_trained_tokenizer_keeps_frequent_words_whole(tmp_path: Path) -> None:
    # a unigram model stopped at ~100 pieces on corpora like this and spelled colours letter
    # by letter ("_b l u e"), which a tiny model trained from scratch must then learn to read
    words = [f"the {size} {colour} {noun}{where}" for size in ("small", "large", "")
             for colour in ("red", "green", "blue", "yellow", "purple", "orange")
             for noun in ("circle", "square", "triangle", "diamond", "star", "cross")
             for where in ("", " on the left", " at the top", " left of the blue triangle")]
    folder = train_tokenizer(words * 3, tmp_path / "tok", vocab_size=120)
    tok = BeitTokenizer.from_folder(folder)
    assert len(tok) > 100
    for sentence in ("the small orange diamond", "the purple cross on the left"):
        assert len(tok.encode(sentence)) == len(sentence.split()) + 2  # <s> one piece per word </s>
    semantic = train_tokenizer(words + ["[semantic] circle", "[semantic] star"], tmp_path / "sem", vocab_size=120)
    spm = sentencepiece.SentencePieceProcessor(model_file=str(semantic / "sentencepiece.bpe.model"))
    assert "[semantic]" in spm.encode("[semantic] star", out_type=str)  # one piece, like the added token


def test_mask_losses_by_hand() -> None:
    # logits 0 -> p = 0.5 everywhere: BCE = log 2; dice from the 1/1000-scaled sums
    target = torch.zeros(4, 5)
    target[:2, :3] = 1  # k = 6 of N = 20 pixels
    bce, dice = mask_losses(torch.zeros(4, 5), target)
    assert bce.item() == pytest.approx(math.log(2))
    k, n, eps = 6, 20, 1e-6
    assert dice.item() == pytest.approx(1 - (2 * 0.5 * k / 1000 + eps) / ((0.5 * n + k) / 1000 + eps), rel=1e-6)
    # confident and right: both ~0; confident and wrong: BCE ~ |logit|, dice ~ 1
    sure = (target * 2 - 1) * 30
    bce, dice = mask_losses(sure, target)
    assert bce.item() < 1e-6 and dice.item() < 1e-6
    bce, dice = mask_losses(-sure, target)
    # every pixel's p is ~1 where t = 0 and ~0 where t = 1: sums 14 (p) + 6 (t), intersection 0
    assert bce.item() == pytest.approx(30, rel=1e-4) and dice.item() == pytest.approx(1 - eps / (20 / 1000 + eps), abs=1e-7)
    # empty target and empty prediction: dice -> 0 thanks to eps (no 0/0)
    bce, dice = mask_losses(torch.full((4, 5), -30.0), torch.zeros(4, 5))
    assert dice.item() < 1e-3


def test_mask_losses_of_a_stack_are_those_of_each_mask() -> None:
    # the trainer scores all the masks of an image at once; each must get what it gets alone
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 7, generator=g) * 4
    target = (torch.rand(3, 6, 7, generator=g) > 0.6).float()
    target[2] = 0  # an empty target among them
    bce, dice = mask_losses(logits, target)
    assert bce.shape == dice.shape == (3,)
    for t in range(3):
        one_bce, one_dice = mask_losses(logits[t], target[t])
        assert one_bce.shape == one_dice.shape == ()
        torch.testing.assert_close((bce[t], dice[t]), (one_bce, one_dice))


@pytest.mark.parametrize("names", [["mask_decoder"], ["mm_encoder", "projector"], list(MODULES)])
def test_freezing_flags_freeze_exactly_the_named_modules(names: list[str]) -> None:
    net = build_net(EvfConfig.create("sam", "test", "test"))
    set_trainable(net, names)
    modules = trainable_modules(net)
    expected = {id(p) for n in names for p in modules[n].parameters()}
    assert expected and {id(p) for p in net.parameters() if p.requires_grad} == expected


def test_cli_config_precedence_and_freeze(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"lr": 3e-4, "steps": 10, "model_args": {"fusion": "late"}}))
    args = build_parser().parse_args(["--config", str(cfg_file), "--output-dir", str(tmp_path), "--steps", "20",
                                      "--freeze", "prompt_encoder", "--model-args", "dtype=fp32"])
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.steps, cfg.global_batch, cfg.weight_decay) == (3e-4, 20, 128, 0.0)
    assert cfg.train == ["mm_encoder", "projector", "mask_decoder"]
    assert cfg.model_args == {"fusion": "late", "dtype": "fp32"}
    boxes = config_from_args(build_parser().parse_args(["--output-dir", str(tmp_path), "--stage", "sam_boxes"]))
    assert boxes.train == ["image_encoder", "prompt_encoder", "mask_decoder"]
    cfg_file.write_text(yaml.safe_dump({"learning_rate": 1}))
    with pytest.raises(TrainError, match="learning_rate"):
        config_from_args(build_parser().parse_args(["--config", str(cfg_file), "--output-dir", str(tmp_path)]))


def test_global_batch_must_split_evenly(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="not a multiple"):
        train(tiny_config(data_root, global_batch=3, per_device_batch=2), tmp_path / "run", progress=False)


# ---- training -----------------------------------------------------------------------------------
def test_overfitting_one_batch_decreases_the_loss(data_root: Path, spm_folder: Path) -> None:
    cfg = tiny_config(data_root, tokenizer=str(spm_folder), tokenizer_vocab=0, train=["mm_encoder", "projector", "mask_decoder"])
    data = TrainingData(cfg.data, None, data_root)
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"), None)
    set_trainable(model.net.train(), cfg.train)
    trainer = Trainer(model, cfg, torch.device("cpu"))
    examples = [data.example(i) for i in data.global_batch(0, 0, 2, 3, 0.0)]
    n_masks = sum(len(e.texts) for e in examples)
    opt = torch.optim.AdamW([p for p in model.net.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss, *_ = trainer(examples)
        (loss / n_masks).backward()
        opt.step()
        losses.append(loss.item() / n_masks)
    assert losses[-1] < 0.7 * losses[0], losses


def test_run_writes_outputs_and_the_registry_loads_the_checkpoint(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(tiny_config(data_root, val_split="shapes_val", eval_every=2, eval_limit=5), out, progress=False)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert set(cfg) == {f.name for f in dataclasses.fields(TrainConfig)} and cfg["lr"] == 1e-3
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,bce,dice,category,grounding,lr,samples_per_s,elapsed_s" and len(log) == 5
    assert (out / "eval_log.csv").read_text().startswith("step,split,ciou,giou,n_sentences\n")
    evals = read_csv(out / "eval_log.csv")
    assert [r["step"] for r in evals if r["split"] == "shapes_val"] == ["2", "4"]
    # shapes records each sentence's kind: a row per kind too, the kinds sharing the 5 sentences
    for step in ("2", "4"):
        kinds = {r["split"]: int(r["n_sentences"]) for r in evals if r["step"] == step and r["split"] != "shapes_val"}
        assert kinds and all(k.startswith("shapes_val/") for k in kinds) and sum(kinds.values()) == 5
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "kinds_curve.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(out / "checkpoints" / "step-000004" / "trainer_state.pt", weights_only=True)
    assert state["step"] == state["data_position"] == 4 and state["accum"] == 1
    # the official layout, loaded strictly (0 missing / unexpected keys) through the registry
    model = create_model("evf_sam_tiny", weights=str(final))
    trained = load_file(str(final / "model.safetensors"))
    assert set(trained) == set(model.net.official_state_dict())
    assert all(torch.equal(v, model.net.official_state_dict()[k]) for k, v in trained.items())
    with pytest.raises(TrainError, match="--resume"):
        train(tiny_config(data_root), out, progress=False)


def test_evaluation_is_logged_before_the_next_checkpoint(data_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(train_module, "save_checkpoint", crash)  # the first checkpoint is the last step's
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_config(data_root, val_split="shapes_val", eval_every=2, eval_limit=3), tmp_path, progress=False)
    assert [r["step"] for r in read_csv(tmp_path / "eval_log.csv") if r["split"] == "shapes_val"] == ["2", "4"]


def test_resume_is_bit_identical(data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data_root, steps=4, flip_prob=0.5, warmup_steps=1)
    whole = train(cfg, tmp_path / "whole", progress=False)
    part = train(cfg, tmp_path / "part", progress=False, stop_at=2)
    assert part.name == "step-000002" and not (tmp_path / "part" / "model").exists()
    with pytest.raises(TrainError, match="lr"):
        train(dataclasses.replace(cfg, lr=0.5), tmp_path / "part", resume=True, progress=False)
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "train_log.csv").read_text().splitlines()[1:] != []
    losses = lambda p: [r.split(",")[1] for r in (p / "train_log.csv").read_text().splitlines()[1:]]  # noqa: E731
    assert losses(tmp_path / "whole") == losses(tmp_path / "part")


@pytest.mark.parametrize("model, precision", [("evf_sam_tiny", "fp32"), ("evf_sam_tiny", "bf16"), ("evf_sam2_tiny", "bf16")])
def test_feature_store_gives_the_run_of_the_in_memory_cache(data_root: Path, tmp_path: Path, model: str,
                                                           precision: str) -> None:
    cfg = tiny_config(data_root, model=model, steps=3, flip_prob=0.5, precision=precision)
    memory = train(cfg, tmp_path / "memory", progress=False)
    stored = train(dataclasses.replace(cfg, feature_store=str(tmp_path / "store")), tmp_path / "stored", progress=False)
    a, b = load_file(str(memory / "model.safetensors")), load_file(str(stored / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    (folder,) = [p.parent for p in (tmp_path / "store").glob("*/index.json")]
    index = json.loads((folder / "index.json").read_text())
    assert len(index["paths"]) == 8 and index["flips"] == [False, True]  # the 8 train images, both ways
    embed = np.load(folder / "image_embed.npy", mmap_mode="r")
    assert embed.shape[:2] == (8, 2) and np.abs(embed).sum(axis=(2, 3, 4)).min() > 0  # every row written


def test_a_later_stage_with_the_same_encoder_maps_the_same_store(data_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(data_root, steps=1, flip_prob=0.5, feature_store=str(tmp_path / "store"))
    train(cfg, tmp_path / "first", progress=False)
    monkeypatch.setattr(FeatureStore, "_build", staticmethod(lambda *a, **k: pytest.fail("rebuilt")))
    train(dataclasses.replace(cfg, lr=0.0), tmp_path / "again", progress=False)
    monkeypatch.undo()  # other weights (another seed's initialisation) get a store of their own
    train(dataclasses.replace(cfg, seed=1), tmp_path / "other", progress=False)
    assert len(list((tmp_path / "store").glob("*/index.json"))) == 2
    image = next((data_root / "images" / "shapes").glob("*.png"))  # a rewritten image: another store
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    train(dataclasses.replace(cfg, lr=0.0), tmp_path / "rewritten", progress=False)
    assert len(list((tmp_path / "store").glob("*/index.json"))) == 3


def test_an_interrupted_feature_store_is_built_again(data_root: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(data_root, steps=1, feature_store=str(tmp_path / "store"))
    real = FeatureStore._build

    def crash(folder: Path, paths, flips, encode, ctx, progress) -> None:
        def failing(path: Path, flip: bool):
            if path == paths[3]:
                raise RuntimeError("killed")
            return encode(path, flip)
        real(folder, paths, flips, failing, ctx, progress)

    monkeypatch.setattr(FeatureStore, "_build", staticmethod(crash))
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tmp_path / "a", progress=False)
    assert not list((tmp_path / "store").glob("*/index.json")) and list((tmp_path / "store").glob("*.partial"))
    monkeypatch.undo()
    train(cfg, tmp_path / "b", progress=False)
    assert len(list((tmp_path / "store").glob("*/index.json"))) == 1 and not list((tmp_path / "store").glob("*.partial"))


def test_building_the_feature_store_counts_in_the_run_time(data_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = FeatureStore.open.__func__

    def slow(cls, *args, **kwargs):
        time.sleep(1.0)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "open", classmethod(slow))
    train(tiny_config(data_root, steps=1, feature_store=str(tmp_path / "store")), tmp_path / "run", progress=False)
    assert float(read_csv(tmp_path / "run" / "train_log.csv")[0]["elapsed_s"]) >= 1.0


def test_feature_store_needs_a_frozen_encoder() -> None:
    with pytest.raises(TrainError, match="feature_store"):
        TrainConfig(feature_store="store", train=["image_encoder", "mask_decoder"]).validate()
    with pytest.raises(TrainError, match="feature_store"):
        TrainConfig(feature_store="store", stage="sam_boxes", train=["mask_decoder"]).validate()


def test_sam_boxes_stage_feeds_a_text_stage(data_root: Path, tmp_path: Path) -> None:
    stage1 = train(tiny_config(data_root, stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"],
                               steps=2, val_split="shapes_val", eval_every=1, eval_limit=3), tmp_path / "s1", progress=False)
    sam = load_file(str(stage1 / "sam.safetensors"))
    assert "image_encoder.patch_embed.proj.weight" in sam and "mask_decoder.iou_token.weight" in sam  # stock names
    stage2 = train(tiny_config(data_root, sam_checkpoint=str(stage1), steps=1), tmp_path / "s2", progress=False)
    encoder = {k[len("visual_model."):]: v for k, v in load_file(str(stage2 / "model.safetensors")).items()
               if k.startswith("visual_model.image_encoder.")}
    assert encoder and all(torch.equal(v, sam[k]) for k, v in encoder.items())  # frozen in stage 2


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizer_is_fused_on_cpu_and_a_resumed_state_keeps_its_kernel(name: str) -> None:
    param = torch.nn.Parameter(torch.randn(3))
    cfg = TrainConfig(optimizer=name, lr=0.1)
    fused = train_module.build_optimizer(cfg, [{"params": [param]}], torch.device("cpu"))
    assert fused.param_groups[0]["fused"] is True
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    old = kind([param], lr=0.1)  # a checkpoint saved before the fused kernel was used
    param.grad = torch.ones(3)
    old.step()
    fused.load_state_dict(old.state_dict())
    assert not fused.param_groups[0]["fused"]  # a resumed run continues bit-identically


def test_shipped_training_configs_are_valid() -> None:
    from evfbench.cards import registry_root

    configs = sorted((registry_root() / "weights").glob("**/*config.yaml"))
    assert len(configs) >= 3
    for path in configs:  # the commands in each TRAINING.md run these files
        TrainConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), str(path)).validate()


def test_category_map_labels_every_object_pixel(data_root: Path) -> None:
    data = TrainingData(["shapes"], None, data_root)
    group = data.groups[0][0]
    labels = data.category_map(group)
    for ann in group.annotations.values():
        assert (labels[ann.mask(group.height, group.width)] == data.category_ids.index(ann.category_id) + 1).all()
    assert labels.min() == 0 and labels.max() <= len(data.category_ids)
    item = Item(0, 0, (0,), True)
    assert np.array_equal(data.example(item, categories=True).categories, labels[:, ::-1])
    assert data.example(item).categories is None


def test_category_map_classes_cross_the_category_with_attributes(data_root: Path) -> None:
    data = TrainingData(["shapes"], None, data_root, class_attributes=["color"])
    keys = {(a.category_id, a.attributes["color"]) for groups in data.groups for g in groups for a in g.annotations.values()}
    assert sorted(keys) == data.pixel_classes and len(keys) > len(data.category_ids)
    group = data.groups[0][0]
    labels = data.category_map(group)
    for ann in group.annotations.values():
        key = (ann.category_id, ann.attributes["color"])
        assert (labels[ann.mask(group.height, group.width)] == data.pixel_classes.index(key) + 1).all()
    with pytest.raises(EvfbenchError, match=r"annotation \d+: its instances.json record has no attribute \['shade'\]"):
        TrainingData(["shapes"], None, data_root, class_attributes=["shade"])


def test_attribute_maps_give_each_head_attribute_its_own_classes(data_root: Path) -> None:
    data = TrainingData(["shapes"], None, data_root, class_attributes=["color"], head_attributes=["size"])
    assert data.head_values == {"size": ["large", "medium", "small"]}
    group = data.groups[0][0]
    (sizes,) = data.attribute_maps(group)
    assert sizes.shape == (group.height, group.width) and (sizes >= 0).all()
    for ann in group.annotations.values():  # the crossed classes are unchanged by the head
        mask = ann.mask(group.height, group.width)
        assert (sizes[mask] == data.head_values["size"].index(ann.attributes["size"]) + 1).all()
        assert (data.category_map(group)[mask] == data.pixel_classes.index((ann.category_id, ann.attributes["color"])) + 1).all()
    assert (sizes == 0).any()  # the background
    flipped = data.example(Item(0, 0, (0,), True), categories=True)
    assert np.array_equal(flipped.attributes, data.attribute_maps(group)[:, :, ::-1])
    assert TrainingData(["shapes"], None, data_root).example(Item(0, 0, (0,), False), categories=True).attributes is None
    with pytest.raises(EvfbenchError, match=r"(?s)no attribute \['shade'\].*--category-aux-heads"):
        TrainingData(["shapes"], None, data_root, head_attributes=["shade"])


def test_derived_hidden_attribute_classes_the_share_of_each_shape_others_cover(data_root: Path) -> None:
    data = TrainingData(["shapes"], None, data_root, head_attributes=["hidden"])
    assert data.head_values == {"hidden": ["partly", "slightly", "whole"]}
    for group in data.groups[0]:
        (classes,) = data.attribute_maps(group)
        for ann in group.annotations.values():
            value = data.head_values["hidden"][classes[ann.mask(group.height, group.width)][0] - 1]
            share = 1 - ann.area / ann.attributes["full_area"]  # the thresholds of the "hidden" sentences
            assert value == ("partly" if share >= 0.12 else "whole" if share <= 0.02 else "slightly")
    assert all("hidden" not in a.attributes for g in data.groups[0] for a in g.annotations.values())  # derived, not stored


def test_category_aux_attributes_need_the_category_loss(data_root: Path, tmp_path: Path) -> None:
    for name in ("category_aux_attributes", "category_aux_heads"):
        with pytest.raises(TrainError, match=f"{name} \\['color'\\] add attribute classes"):
            tiny_config(data_root, **{name: ["color"]}).validate()
    cfg = tiny_config(data_root, steps=2, stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"],
                      category_aux=1.0, category_aux_attributes=["color"])
    train(cfg, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    n_classes = len(TrainingData(["shapes"], None, data_root, class_attributes=["color"]).pixel_classes)
    assert state["category_head"]["bias"].shape == (n_classes + 1,)
    heads = train(dataclasses.replace(cfg, category_aux_heads=["size"]), tmp_path / "heads", progress=False)
    state = torch.load(tmp_path / "heads" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert state["category_head"]["bias"].shape == (n_classes + 1 + 3 + 1,)  # and the 3 sizes + background
    assert yaml.safe_load((heads.parent / "config.yaml").read_text())["category_aux_heads"] == ["size"]
    args = build_parser().parse_args(["--output-dir", str(tmp_path), "--category-aux-heads", "size"])
    assert config_from_args(args).category_aux_heads == ["size"]


def test_category_aux_trains_the_sam_encoder_and_resumes_bit_identically(data_root: Path, tmp_path: Path) -> None:
    boxes = dict(stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"], steps=4, flip_prob=0.5)
    cfg = tiny_config(data_root, category_aux=1.0, **boxes)
    whole = load_file(str(train(cfg, tmp_path / "whole", progress=False) / "sam.safetensors"))
    train(cfg, tmp_path / "part", progress=False, stop_at=2)
    state = torch.load(tmp_path / "part" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert state["category_head"]["weight"].shape[0] == 7  # 6 shape categories + background
    resumed = load_file(str(train(cfg, tmp_path / "part", resume=True, progress=False) / "sam.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    plain = load_file(str(train(tiny_config(data_root, **boxes), tmp_path / "plain", progress=False) / "sam.safetensors"))
    key = "image_encoder.patch_embed.proj.weight"
    assert not torch.equal(whole[key], plain[key])  # the category loss reaches the encoder


def test_sam_categories_stage_trains_the_encoder_alone_and_feeds_sam_boxes(data_root: Path, tmp_path: Path) -> None:
    cfg = config_from_args(build_parser().parse_args(["--output-dir", str(tmp_path), "--stage", "sam_categories"]))
    assert (cfg.train, cfg.category_aux) == (["image_encoder"], 1.0)  # the stage's defaults
    cats = tiny_config(data_root, stage="sam_categories", train=["image_encoder"], category_aux=1.0, steps=6,
                       val_split="shapes_val", eval_every=3, eval_limit=3)
    torch.manual_seed(0)  # as train() does before it builds the model
    init = build_model(cats, torch.device("cpu"), None).net.visual_model.state_dict()
    out = train(cats, tmp_path / "cats", progress=False)
    sam = load_file(str(out / "sam.safetensors"))
    moved = {k.split(".")[0] for k in sam if not torch.equal(sam[k], init[k])}
    assert moved == {"image_encoder"}  # the prompt encoder and the mask decoder stay as built
    log = read_csv(tmp_path / "cats" / "train_log.csv")
    assert all(r["bce"] == r["dice"] == "" and r["loss"] == r["category"] for r in log)
    assert float(log[-1]["category"]) < float(log[0]["category"])
    evals = read_csv(tmp_path / "cats" / "eval_log.csv")
    assert [(r["step"], r["split"]) for r in evals] == [("3", "shapes_val:categories"), ("6", "shapes_val:categories")]
    assert all(0 <= float(r["ciou"]) <= 1 and int(r["n_sentences"]) > 0 for r in evals)
    boxes = train(tiny_config(data_root, stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"],
                              sam_checkpoint=str(out), steps=1, lr=0.0), tmp_path / "boxes", progress=False)
    assert all(torch.equal(v, sam[k]) for k, v in load_file(str(boxes / "sam.safetensors")).items())  # it starts there
    for bad in (dict(category_aux=0.0), dict(train=["image_encoder", "mask_decoder"])):
        with pytest.raises(TrainError, match="sam_categories trains the SAM image encoder alone"):
            dataclasses.replace(cats, **bad).validate()


def test_category_evaluation_scores_each_category_of_each_image(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evfbench.data.refer import load_split
    from evfbench.registry import get_split

    cfg = tiny_config(data_root, stage="sam_categories", train=["image_encoder"], category_aux=1.0)
    ids = TrainingData(["shapes"], None, data_root).category_ids
    torch.manual_seed(0)
    trainer = Trainer(build_model(cfg, torch.device("cpu"), None), cfg, torch.device("cpu"), len(ids))
    truth = {}  # image bytes -> true class map, later annotations on top, as the category map
    for group in load_split(get_split("shapes_val"), data_root):
        classes = np.zeros((group.height, group.width), dtype=np.int64)
        for a in group.annotations.values():
            classes[a.mask(group.height, group.width)] = ids.index(a.category_id) + 1
        truth[group.load_image().tobytes()] = (classes, len({a.category_id for a in group.annotations.values()}))
    n_categories = sum(n for _, n in truth.values())
    assert n_categories > len(truth)  # some image holds two categories
    for shift, expected in ((0, 1.0), (1, 0.0)):  # the true classes, then every class renamed
        monkeypatch.setattr(train_module, "predicted_categories",
                            lambda trainer, image: (truth[image.tobytes()][0] + shift) % (len(ids) + 1))
        m = train_module.evaluate(trainer, "shapes_val", data_root, None, category_ids=ids)
        assert m["n_sentences"] == n_categories and m["ciou"] == pytest.approx(expected)


def test_point_prompts_are_drawn_from_the_mask(data_root: Path) -> None:
    data = TrainingData(["shapes"], None, data_root)
    for flip in (False, True):
        n = len(data.groups[0][0].samples)
        ex = data.example(Item(0, 0, tuple(range(n)), flip, prompt_seed=7))
        xy, use = ex.points(1.0)
        assert use.all() and not ex.points(0.0)[1].any()
        assert all(mask[int(y), int(x)] for mask, (x, y) in zip(ex.masks, xy))
        assert np.array_equal(xy, ex.points(0.5)[0])  # a function of the item's prompt seed
    seeds = [i.prompt_seed for i in data.global_batch(0, 3, 8, 3, 0.5)]
    assert len(set(seeds)) == 8 and seeds == [i.prompt_seed for i in data.global_batch(0, 3, 8, 3, 0.5)]


def test_point_prompts_train_the_point_token_not_the_box_tokens(data_root: Path, tmp_path: Path) -> None:
    boxes = dict(stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"], steps=2)
    torch.manual_seed(0)  # as train() does before it builds the model
    init = {k: v for k, v in build_model(tiny_config(data_root, **boxes), torch.device("cpu"), None).net.state_dict().items()
            if k.startswith("visual_model.prompt_encoder.point_embeddings")}
    evals = dict(val_split="shapes_val", eval_every=1, eval_limit=3)
    runs = {p: load_file(str(train(tiny_config(data_root, point_prob=p, **boxes, **evals), tmp_path / str(p),
                                   progress=False) / "sam.safetensors")) for p in (0.0, 1.0)}
    moved = {p: {i for i in range(4) if not torch.equal(runs[p][f"prompt_encoder.point_embeddings.{i}.weight"],
                                                          init[f"visual_model.prompt_encoder.point_embeddings.{i}.weight"])}
             for p in runs}
    assert moved == {0.0: {2, 3}, 1.0: {1}}  # box corners / the positive point
    splits = lambda run: [(r["step"], r["split"]) for r in read_csv(tmp_path / run / "eval_log.csv")]  # noqa: E731
    assert splits("0.0") == [("1", "shapes_val"), ("2", "shapes_val")]
    assert splits("1.0") == [(step, split) for step in "12" for split in ("shapes_val", "shapes_val:points")]
    with pytest.raises(TrainError, match="point_prob sets the prompts of --stage sam_boxes"):
        tiny_config(data_root, point_prob=0.5).validate()
    with pytest.raises(TrainError, match=r"point_prob must be in \[0, 1\]"):
        tiny_config(data_root, point_prob=1.5, **boxes).validate()


def test_category_aux_in_a_text_stage_reaches_the_encoder(data_root: Path, tmp_path: Path) -> None:
    text = dict(train=["image_encoder", "mm_encoder", "projector", "mask_decoder"], steps=2)
    aux = load_file(str(train(tiny_config(data_root, category_aux=1.0, **text), tmp_path / "aux", progress=False)
                        / "model.safetensors"))
    plain = load_file(str(train(tiny_config(data_root, **text), tmp_path / "plain", progress=False) / "model.safetensors"))
    key = next(k for k in aux if k.endswith("image_encoder.patch_embed.proj.weight"))
    assert not torch.equal(aux[key], plain[key])
    column = lambda run: [r["category"] for r in read_csv(tmp_path / run / "train_log.csv")]  # noqa: E731
    assert all(float(v) > 0 for v in column("aux")) and column("plain") == ["", ""]
    with pytest.raises(TrainError, match="does not name image_encoder"):
        tiny_config(data_root, category_aux=1.0, train=["mm_encoder", "projector", "mask_decoder"]).validate()


def test_a_chained_stage_continues_the_heads_of_the_checkpoint_it_starts_from(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def head(run: str, step: int) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / run / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt",
                          weights_only=True)["category_head"]

    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    boxes = dict(stage="sam_boxes", train=["image_encoder", "prompt_encoder", "mask_decoder"], category_aux=1.0)
    train(tiny_config(data_root, steps=3, **boxes), tmp_path / "first", progress=False)
    start = str(tmp_path / "first" / "checkpoints" / "step-000003")
    train(tiny_config(data_root, steps=1, lr=0.0, sam_checkpoint=start, **boxes), tmp_path / "boxes", progress=False)
    assert same(head("boxes", 1), head("first", 3))  # lr 0: the head is the one it started from
    text = dict(train=["image_encoder", "mm_encoder", "projector", "mask_decoder"], category_aux=1.0)
    model = train(tiny_config(data_root, steps=2, **text), tmp_path / "text", progress=False)
    train(tiny_config(data_root, steps=1, lr=0.0, init=str(tmp_path / "text" / "checkpoints" / "step-000002"), **text),
          tmp_path / "next", progress=False)
    assert same(head("next", 1), head("text", 2))
    train(tiny_config(data_root, steps=1, lr=0.0, init=str(model), **text), tmp_path / "fresh", progress=False)
    assert not same(head("fresh", 1), head("text", 2))  # model/ holds no trainer state: the head starts fresh
    other = tmp_path / "other_categories"  # a checkpoint of a corpus with another category set
    other.mkdir()
    torch.save({"category_head": {"weight": torch.zeros(3, 64, 1, 1), "bias": torch.zeros(3)}}, other / "trainer_state.pt")
    cfg = tiny_config(data_root, init=str(other), **text)
    trainer = Trainer(build_model(tiny_config(data_root, **text), torch.device("cpu"), None), cfg, torch.device("cpu"),
                      n_classes=6)
    before = {k: v.clone() for k, v in trainer.category_head.state_dict().items()}
    train_module.carry_heads(trainer, cfg)
    assert same(trainer.category_head.state_dict(), before)
    assert "category_head has other shapes (another category set?); category_head starts fresh" in capsys.readouterr().out


def test_patch_cover_is_the_target_share_of_each_beit3_patch(data_root: Path) -> None:
    cfg = tiny_config(data_root, grounding_aux=1.0)
    data = TrainingData(cfg.data, None, data_root)
    torch.manual_seed(0)
    trainer = Trainer(build_model(cfg, torch.device("cpu"), None), cfg, torch.device("cpu"))
    g = trainer.net.config.beit3.img_size // trainer.net.config.beit3.patch_size
    for flip in (False, True):
        ex = data.example(Item(0, 0, tuple(range(len(data.groups[0][0].samples))), flip))
        cover = trainer._patch_cover([ex])
        assert cover.shape == (len(ex.masks), g * g) and 0 <= cover.min() and cover.max() <= 1
        h, w = ex.masks.shape[1:]
        for mask, row in zip(ex.masks, cover):
            ys, xs = np.nonzero(mask)
            inside = {(int(y * g / h), int(x * g / w)) for y, x in zip(ys, xs)}
            assert {divmod(int(i), g) for i in torch.nonzero(row).flatten()} == inside  # the patches it touches


def test_grounding_head_loss_by_hand() -> None:
    head = train_module.GroundingHead(dim=4, num_patches=3)
    tokens = torch.randn(2, 1 + 3 + 5, 4)  # [CLS], 3 patches, 5 text tokens
    cover = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]])
    patch = torch.nn.functional.binary_cross_entropy_with_logits(head.patch(tokens[:, 1:4]).squeeze(-1), cover)
    cls = -(torch.tensor([0.0, 1 / 3, 2 / 3]) * head.cls(tokens[0, 0]).log_softmax(-1)).sum()  # the empty target: none
    assert torch.allclose(head(tokens, cover), 2 * patch + cls)


def test_grounding_aux_trains_beit3_and_resumes_bit_identically(data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data_root, grounding_aux=1.0, beit3_position_std=0.3, flip_prob=0.5)
    whole = load_file(str(train(cfg, tmp_path / "whole", progress=False) / "model.safetensors"))
    train(cfg, tmp_path / "part", progress=False, stop_at=2)
    state = torch.load(tmp_path / "part" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    beit = EvfConfig.from_json(json.loads((tmp_path / "whole" / "model" / "config.json").read_text())).beit3
    assert state["grounding_head"]["cls.weight"].shape == (beit.num_patches, beit.embed_dim) and "category_head" not in state
    resumed = load_file(str(train(cfg, tmp_path / "part", resume=True, progress=False) / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not any(k.startswith("grounding") for k in whole)  # the heads stay out of the official layout
    plain = load_file(str(train(tiny_config(data_root), tmp_path / "plain", progress=False) / "model.safetensors"))
    key = "mm_extractor.beit3.vision_embed.proj.weight"
    assert not torch.equal(whole[key], plain[key])  # the grounding loss reaches the image side of BEiT-3
    column = lambda run: [r["grounding"] for r in read_csv(tmp_path / run / "train_log.csv")]  # noqa: E731
    assert all(float(v) > 0 for v in column("whole")) and set(column("plain")) == {""}
    with pytest.raises(TrainError, match="this model's fusion is 'text'"):
        train(tiny_config(data_root, model="evf_sam_tiny_text", grounding_aux=1.0), tmp_path / "text", progress=False)
    with pytest.raises(TrainError, match="grounding_aux trains BEiT-3 in a text stage"):
        tiny_config(data_root, grounding_aux=1.0, stage="sam_boxes", train=["image_encoder", "mask_decoder"]).validate()


def test_beit3_position_std_redraws_only_an_untrained_image_side(data_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    positions = build_model(tiny_config(data_root, beit3_position_std=0.5), torch.device("cpu"), None).net.beit3.encoder.embed_positions
    assert 0.4 < float(positions.A.weight.detach().std()) < 0.6 and float(positions.B.weight.detach().std()) < 0.05  # the text table is kept
    early = train(tiny_config(data_root, steps=1), tmp_path / "early", progress=False)
    with pytest.raises(TrainError, match="early-fusion model: its BEiT-3 image side is trained"):
        build_model(tiny_config(data_root, init=str(early), tokenizer_vocab=0, beit3_position_std=0.3), torch.device("cpu"), None)
    with pytest.raises(TrainError, match="beit3_position_std must be >= 0"):
        tiny_config(data_root, beit3_position_std=-1.0).validate()


@pytest.mark.slow
def test_torchrun_two_processes_match_one(data_root: Path, tmp_path: Path) -> None:
    """Same global batch of 4: 2 processes x 1 image x 2 accumulation steps vs 1 process x 4."""
    cfg = tiny_config(data_root, steps=1, global_batch=4, optimizer="sgd", lr=1.0, grad_clip=0.0, flip_prob=0.5)
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the two processes read the frozen SAM features from a store each built half of; the one
    # process computes them in memory: the same step shows the store holds the same features
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "evfbench.train",
           "--config", str(config), "--per-device-batch", "1", "--output-dir", str(tmp_path / "ddp"), "--no-progress",
           "--feature-store", str(tmp_path / "store")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "broadcast_buffers" not in proc.stderr  # torch 2.14 warns in every process on the old DDP flag
    assert train_module.main(["--config", str(config), "--per-device-batch", "4", "--output-dir", str(tmp_path / "one"),
                              "--no-progress"]) == 0
    assert len(list((tmp_path / "store").glob("*/index.json"))) == 1
    ddp = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    start = train(dataclasses.replace(cfg, steps=1, lr=0.0), tmp_path / "zero", progress=False)
    init = load_file(str(start / "model.safetensors"))
    moved = [k for k in one if not torch.equal(one[k], init[k])]
    assert moved  # the step changed something
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=1e-6, rtol=0)
    log = lambda p: (p / "train_log.csv").read_text().splitlines()[1].split(",")[1:4]  # noqa: E731
    assert [float(x) for x in log(tmp_path / "ddp")] == pytest.approx([float(x) for x in log(tmp_path / "one")], abs=1e-5)


# ---- fusion baselines ---------------------------------------------------------------------------
def test_a_text_only_run_initialises_an_early_fusion_run(data_root: Path, tmp_path: Path) -> None:
    text = train(tiny_config(data_root, model="evf_sam_tiny_text", steps=1), tmp_path / "text", progress=False)
    assert json.loads((text / "config.json").read_text())["fusion"] == "text"
    early = train(tiny_config(data_root, init=str(text), tokenizer_vocab=0, model_args={"fusion": "early"}, steps=1, lr=0.0),
                  tmp_path / "early", progress=False)
    assert "fusion" not in json.loads((early / "config.json").read_text())  # early: the official layout
    a, b = load_file(str(text / "model.safetensors")), load_file(str(early / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the same parameters
    with pytest.raises(TrainError, match="late fusion's projector"):
        train(tiny_config(data_root, init=str(text), tokenizer_vocab=0, model_args={"fusion": "late"}), tmp_path / "late",
              progress=False)


@pytest.mark.parametrize("fusion", ["text", "late"])
def test_fusion_baselines_save_and_load(fusion: str, tmp_path: Path, spm_folder: Path) -> None:
    torch.manual_seed(0)
    model = create_model(f"evf_sam_tiny_{fusion}", tokenizer=str(spm_folder))
    d = model.config.beit3.embed_dim
    assert model.net.text_hidden_fcs[0][0].in_features == (2 * d if fusion == "late" else d)
    image, other = random_image(40, 50, seed=1), random_image(40, 50, seed=2)
    ids, padding = model.tokenize(["the man on the left", "blue umbrella"])
    with torch.no_grad():
        p1 = model.net.prompt(model.embed_image(image), ids, padding)
        p2 = model.net.prompt(model.embed_image(other), ids, padding)
    assert p1.shape == (2, 1, model.config.out_dim)
    assert torch.equal(p1, p2) == (fusion == "text")  # text-only ignores the image
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((folder / "config.json").read_text())["fusion"] == fusion
    assert model.config.fusion == fusion
    reloaded = create_model("evf_sam_tiny", weights=str(folder), fusion=None)  # fusion read from config.json
    assert reloaded.config.fusion == fusion
    group = make_group(["the man on the left", "blue umbrella"], 40, 50)
    assert np.array_equal(model.predict(image, group), reloaded.predict(image, group))
    with pytest.raises(Exception, match="fusion"):
        create_model("evf_sam_tiny", weights=str(folder), fusion="early")


def test_early_fusion_config_json_has_no_fusion_key(tmp_path: Path) -> None:
    config = EvfConfig.create("sam", "test", "test")
    assert config.fusion == "early" and "fusion" not in config.to_json()
    assert EvfConfig.from_json(config.to_json()) == config
