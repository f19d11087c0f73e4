"""EVF-SAM: official layout round trips, real key sets on meta, padding, post-processing,
dtype, strict and safe loading, tokenizer, the embedding cache, registry cards."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import make_group, random_image, spm_folder, spread_weights, tiny_model  # noqa: F401
from safetensors.torch import load_file, save_file

from evfbench.io import atomic_path
from evfbench.models.checkpoint import CheckpointError, empty_init, save_safetensors, state_dict_summary
from evfbench.models.evf_sam import EvfConfig, EvfSam, EvfSamNet, build_net
from evfbench.models.sam_backends import SAM_CONFIGS, Sam1Backend, postprocess_sam1, postprocess_sam2
from evfbench.models.tokenizer import BeitTokenizer
from evfbench.registry import create_model, get_model_card, list_pretrained

TEXTS = ["the man on the left", "Blue umbrella ", "[semantic] sky", "a small dog under the table near the tall building"]
H, W = 90, 140


def _model(family: str, spm: Path, **kwargs) -> EvfSam:
    model = tiny_model(family, spm, **kwargs)
    spread_weights(model)
    return model


@pytest.fixture(scope="module")
def sam1(spm_folder) -> EvfSam:
    return _model("sam", spm_folder)


@pytest.fixture(scope="module")
def sam2(spm_folder) -> EvfSam:
    return _model("sam2", spm_folder)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return random_image(H, W, seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, sam1, sam2) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"sam": sam1.save_pretrained(root / "evf_sam_tiny"), "sam2": sam2.save_pretrained(root / "evf_sam2_tiny")}


def _logits(model: EvfSam, image: np.ndarray, texts: list[str]) -> torch.Tensor:
    return model.segment(model.embed_image(image), texts, image.shape[:2])


# ---- official layout round trip ---------------------------------------------------------------
OFFICIAL_PREFIXES = {
    "sam": ("visual_model.image_encoder.", "visual_model.prompt_encoder.", "visual_model.mask_decoder."),
    "sam2": ("visual_model.image_encoder.", "visual_model.sam_prompt_encoder.", "visual_model.sam_mask_decoder.",
             "visual_model.memory_attention.", "visual_model.memory_encoder.", "visual_model.maskmem_tpos_enc",
             "visual_model.no_mem_embed", "visual_model.no_mem_pos_enc", "visual_model.mask_downsample.",
             "visual_model.obj_ptr_proj.", "visual_model.no_obj_ptr"),
}


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_save_official_layout_and_reload_through_registry(family, saved, sam1, sam2, image) -> None:
    model = sam1 if family == "sam" else sam2
    folder = saved[family]
    assert sorted(p.name for p in folder.iterdir()) == [
        "added_tokens.json", "config.json", "model.safetensors", "sentencepiece.bpe.model",
        "special_tokens_map.json", "tokenizer_config.json",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "evf"
    assert config["architectures"] == ["EvfSamModel" if family == "sam" else "EvfSam2Model"]
    assert (config["hidden_size"], config["out_dim"]) == (32, 32)
    assert (config["mm_extractor_scale"], config["sam_scale"]) == ("custom", "custom")
    assert config["beit3_config"]["embed_dim"] == 32
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (1, 0, 2)

    state = load_file(str(folder / "model.safetensors"))
    beit = {k for k in state if k.startswith("mm_extractor.beit3.")}
    assert len(beit) == 7 + 2 * 40 + 4
    assert {k for k in state if k.startswith("text_hidden_fcs.")} == {
        "text_hidden_fcs.0.0.weight", "text_hidden_fcs.0.0.bias", "text_hidden_fcs.0.2.weight", "text_hidden_fcs.0.2.bias"}
    others = set(state) - beit - {k for k in state if k.startswith("text_hidden_fcs.")}
    assert all(k.startswith(OFFICIAL_PREFIXES[family]) for k in others)
    if family == "sam2":
        assert "visual_model.memory_encoder.fuser.layers.0.weight" in state
        assert "visual_model.memory_encoder.fuser.layers.1.weight" in state
        assert not any(k.endswith(".gamma") for k in state)

    reloaded = create_model("evf_sam_tiny" if family == "sam" else "evf_sam2_tiny", weights=str(folder))
    ours = model.net.official_state_dict()
    theirs = reloaded.net.official_state_dict()
    assert set(ours) == set(theirs) == set(state)  # 0 missing, 0 unexpected
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    group = make_group(TEXTS, H, W)
    expected = model.predict(image, group)
    got = reloaded.predict(image, group)
    assert expected.shape == (4, H, W) and expected.dtype == bool
    assert np.array_equal(expected, got)
    assert 0 < expected.mean() < 1
    assert reloaded.describe()["weights"] == str(folder)


def test_saved_weights_are_readable_and_a_failed_save_leaves_nothing(saved, tmp_path) -> None:
    """Weights go through mkstemp (0600) and a rename; the file must get the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    assert (saved["sam"] / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    target = tmp_path / "model.safetensors"
    save_safetensors(target, {"w": torch.ones(2)})
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        save_file({"w": "not a tensor"}, str(tmp))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert torch.equal(load_file(str(target))["w"], torch.ones(2))  # the previous file is intact


def test_real_evf_sam_key_set_on_meta() -> None:
    net = build_net(EvfConfig.create("sam", "large", "huge"), empty=True)
    state = net.official_state_dict()
    n_tensors, n_params = state_dict_summary(state)
    assert n_tensors == 1569
    assert round(n_params / 1e6, 1) == 1315.1
    assert sum(1 for k in state if k.startswith("mm_extractor.beit3.")) == 971
    assert sum(1 for k in state if k.startswith("visual_model.")) == 594
    assert state["visual_model.image_encoder.pos_embed"].shape == (1, 64, 64, 1280)
    assert state["text_hidden_fcs.0.2.weight"].shape == (256, 1024)
    assert EvfConfig.create("sam").to_json() | {} == {
        "architectures": ["EvfSamModel"], "model_type": "evf", "hidden_size": 1024, "out_dim": 256,
        "mm_extractor_scale": "large", "sam_scale": "huge", "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, "torch_dtype": "float32",
    }


def test_real_evf_sam2_key_set_on_meta() -> None:
    net = build_net(EvfConfig.create("sam2", "large", "large"), empty=True)
    state = net.official_state_dict()
    n_tensors, n_params = state_dict_summary(state)
    assert n_tensors == 1875
    assert round(n_params / 1e6, 1) == 898.4
    assert "visual_model.memory_encoder.fuser.layers.0.weight" in state
    assert "visual_model.memory_encoder.fuser.layers.0.gamma" not in state
    assert "visual_model.memory_encoder.fuser.layers.0.dwconv.weight" in state  # not renamed
    assert "visual_model.no_obj_embed_spatial" not in state  # v2.0 config, not sam2.1
    assert state["visual_model.image_encoder.trunk.pos_embed"].shape == (1, 144, 7, 7)
    assert EvfConfig.create("sam2").to_json()["sam_scale"] == "large"


# ---- batching, padding, caching ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_padded_batch_equals_one_by_one(family, sam1, sam2, image) -> None:
    model = sam1 if family == "sam" else sam2
    ids, padding = model.tokenize(TEXTS)
    assert padding.any(dim=1).sum() == 3  # all but the longest text are padded
    batched = _logits(model, image, TEXTS)
    single = torch.cat([_logits(model, image, [t]) for t in TEXTS])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    assert torch.equal(batched > 0, single > 0)
    assert (batched[0] - batched[1]).abs().mean() > 0.05  # the text matters


def test_predict_encodes_the_image_once(sam1, image) -> None:
    calls = []
    original = sam1.net.backend.encode

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    sam1.net.backend.encode = counting
    sam1.batch_size = 2  # 4 texts -> 2 decoder batches, still one image encoding
    try:
        masks = sam1.predict(image, make_group(TEXTS, H, W))
    finally:
        sam1.net.backend.encode = original
        sam1.batch_size = 16
    assert len(calls) == 1
    per_text = np.stack([_logits(sam1, image, [t])[0].numpy() > 0 for t in TEXTS])
    assert np.array_equal(masks, per_text)


def test_texts_are_lowercased_and_stripped(sam1) -> None:
    a, _ = sam1.tokenize(["  The MAN on the Left "])
    b, _ = sam1.tokenize(["the man on the left"])
    assert torch.equal(a, b)


# ---- post-processing -----------------------------------------------------------------------------
def test_postprocess_sam1_crops_padding_sam2_squashes() -> None:
    # image 100 x 50 (H x W); SAM-1 input 128: resized to 128 x 64, padded right to 128 x 128.
    # low-res logits 32 x 32: +5 in the left half of the columns, -5 in the right half.
    low = torch.full((1, 32, 32), -5.0)
    low[:, :, :16] = 5.0
    sam1 = postprocess_sam1(low, input_size=(128, 64), img_size=128, original_size=(100, 50))[0] > 0
    sam2 = postprocess_sam2(low, original_size=(100, 50))[0] > 0
    assert sam1.all()  # the kept 64 columns all lie in the left half of the padded square
    expected = torch.zeros(100, 50, dtype=torch.bool)
    expected[:, :25] = True  # squashed: the left half of the original image
    assert torch.equal(sam2, expected)

    # wide image 50 x 100: padding at the bottom; +5 in the top half of the rows.
    low = torch.full((1, 32, 32), -5.0)
    low[:, :16, :] = 5.0
    sam1 = postprocess_sam1(low, input_size=(64, 128), img_size=128, original_size=(50, 100))[0] > 0
    sam2 = postprocess_sam2(low, original_size=(50, 100))[0] > 0
    assert sam1.all()
    expected = torch.zeros(50, 100, dtype=torch.bool)
    expected[:25] = True
    assert torch.equal(sam2, expected)


def test_postprocess_sam1_equals_stock_sam() -> None:
    sam = Sam1Backend(SAM_CONFIGS["test"]).build()
    low = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(0))
    stock = sam.postprocess_masks(low[:, None], input_size=(128, 85), original_size=(300, 200))[:, 0]
    torch.testing.assert_close(postprocess_sam1(low, (128, 85), 128, (300, 200)), stock)


def test_sam1_preprocess_resizes_longest_side_and_pads() -> None:
    backend = Sam1Backend(SAM_CONFIGS["test"])
    pixels, size = backend.preprocess(np.full((90, 141, 3), 200, dtype=np.uint8), torch.device("cpu"))
    assert size == (82, 128)  # int(90 * 128 / 141 + 0.5) = 82
    assert pixels.shape == (1, 3, 128, 128)
    torch.testing.assert_close(pixels[0, 0, :82, :], torch.full((82, 128), (200 - 123.675) / 58.395))
    assert torch.equal(pixels[0, :, 82:, :], torch.zeros(3, 46, 128))


# ---- dtype -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_bf16_autocast_is_close_to_fp32(family, saved, image) -> None:
    name = "evf_sam_tiny" if family == "sam" else "evf_sam2_tiny"
    fp32 = create_model(name, weights=str(saved[family]))
    bf16 = create_model(name, weights=str(saved[family]), dtype="bf16")
    a, b = _logits(fp32, image, TEXTS), _logits(bf16, image, TEXTS)
    assert b.dtype == torch.float32
    assert not torch.equal(a, b)  # autocast did change the arithmetic
    assert (a - b).abs().mean() < 0.05 * a.abs().mean()
    assert ((a > 0) == (b > 0)).float().mean() > 0.98
    assert bf16.describe()["dtype"] == "bfloat16"


# ---- strict, safe loading ------------------------------------------------------------------------
def _copy_folder(src: Path, dst: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name != "model.safetensors":
            (dst / p.name).write_bytes(p.read_bytes())
    if state is not None:
        save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_wrong_shape_names_the_key(saved, tmp_path) -> None:
    state = load_file(str(saved["sam"] / "model.safetensors"))
    state["text_hidden_fcs.0.2.weight"] = torch.zeros(16, 32)
    folder = _copy_folder(saved["sam"], tmp_path / "bad", state)
    with pytest.raises(CheckpointError) as err:
        create_model("evf_sam_tiny", weights=str(folder))
    assert "'text_hidden_fcs.0.2.weight': the model expects (32, 32), the file has (16, 32)" in str(err.value)


def test_missing_and_unexpected_keys_are_listed(saved, tmp_path) -> None:
    state = load_file(str(saved["sam"] / "model.safetensors"))
    del state["mm_extractor.beit3.vision_embed.mask_token"]
    del state["visual_model.mask_decoder.iou_token.weight"]
    state["visual_model.extra_head.weight"] = torch.zeros(3)
    folder = _copy_folder(saved["sam"], tmp_path / "bad", state)
    with pytest.raises(CheckpointError) as err:
        create_model("evf_sam_tiny", weights=str(folder))
    message = str(err.value)
    assert "2 missing keys" in message and "1 unexpected keys" in message
    assert "mm_extractor.beit3.vision_embed.mask_token" in message
    assert "visual_model.mask_decoder.iou_token.weight" in message
    assert "visual_model.extra_head.weight" in message


def test_fuser_gamma_and_weight_names(saved, tmp_path) -> None:
    state = load_file(str(saved["sam2"] / "model.safetensors"))
    state["visual_model.memory_encoder.fuser.layers.0.gamma"] = state.pop("visual_model.memory_encoder.fuser.layers.0.weight")
    folder = _copy_folder(saved["sam2"], tmp_path / "stock_names", state)
    reloaded = create_model("evf_sam2_tiny", weights=str(folder))  # stock sam2 name: accepted as is
    assert "visual_model.memory_encoder.fuser.layers.0.gamma" in reloaded.net.state_dict()
    state["visual_model.memory_encoder.fuser.layers.0.weight"] = state["visual_model.memory_encoder.fuser.layers.0.gamma"].clone()
    folder = _copy_folder(saved["sam2"], tmp_path / "both", state)
    with pytest.raises(CheckpointError, match="both hold 'visual_model.memory_encoder.fuser.layers.0.gamma'"):
        create_model("evf_sam2_tiny", weights=str(folder))


class _Payload:
    """Unpickling this would create a directory: the proof that code ran."""

    target = ""

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickled_code_is_never_executed(saved, tmp_path) -> None:
    folder = _copy_folder(saved["sam"], tmp_path / "evil")
    marker = tmp_path / "code_ran"
    payload = _Payload()
    payload.target = str(marker)
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"text_hidden_fcs.0.0.bias": payload}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        create_model("evf_sam_tiny", weights=str(folder))
    assert not marker.exists()
    pickle.loads((folder / "pytorch_model.bin").read_bytes())  # an unsafe reader would have run it
    assert marker.is_dir()


def test_fp16_mixed_bin_is_cast_on_load(saved, tmp_path, image) -> None:
    state = load_file(str(saved["sam"] / "model.safetensors"))
    mixed = {k: (v.half() if i % 2 else v) for i, (k, v) in enumerate(sorted(state.items()))}
    folder = _copy_folder(saved["sam"], tmp_path / "fp16")
    torch.save(mixed, folder / "pytorch_model.bin")
    model = create_model("evf_sam_tiny", weights=str(folder))
    assert {p.dtype for p in model.net.parameters()} == {torch.float32}
    key = sorted(state)[1]
    assert torch.equal(model.net.official_state_dict()[key], state[key].half().float())
    reference = create_model("evf_sam_tiny", weights=str(saved["sam"]))
    a, b = _logits(reference, image, TEXTS), _logits(model, image, TEXTS)
    assert ((a > 0) == (b > 0)).float().mean() > 0.99


def test_architecture_mismatch_is_an_error(saved) -> None:
    with pytest.raises(CheckpointError, match="EvfSam2Model"):
        create_model("evf_sam_tiny", weights=str(saved["sam2"]))
    with pytest.raises(CheckpointError, match="sam: "):
        create_model("evf_sam", weights=str(saved["sam"]))


def test_tiny_names_take_the_checkpoint_sizes(spm_folder, tmp_path, image) -> None:
    """A checkpoint trained at other small sizes (as `evfbench.train` writes them) loads by name alone."""
    sizes = {"beit3_config": {"embed_dim": 48, "layers": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "img_size": 32,
                              "patch_size": 16, "max_text_positions": 64},
             "sam_config": {"encoder_embed_dim": 48, "encoder_depth": 1, "encoder_num_heads": 2, "encoder_global_attn_indexes": [0],
                            "img_size": 64, "patch_size": 8, "window_size": 4, "prompt_embed_dim": 48, "mask_in_chans": 8,
                            "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_num_heads": 2, "iou_head_hidden_dim": 32}}
    trained = _model("sam", spm_folder, fusion="text", **sizes)
    folder = trained.save_pretrained(tmp_path / "custom")
    loaded = create_model("evf_sam_tiny", weights=str(folder))
    assert loaded.config == trained.config
    assert torch.equal(_logits(loaded, image, TEXTS), _logits(trained, image, TEXTS))
    with pytest.raises(CheckpointError, match="evf_sam_tiny / evf_sam2_tiny"):
        create_model("evf_sam", weights=str(folder))


def test_hub_id_offline_names_the_id(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as err:
        create_model("evf_sam.multitask")
    message = str(err.value)
    assert "YxZhang/evf-sam-multitask" in message
    assert "--local-dir DIR" in message and "weights=DIR" in message


def test_a_file_is_not_a_weights_folder(saved) -> None:
    with pytest.raises(CheckpointError, match="is a file"):
        create_model("evf_sam_tiny", weights=str(saved["sam"] / "model.safetensors"))


# ---- initialisation from the original SAM and BEiT-3 files ---------------------------------------
def test_init_from_sam_and_beit3_checkpoints(sam1, spm_folder, tmp_path) -> None:
    sam_file = tmp_path / "sam_test.pth"
    torch.save(sam1.net.visual_model.state_dict(), sam_file)  # stock segment-anything keys
    beit = {f"beit3.{k}": v for k, v in sam1.net.beit3.state_dict().items()}
    beit["mlm_head.weight"] = torch.zeros(4, 32)
    beit_file = tmp_path / "beit3_test.pth"
    torch.save({"model": beit}, beit_file)
    with pytest.warns(UserWarning, match="pretraining-head"):
        model = create_model("evf_sam_tiny", sam_checkpoint=str(sam_file), beit3_checkpoint=str(beit_file), tokenizer=str(spm_folder))
    assert model.load_report["ignored_beit3_heads"] == ["mlm_head.weight"]
    for key, value in sam1.net.state_dict().items():
        if not key.startswith("text_hidden_fcs"):
            assert torch.equal(model.net.state_dict()[key], value), key
    beit["classifier.weight"] = torch.zeros(2)
    torch.save({"model": beit}, beit_file)
    with pytest.raises(CheckpointError, match="classifier.weight"):
        create_model("evf_sam_tiny", beit3_checkpoint=str(beit_file))


def test_sam2_init_reads_the_model_key(sam2, spm_folder, tmp_path) -> None:
    sam_file = tmp_path / "sam2_test.pt"
    torch.save({"model": sam2.net.visual_model.state_dict()}, sam_file)
    model = create_model("evf_sam2_tiny", sam_checkpoint=str(sam_file), tokenizer=str(spm_folder))
    assert torch.equal(model.net.visual_model.no_mem_embed, sam2.net.visual_model.no_mem_embed)


# ---- tokenizer -----------------------------------------------------------------------------------
def test_semantic_token_is_one_id(spm_folder) -> None:
    tok = BeitTokenizer.from_folder(spm_folder)
    semantic = tok.token_id("[semantic]")
    assert semantic == len(tok.sp) + 2 == len(tok) - 1  # first free id, as 64002 after 64000 pieces
    ids = tok.encode("[semantic] sky")
    assert ids[:2] == [0, semantic] and ids[-1] == 2
    assert ids.count(semantic) == 1 and semantic not in tok.encode("semantic sky")
    assert tok.encode("[semantic] sky") == tok.encode("[semantic]sky")
    batch, padding = tok.batch(["[semantic] sky", "the man on the left"])
    assert batch[0, 1] == semantic
    assert batch[padding].eq(1).all() and not padding[:, 0].any()
    assert padding.sum(dim=1).tolist()[1] == 0


def test_ids_follow_the_slow_xlmroberta_convention(spm_folder) -> None:
    import sentencepiece

    tok = BeitTokenizer.from_folder(spm_folder)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_folder / "sentencepiece.bpe.model"))
    text = "the man on the left zzq"
    pieces = sp.encode(text)
    assert 0 in pieces  # "zzq" holds characters unknown to the tiny model
    assert tok.encode(text) == [0, *[p + 1 if p else 3 for p in pieces], 2]
    assert tok.mask_id == len(sp) + 1


def test_tokenizer_agrees_with_transformers(spm_folder) -> None:
    transformers = pytest.importorskip("transformers")
    theirs = transformers.XLMRobertaTokenizer.from_pretrained(str(spm_folder))
    ours = BeitTokenizer.from_folder(spm_folder)
    texts = ["the man on the left", "[semantic] sky", "a  red   car", "kid[semantic]hat", " leading space", "ünïcode zebra"]
    for text in texts:
        assert ours.encode(text) == theirs(text)["input_ids"], text


def test_save_writes_files_the_tokenizer_reads_back(spm_folder, tmp_path) -> None:
    tok = BeitTokenizer.from_folder(spm_folder)
    tok.save(tmp_path)
    again = BeitTokenizer.from_folder(tmp_path)
    assert again.added_tokens == tok.added_tokens
    assert again.encode("[semantic] the left zebra") == tok.encode("[semantic] the left zebra")
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "XLMRobertaTokenizer"


def test_model_without_tokenizer_says_how_to_fix() -> None:
    torch.manual_seed(0)
    model = create_model("evf_sam_tiny")
    with pytest.raises(Exception, match="tokenizer="):
        model.predict(random_image(20, 30), make_group(["x"], 20, 30))


# ---- registry --------------------------------------------------------------------------------------
def test_cards_have_provenance() -> None:
    assert {"evf_sam.default", "evf_sam.multitask", "evf_sam2.default", "evf_sam2.multitask"} <= set(list_pretrained())
    expected = {
        "evf_sam.default": "YxZhang/evf-sam", "evf_sam.multitask": "YxZhang/evf-sam-multitask",
        "evf_sam2.default": "YxZhang/evf-sam2", "evf_sam2.multitask": "YxZhang/evf-sam2-multitask",
    }
    for name, hub_id in expected.items():
        card, tag = get_model_card(name)
        weight = card.tags[tag]
        assert weight.args["weights"] == hub_id
        assert weight.license == "Apache-2.0"
        assert weight.source == f"https://huggingface.co/{hub_id}"
        assert "2406.20076" in weight.paper
    for name in ("evf_sam_tiny", "evf_sam2_tiny"):
        card, _ = get_model_card(name)
        assert card.group == "test" and "TEST ARCHITECTURE" in card.description


def test_network_class_is_shared(sam1, sam2) -> None:
    assert isinstance(sam1.net, EvfSamNet) and isinstance(sam2.net, EvfSamNet)
    assert sam1.config.family == "sam" and sam2.config.family == "sam2"
    with empty_init():
        assert next(EvfSamNet(sam1.config).parameters()).is_meta
