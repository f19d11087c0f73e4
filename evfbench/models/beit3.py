"""BEiT-3: the multiway transformer EVF-SAM uses as its early-fusion multimodal encoder.

One joint sequence ``[vision tokens ; text tokens]`` goes through a stack of pre-LN layers
whose self-attention spans both modalities (the early fusion), while every LayerNorm and
Linear exists twice: expert ``A`` for the vision positions and expert ``B`` for the text
positions. The split is at the number of vision tokens, ``(img_size / patch_size)^2 + 1``
(197 for 224 / 16).

Parameter names follow the official checkpoints (torchscale 0.2.0 / unilm BEiT-3), so an
EVF-SAM state dict loads under ``mm_extractor.beit3.`` unchanged::

    text_embed.weight                                     (vocab, D)
    vision_embed.proj.{weight,bias}  vision_embed.{cls_token,mask_token}
    encoder.embed_positions.{A,B}.weight                  (Nv + 2, D), (max_text_positions, D)
    encoder.layers.N.self_attn.{q_proj,k_proj,v_proj,out_proj,inner_attn_ln}.{A,B}.*
    encoder.layers.N.self_attn_layer_norm.{A,B}.*
    encoder.layers.N.ffn.{A,B}.{fc1,ffn_layernorm,fc2}.*
    encoder.layers.N.final_layer_norm.{A,B}.*
    encoder.layer_norm.{A,B}.*

Conventions: pixels are ``(B, 3, img_size, img_size)`` float, already normalised
(see :func:`preprocess`); text ids are ``(B, L)`` long, right-padded; the text padding mask
is ``(B, L) bool`` with **True = padding**. Positions start at 2 and count separately per
segment. Padded positions are zeroed before the first layer and never attended to.

``fuse_layers=K`` keeps the cross-modal attention in the first ``K`` layers only; later layers
attend within each modality (a block-diagonal mask), the paper's Tab. 3 "Early L1-12" setting.
:meth:`BEiT3.forward_text` and :meth:`BEiT3.forward_image` run one modality alone (the text-only
and late-fusion baselines); a joint pass with ``fuse_layers=0`` equals the two side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Beit3Config", "BEIT3_CONFIGS", "BEiT3", "preprocess"]


@dataclass(frozen=True)
class Beit3Config:
    """Sizes of a BEiT-3 encoder (defaults: BEiT-3 large, patch 16, 224)."""

    embed_dim: int = 1024
    layers: int = 24
    heads: int = 16
    ffn_dim: int = 4096
    vocab_size: int = 64010
    img_size: int = 224
    patch_size: int = 16
    max_text_positions: int = 1024
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise ValueError(f"BEiT-3 embed_dim {self.embed_dim} is not divisible by heads {self.heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"BEiT-3 img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_vision_tokens(self) -> int:
        """Patches + the image [CLS]; where the multiway split falls (197 for 224 / 16)."""
        return self.num_patches + 1

    @property
    def max_text_len(self) -> int:
        """Longest text (with bos/eos) the position table holds; positions start at 2."""
        return self.max_text_positions - 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Beit3Config":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown BEiT-3 config fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


BEIT3_CONFIGS: dict[str, Beit3Config] = {
    "large": Beit3Config(),
    "base": Beit3Config(embed_dim=768, layers=12, heads=12, ffn_dim=3072),
    # A test architecture: random weights only, exercises every code path in milliseconds.
    "test": Beit3Config(embed_dim=32, layers=2, heads=2, ffn_dim=64, vocab_size=256, img_size=64, max_text_positions=128),
}


def preprocess(image: np.ndarray | torch.Tensor, img_size: int = 224, device: str | torch.device = "cpu") -> torch.Tensor:
    """RGB ``HWC uint8`` -> ``(1, 3, img_size, img_size)`` float: [0, 1], squashed (bicubic,
    no antialias), normalised with mean = std = 0.5 (the reference's torchvision pipeline)."""
    x = torch.as_tensor(image).to(device)
    x = x.permute(2, 0, 1).unsqueeze(0).float() / 255.0
    x = F.interpolate(x, size=(img_size, img_size), mode="bicubic", align_corners=False, antialias=False)
    return (x - 0.5) / 0.5


class Multiway(nn.Module):
    """Two copies of a module: ``A`` for the first ``split`` positions, ``B`` for the rest."""

    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        if split >= x.size(1):
            return self.A(x)
        if split <= 0:
            return self.B(x)
        return torch.cat([self.A(x[:, :split]), self.B(x[:, split:])], dim=1)


class VisionEmbedding(nn.Module):
    """Patch projection plus the image [CLS]; ``mask_token`` exists for checkpoint compatibility."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"BEiT-3 expects {self.img_size}x{self.img_size} pixels, got {tuple(pixels.shape[-2:])}")
        x = self.proj(pixels).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)


class MultiwayAttention(nn.Module):
    """Self-attention over the joint sequence; projections and the sub-LN are multiway."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.heads = cfg.heads
        self.q_proj = Multiway(lambda: nn.Linear(d, d))
        self.k_proj = Multiway(lambda: nn.Linear(d, d))
        self.v_proj = Multiway(lambda: nn.Linear(d, d))
        self.out_proj = Multiway(lambda: nn.Linear(d, d))
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(d, eps=cfg.layer_norm_eps))

    def forward(self, x: torch.Tensor, split: int, attend: torch.Tensor | None) -> torch.Tensor:
        """``attend``: bool, broadcastable to ``(B, heads, T, T)``, True = may attend."""
        b, t, d = x.shape

        def heads(proj: Multiway) -> torch.Tensor:
            return proj(x, split).view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj), attn_mask=attend)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.out_proj(self.inner_attn_ln(out, split), split)


class FeedForward(nn.Module):
    """``fc1 -> GELU (exact) -> ffn_layernorm (sub-LN) -> fc2``."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.ffn_layernorm = nn.LayerNorm(cfg.ffn_dim, eps=cfg.layer_norm_eps)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Pre-LN layer: ``x += attn(LN(x))``; ``x += ffn(LN(x))``, every LN and Linear multiway."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.self_attn = MultiwayAttention(cfg)
        self.self_attn_layer_norm = Multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps))
        self.ffn = Multiway(lambda: FeedForward(cfg))
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps))

    def forward(self, x: torch.Tensor, split: int, attend: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x, split), split, attend)
        return x + self.ffn(self.final_layer_norm(x, split), split)


class PositionTables(nn.Module):
    """The two learned position tables, ``A`` (vision) and ``B`` (text); ids start at 2."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.A = nn.Embedding(cfg.num_vision_tokens + 2, cfg.embed_dim)
        self.B = nn.Embedding(cfg.max_text_positions, cfg.embed_dim)

    def forward(self, table: str, length: int) -> torch.Tensor:
        """Positions ``2 .. length + 1`` of ``table`` as ``(1, length, D)``."""
        weight = self.A.weight if table == "A" else self.B.weight
        if length + 2 > weight.size(0):
            raise ValueError(f"sequence of {length} tokens exceeds the {weight.size(0) - 2} positions of table {table}")
        return weight[2 : length + 2].unsqueeze(0)


class Encoder(nn.Module):
    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.embed_positions = PositionTables(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.layer_norm = Multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps))


class BEiT3(nn.Module):
    """The BEiT-3 encoder; see the module docstring for names, shapes and conventions."""

    def __init__(self, cfg: Beit3Config = Beit3Config()) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.vision_embed = VisionEmbedding(cfg)
        self.encoder = Encoder(cfg)
        self.apply(_init_weights)

    # ---- embeddings -------------------------------------------------------------------
    def embed_vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` pixels -> ``(B, Nv, D)`` vision tokens with their positions.

        Independent of the text: compute it once per image and pass it as ``vision_tokens``.
        """
        x = self.vision_embed(pixels)
        return x + self.encoder.embed_positions("A", x.size(1))

    def embed_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, D)`` text tokens with their positions."""
        if text_ids.max() >= self.cfg.vocab_size or text_ids.min() < 0:
            raise ValueError(f"token id out of range [0, {self.cfg.vocab_size}): {int(text_ids.max())}")
        x = self.text_embed(text_ids)
        return x + self.encoder.embed_positions("B", x.size(1))

    # ---- forward paths ----------------------------------------------------------------
    def forward(
        self,
        pixels: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        *,
        vision_tokens: torch.Tensor | None = None,
        fuse_layers: int | None = None,
    ) -> torch.Tensor:
        """Joint early-fusion pass -> ``(B, Nv + L, D)``; index 0 is the image [CLS].

        Args:
            pixels: ``(B, 3, S, S)`` normalised pixels, or ``None`` when ``vision_tokens`` is given.
            text_ids: ``(B, L)`` right-padded ids.
            text_padding_mask: ``(B, L) bool``, True = padding (``None``: no padding).
            vision_tokens: output of :meth:`embed_vision`; a batch of 1 is broadcast to ``B``.
            fuse_layers: attend across modalities in the first ``K`` layers only (``None``: all).
        """
        if text_ids is None:
            raise ValueError("the joint pass needs text_ids; use forward_image for the image alone")
        if vision_tokens is None:
            if pixels is None:
                raise ValueError("pass pixels or vision_tokens")
            vision_tokens = self.embed_vision(pixels)
        b = text_ids.size(0)
        if vision_tokens.size(0) != b:
            vision_tokens = vision_tokens.expand(b, -1, -1)
        nv = vision_tokens.size(1)
        x = torch.cat([vision_tokens, self.embed_text(text_ids)], dim=1)
        pad = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if text_padding_mask is not None:
            pad[:, nv:] = text_padding_mask.to(device=x.device, dtype=torch.bool)
        return self._encode(x, split=nv, pad=pad, fuse_layers=fuse_layers)

    def forward_text(self, text_ids: torch.Tensor, text_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text alone (all expert ``B``) -> ``(B, L, D)``; index 0 is the text [CLS] (``<s>``)."""
        x = self.embed_text(text_ids)
        pad = None if text_padding_mask is None else text_padding_mask.to(device=x.device, dtype=torch.bool)
        return self._encode(x, split=0, pad=pad, fuse_layers=None)

    def forward_image(self, pixels: torch.Tensor | None = None, *, vision_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Image alone (all expert ``A``) -> ``(B, Nv, D)``; index 0 is the image [CLS]."""
        x = self.embed_vision(pixels) if vision_tokens is None else vision_tokens
        return self._encode(x, split=x.size(1), pad=None, fuse_layers=None)

    def _encode(self, x: torch.Tensor, split: int, pad: torch.Tensor | None, fuse_layers: int | None) -> torch.Tensor:
        joint = key_mask = None
        if pad is not None:
            x = x * (~pad).unsqueeze(-1).to(x.dtype)
            if pad.any():
                key_mask = (~pad)[:, None, None, :]  # (B, 1, 1, T), True = may attend
                joint = key_mask
        separate = joint
        n_layers = len(self.encoder.layers)
        k = n_layers if fuse_layers is None else int(fuse_layers)
        if not 0 <= k <= n_layers:
            raise ValueError(f"fuse_layers must be in [0, {n_layers}], got {fuse_layers}")
        if k < n_layers and 0 < split < x.size(1):
            modality = torch.arange(x.size(1), device=x.device) >= split
            block = (modality[:, None] == modality[None, :])[None, None]  # (1, 1, T, T)
            separate = block if key_mask is None else block & key_mask
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x, split, joint if i < k else separate)
        return self.encoder.layer_norm(x, split)


def _init_weights(module: nn.Module) -> None:
    """Random initialisation (trunc-normal 0.02, as torchscale / unilm); checkpoints overwrite it."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, VisionEmbedding):
        nn.init.trunc_normal_(module.cls_token, std=0.02)
        nn.init.trunc_normal_(module.mask_token, std=0.02)
