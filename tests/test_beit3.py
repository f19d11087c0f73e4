"""BEiT-3: names, the multiway split, attention vs the explicit formula, padding, early-fusion K."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evfbench.models.beit3 import BEIT3_CONFIGS, BEiT3, Beit3Config, preprocess
from evfbench.models.checkpoint import empty_init, state_dict_summary

CFG = BEIT3_CONFIGS["test"]  # width 32, 2 layers, 2 heads, 64 px -> 16 patches + CLS = 17 vision tokens


def spread(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Variance-preserving random weights (the 0.02 init makes layers nearly the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # LayerNorm gains
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


@pytest.fixture(scope="module")
def model() -> BEiT3:
    torch.manual_seed(0)
    return spread(BEiT3(CFG)).eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 64, 64, generator=g)
    lengths = [7, 4, 2]
    ids = torch.ones(3, 7, dtype=torch.long)  # pad id 1
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, CFG.vocab_size, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = 0, 2
    padding = ids == 1
    padding[:, 0] = False
    return pixels, ids, padding


def reference_forward(model: BEiT3, pixels: torch.Tensor, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """torchscale 0.2.0's computation written out: q scaled before q k^T, -inf on padded keys,
    softmax in fp32, positions from 2, padded tokens zeroed before layer 1."""
    nv, (b, length), d, h = CFG.num_vision_tokens, ids.shape, CFG.embed_dim, CFG.heads
    pos = model.encoder.embed_positions
    x = torch.cat([
        model.vision_embed(pixels) + pos.A.weight[torch.arange(2, nv + 2)],
        model.text_embed.weight[ids] + pos.B.weight[torch.arange(2, length + 2)],
    ], dim=1)
    pad = torch.cat([torch.zeros(b, nv, dtype=torch.bool), padding], dim=1)
    x = x * (1 - pad.float()).unsqueeze(-1)

    def mw(pair, t):
        return torch.cat([pair.A(t[:, :nv]), pair.B(t[:, nv:])], dim=1)

    for layer in model.encoder.layers:
        att = layer.self_attn
        y = mw(layer.self_attn_layer_norm, x)
        q = mw(att.q_proj, y) * (d // h) ** -0.5
        k, v = mw(att.k_proj, y), mw(att.v_proj, y)
        q, k, v = (t.view(b, -1, h, d // h).transpose(1, 2).reshape(b * h, -1, d // h) for t in (q, k, v))
        w = torch.bmm(q, k.transpose(1, 2)).view(b, h, x.size(1), x.size(1))
        w = w.masked_fill(pad[:, None, None, :], float("-inf")).view(b * h, x.size(1), x.size(1))
        w = F.softmax(w, dim=-1, dtype=torch.float32).type_as(w)
        a = torch.bmm(w, v).view(b, h, -1, d // h).transpose(1, 2).reshape(b, -1, d)
        x = x + mw(att.out_proj, mw(att.inner_attn_ln, a))
        y = mw(layer.final_layer_norm, x)
        ffn = torch.cat([
            e.fc2(e.ffn_layernorm(F.gelu(e.fc1(part).float()).type_as(part)))
            for e, part in ((layer.ffn.A, y[:, :nv]), (layer.ffn.B, y[:, nv:]))
        ], dim=1)
        x = x + ffn
    return mw(model.encoder.layer_norm, x)


def test_state_dict_names_are_the_official_ones() -> None:
    keys = set(BEiT3(CFG).state_dict())
    expected = {"text_embed.weight", "vision_embed.proj.weight", "vision_embed.proj.bias", "vision_embed.cls_token",
                "vision_embed.mask_token", "encoder.embed_positions.A.weight", "encoder.embed_positions.B.weight"}
    for e in "AB":
        expected |= {f"encoder.layer_norm.{e}.{p}" for p in ("weight", "bias")}
        for n in range(CFG.layers):
            pre = f"encoder.layers.{n}"
            for mod in ("q_proj", "k_proj", "v_proj", "out_proj", "inner_attn_ln"):
                expected |= {f"{pre}.self_attn.{mod}.{e}.{p}" for p in ("weight", "bias")}
            for mod in ("self_attn_layer_norm", "final_layer_norm"):
                expected |= {f"{pre}.{mod}.{e}.{p}" for p in ("weight", "bias")}
            for mod in ("fc1", "ffn_layernorm", "fc2"):
                expected |= {f"{pre}.ffn.{e}.{mod}.{p}" for p in ("weight", "bias")}
    assert keys == expected


def test_large_and_base_shapes_on_meta() -> None:
    with empty_init():
        large = BEiT3(BEIT3_CONFIGS["large"])
        base = BEiT3(BEIT3_CONFIGS["base"])
    sd = large.state_dict()
    assert state_dict_summary(sd) == (971, 672_702_464)  # 7 + 24 x 40 + 4 tensors; paper: 673M
    assert sd["text_embed.weight"].shape == (64010, 1024)
    assert sd["encoder.embed_positions.A.weight"].shape == (199, 1024)  # 197 vision positions from 2
    assert sd["encoder.embed_positions.B.weight"].shape == (1024, 1024)
    assert sd["encoder.layers.23.ffn.B.ffn_layernorm.weight"].shape == (4096,)
    assert BEIT3_CONFIGS["large"].num_vision_tokens == 197
    bsd = base.state_dict()
    assert len(bsd) == 7 + 12 * 40 + 4
    assert bsd["encoder.layers.11.self_attn.q_proj.A.weight"].shape == (768, 768)


def test_sdpa_matches_the_explicit_fp32_softmax_formula(model, inputs) -> None:
    pixels, ids, padding = inputs
    with torch.no_grad():
        ours = model(pixels, ids, padding)
        ref = reference_forward(model, pixels, ids, padding)
    keep = torch.cat([torch.ones(3, CFG.num_vision_tokens, dtype=torch.bool), ~padding], dim=1)
    assert ours.shape == (3, CFG.num_vision_tokens + 7, CFG.embed_dim)
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours[keep], ref[keep], rtol=1e-4, atol=1e-5)


def test_split_falls_at_the_number_of_vision_tokens(model, inputs) -> None:
    pixels, ids, padding = inputs
    assert CFG.num_vision_tokens == (64 // 16) ** 2 + 1 == 17
    changed = spread(BEiT3(CFG), seed=0).eval()
    with torch.no_grad():
        changed.encoder.layer_norm.B.bias.add_(1.0)  # the text expert of the final LN only
        a, b = model(pixels, ids, padding), changed(pixels, ids, padding)
    assert torch.equal(a[:, :17], b[:, :17])
    torch.testing.assert_close(b[:, 17:] - a[:, 17:], torch.ones_like(a[:, 17:]))


def test_batch_with_padding_equals_one_by_one(model, inputs) -> None:
    pixels, ids, padding = inputs
    with torch.no_grad():
        batched = model(pixels, ids, padding)
        for row in range(3):
            n = int((~padding[row]).sum())
            alone = model(pixels[row : row + 1], ids[row : row + 1, :n])
            torch.testing.assert_close(batched[row, : 17 + n], alone[0], rtol=1e-4, atol=1e-5)


def test_padding_content_does_not_matter(model, inputs) -> None:
    pixels, ids, padding = inputs
    other = ids.masked_fill(padding, 57)
    with torch.no_grad():
        a, b = model(pixels, ids, padding), model(pixels, other, padding)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-6)


def test_early_fusion_k(model, inputs) -> None:
    pixels, ids, padding = inputs
    with torch.no_grad():
        full = model(pixels, ids, padding)
        all_layers = model(pixels, ids, padding, fuse_layers=CFG.layers)
        separate = model(pixels, ids, padding, fuse_layers=0)
        one = model(pixels, ids, padding, fuse_layers=1)
        image_only = model.forward_image(pixels)
        text_only = model.forward_text(ids, padding)
    assert torch.equal(full, all_layers)
    torch.testing.assert_close(separate[:, :17], image_only, rtol=1e-4, atol=1e-5)
    keep = ~padding
    torch.testing.assert_close(separate[:, 17:][keep], text_only[keep], rtol=1e-4, atol=1e-5)
    # fusing the first layer only is neither of the two
    assert (one[:, 0] - full[:, 0]).abs().max() > 1e-3
    assert (one[:, 0] - separate[:, 0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="fuse_layers"):
        model(pixels, ids, padding, fuse_layers=3)


def test_vision_tokens_cache_equals_pixels(model, inputs) -> None:
    pixels, ids, padding = inputs
    with torch.no_grad():
        cached = model.embed_vision(pixels[:1])
        a = model(pixels[:1].expand(3, -1, -1, -1), ids, padding)
        b = model(text_ids=ids, text_padding_mask=padding, vision_tokens=cached)
    assert torch.equal(a, b)


def test_preprocess_squashes_and_normalises() -> None:
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    image[:, :, 0] = 255
    x = preprocess(image, img_size=64)
    assert x.shape == (1, 3, 64, 64)
    torch.testing.assert_close(x[0, 0], torch.ones(64, 64))
    torch.testing.assert_close(x[0, 1], -torch.ones(64, 64))


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown BEiT-3 config fields"):
        Beit3Config.from_dict({"embed_dim": 32, "depth": 2})
