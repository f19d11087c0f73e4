"""The SAM side of EVF-SAM, built from the stock ``segment_anything`` and ``sam2`` packages.

A backend builds the stock ``visual_model`` (its parameter names are those of the official
checkpoints under ``visual_model.``) and implements four steps around it:

==============  ===========================================  =========================================
step            SAM-1 (:class:`Sam1Backend`)                 SAM-2 (:class:`Sam2Backend`)
==============  ===========================================  =========================================
preprocess      ResizeLongestSide(img_size) (PIL bilinear,    squash to img_size x img_size (bilinear),
                ``int(x * scale + 0.5)``), normalise, zero   normalise; no padding
                pad right / bottom
encode          ``image_encoder`` -> ``(1, C, h, w)``         ``forward_image`` + no-memory embedding
                                                             -> image embedding + 2 high-res levels
decode          sparse prompt = the projected feature        same, 3 multimask outputs, keep the one
                ``(B, 1, C)`` alone; dense = no_mask_embed;  with the highest predicted IoU; object
                ``multimask_output=False``                   score ignored
postprocess     bilinear to img_size, crop the padding,      bilinear from the low-res logits straight
                bilinear to the original size                to the original size
==============  ===========================================  =========================================

Pixel mean / std: ``[123.675, 116.28, 103.53]`` / ``[58.395, 57.12, 57.375]`` on 0..255 for both.
The stock prompt encoders take no text, so their outputs are built here (empty sparse
embeddings + the feature; the no-mask dense embedding), which is what the reference's modified
prompt encoders compute.

Sizes come from :class:`SamConfig` (SAM-1: the arguments of ``segment_anything``'s
``_build_sam``, plus the decoder sizes so that test architectures can be small) and
:class:`Sam2Config` (a ``sam2`` package config file plus dotted overrides under ``model``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SamConfig", "Sam2Config", "SAM_CONFIGS", "SAM2_CONFIGS", "Sam1Backend", "Sam2Backend",
    "postprocess_sam1", "postprocess_sam2", "PIXEL_MEAN", "PIXEL_STD",
]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


# ---- configurations -------------------------------------------------------------------------
@dataclass(frozen=True)
class SamConfig:
    """SAM-1 sizes (defaults: ViT-H, as ``segment_anything.build_sam_vit_h``)."""

    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(int(i) for i in self.encoder_global_attn_indexes))

    @property
    def prompt_dim(self) -> int:
        return self.prompt_embed_dim

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown SAM config fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


SAM_CONFIGS: dict[str, SamConfig] = {
    "huge": SamConfig(),
    "large": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23)),
    "base": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=(2, 5, 8, 11)),
    # A test architecture: random weights only.
    "test": SamConfig(
        encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,), img_size=128,
        window_size=4, prompt_embed_dim=32, mask_in_chans=4, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
    ),
}


@dataclass(frozen=True)
class Sam2Config:
    """A ``sam2`` package config (path inside the package) plus dotted overrides under ``model``."""

    config_file: str = "configs/sam2/sam2_hiera_l.yaml"
    overrides: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        items = self.overrides.items() if isinstance(self.overrides, dict) else self.overrides
        frozen = tuple(sorted((str(k), _freeze(v)) for k, v in items))
        object.__setattr__(self, "overrides", frozen)

    def compose(self) -> Any:
        """The OmegaConf ``model`` node with the overrides applied."""
        import sam2
        from omegaconf import OmegaConf

        path = Path(sam2.__file__).resolve().parent / self.config_file
        if not path.is_file():
            raise FileNotFoundError(f"the installed sam2 package has no config {self.config_file} ({path})")
        conf = OmegaConf.load(path)
        for key, value in self.overrides:
            OmegaConf.update(conf, f"model.{key}", _thaw(value), merge=False)
        return conf.model

    @property
    def prompt_dim(self) -> int:
        return int(self.compose().image_encoder.neck.d_model)

    @property
    def image_size(self) -> int:
        return int(self.compose().image_size)

    def to_dict(self) -> dict[str, Any]:
        return {"config_file": self.config_file, "overrides": {k: _thaw(v) for k, v in self.overrides}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sam2Config":
        unknown = set(data) - {"config_file", "overrides"}
        if unknown:
            raise ValueError(f"unknown SAM-2 config fields {sorted(unknown)}; known: ['config_file', 'overrides']")
        return cls(config_file=data.get("config_file", cls.config_file), overrides=tuple((data.get("overrides") or {}).items()))


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


# The test architecture: every SAM-2 module of the Hiera-L config, shrunk (image 128, width 32).
_SAM2_TEST_OVERRIDES = {
    "image_size": 128,
    "image_encoder.trunk.embed_dim": 8,
    "image_encoder.trunk.num_heads": 1,
    "image_encoder.trunk.stages": [1, 1, 2, 1],
    "image_encoder.trunk.global_att_blocks": [3],
    "image_encoder.trunk.window_pos_embed_bkg_spatial_size": [4, 4],
    "image_encoder.trunk.window_spec": [4, 4, 4, 2],
    "image_encoder.neck.d_model": 32,
    "image_encoder.neck.position_encoding.num_pos_feats": 32,
    "image_encoder.neck.backbone_channel_list": [64, 32, 16, 8],
    "memory_attention.d_model": 32,
    "memory_attention.num_layers": 1,
    "memory_attention.layer.d_model": 32,
    "memory_attention.layer.dim_feedforward": 64,
    "memory_attention.layer.self_attention.embedding_dim": 32,
    "memory_attention.layer.self_attention.feat_sizes": [8, 8],
    "memory_attention.layer.cross_attention.embedding_dim": 32,
    "memory_attention.layer.cross_attention.feat_sizes": [8, 8],
    "memory_attention.layer.cross_attention.kv_in_dim": 16,
    "memory_encoder.out_dim": 16,
    "memory_encoder.in_dim": 32,
    "memory_encoder.position_encoding.num_pos_feats": 16,
    "memory_encoder.mask_downsampler.embed_dim": 32,
    "memory_encoder.fuser.layer.dim": 32,
}

SAM2_CONFIGS: dict[str, Sam2Config] = {
    "large": Sam2Config("configs/sam2/sam2_hiera_l.yaml"),
    "base_plus": Sam2Config("configs/sam2/sam2_hiera_b+.yaml"),
    "small": Sam2Config("configs/sam2/sam2_hiera_s.yaml"),
    "tiny": Sam2Config("configs/sam2/sam2_hiera_t.yaml"),
    "test": Sam2Config("configs/sam2/sam2_hiera_l.yaml", tuple(_SAM2_TEST_OVERRIDES.items())),
}


# ---- post-processing (pure functions, tested on hand-made logits) ----------------------------
def postprocess_sam1(low_res: torch.Tensor, input_size: tuple[int, int], img_size: int, original_size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` low-res logits -> ``(B, H, W)``: bilinear to ``img_size``, crop the padding
    to ``input_size`` (the resized image), bilinear to ``original_size``."""
    x = F.interpolate(low_res[:, None].float(), (img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)[:, 0]


def postprocess_sam2(low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` low-res logits of a squashed image -> ``(B, H, W)``, one bilinear resize."""
    return F.interpolate(low_res[:, None].float(), tuple(original_size), mode="bilinear", align_corners=False)[:, 0]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def _no_mask_dense(prompt_encoder: nn.Module, batch: int) -> torch.Tensor:
    h, w = prompt_encoder.image_embedding_size
    return prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)


@dataclass
class SamFeatures:
    """What the SAM side keeps of one image: the embedding(s), the dense positional encoding,
    and the resized size before padding (SAM-1) needed to crop the masks."""

    image_embed: torch.Tensor
    image_pe: torch.Tensor
    high_res: list[torch.Tensor] | None = None
    input_size: tuple[int, int] | None = None


# ---- backends -------------------------------------------------------------------------------
class Sam1Backend:
    """SAM-1 (``segment_anything``): ``visual_model.{image_encoder,prompt_encoder,mask_decoder}``."""

    family: ClassVar[str] = "sam"
    architecture: ClassVar[str] = "EvfSamModel"

    def __init__(self, cfg: SamConfig) -> None:
        self.cfg = cfg
        self.img_size = cfg.img_size

    def build(self) -> nn.Module:
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        c = self.cfg
        grid = c.img_size // c.patch_size
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=c.encoder_depth, embed_dim=c.encoder_embed_dim, img_size=c.img_size, mlp_ratio=4,
                norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=c.encoder_num_heads, patch_size=c.patch_size,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=c.encoder_global_attn_indexes,
                window_size=c.window_size, out_chans=c.prompt_embed_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=c.prompt_embed_dim, image_embedding_size=(grid, grid),
                input_image_size=(c.img_size, c.img_size), mask_in_chans=c.mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=c.decoder_depth, embedding_dim=c.prompt_embed_dim, mlp_dim=c.decoder_mlp_dim, num_heads=c.decoder_num_heads,
                ),
                transformer_dim=c.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=c.iou_head_hidden_dim,
            ),
            pixel_mean=list(PIXEL_MEAN),
            pixel_std=list(PIXEL_STD),
        )
        return sam.eval()

    def preprocess(self, image: np.ndarray, device: torch.device) -> tuple[torch.Tensor, tuple[int, int]]:
        """RGB ``HWC uint8`` -> ``(1, 3, S, S)`` normalised, padded pixels and the resized ``(h, w)``."""
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(self.img_size).apply_image(np.ascontiguousarray(image))
        h, w = resized.shape[:2]
        x = _normalise(torch.from_numpy(resized).to(device).permute(2, 0, 1).float())
        x = F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
        return x.unsqueeze(0), (h, w)

    def encode(self, model: nn.Module, image: np.ndarray, device: torch.device) -> SamFeatures:
        pixels, input_size = self.preprocess(image, device)
        embed = model.image_encoder(pixels)
        return SamFeatures(image_embed=embed, image_pe=model.prompt_encoder.get_dense_pe(), input_size=input_size)

    def decode(self, model: nn.Module, features: SamFeatures, prompt: torch.Tensor) -> torch.Tensor:
        """``(B, 1, C)`` prompt -> ``(B, h, w)`` low-res logits (the single-mask output)."""
        low_res, _ = model.mask_decoder(
            image_embeddings=features.image_embed,
            image_pe=features.image_pe,
            sparse_prompt_embeddings=prompt,
            dense_prompt_embeddings=_no_mask_dense(model.prompt_encoder, prompt.size(0)),
            multimask_output=False,
        )
        return low_res[:, 0]

    def decode_batched(self, model: nn.Module, image_embed: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """One image embedding per prompt (training: texts of several images in one pass).

        ``image_embed`` ``(B, C, h, w)`` row ``b`` goes with ``sparse`` ``(B, k, C)`` row ``b``
        (``dense``: the no-mask embedding if ``None``) -> ``(B, 4h, 4w)`` single-mask logits.
        The stock ``MaskDecoder.predict_masks`` repeats one image for all prompts; this is the
        same computation with the image rows given per prompt.
        """
        dec = model.mask_decoder
        if dense is None:
            dense = _no_mask_dense(model.prompt_encoder, sparse.size(0))
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse], dim=1)
        src = image_embed + dense
        pos = model.prompt_encoder.get_dense_pe().expand(src.size(0), -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos, tokens)
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1, :])  # mask token 0: multimask_output=False
        _, c2, h2, w2 = upscaled.shape
        return (hyper.unsqueeze(1) @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, h2, w2)

    def postprocess(self, low_res: torch.Tensor, features: SamFeatures, original_size: tuple[int, int]) -> torch.Tensor:
        assert features.input_size is not None
        return postprocess_sam1(low_res, features.input_size, self.img_size, original_size)

    # checkpoint names are the stock ones
    def to_official(self, key: str) -> str:
        return key

    def from_official(self, key: str) -> str:
        return key


class Sam2Backend:
    """SAM-2 (``sam2`` package, v2.0 configs): ``visual_model.{image_encoder,sam_prompt_encoder,
    sam_mask_decoder,memory_attention,memory_encoder,...}``.

    The official EVF-SAM2 files call ``memory_encoder.fuser.layers.N.gamma`` ``...layers.N.weight``;
    :meth:`from_official` / :meth:`to_official` rename it.
    """

    family: ClassVar[str] = "sam2"
    architecture: ClassVar[str] = "EvfSam2Model"
    _FUSER = "memory_encoder.fuser.layers."

    def __init__(self, cfg: Sam2Config) -> None:
        self.cfg = cfg
        self.img_size = cfg.image_size

    def build(self) -> nn.Module:
        from hydra.utils import instantiate

        return instantiate(self.cfg.compose(), _recursive_=True).eval()

    def preprocess(self, image: np.ndarray, device: torch.device) -> torch.Tensor:
        """RGB ``HWC uint8`` -> ``(1, 3, S, S)``: squashed (bilinear), normalised."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().unsqueeze(0)
        x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return _normalise(x[0]).unsqueeze(0)

    def encode(self, model: nn.Module, image: np.ndarray, device: torch.device) -> SamFeatures:
        pixels = self.preprocess(image, device)
        backbone_out = model.forward_image(pixels)
        _, feats, _, sizes = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(f.size(1), f.size(2), *s) for f, s in zip(feats, sizes)]
        return SamFeatures(image_embed=maps[-1], image_pe=model.sam_prompt_encoder.get_dense_pe(), high_res=maps[:-1])

    def decode(self, model: nn.Module, features: SamFeatures, prompt: torch.Tensor) -> torch.Tensor:
        """``(B, 1, C)`` prompt -> ``(B, h, w)``: of the 3 multimask outputs, the highest predicted IoU."""
        low_res, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=features.image_embed,
            image_pe=features.image_pe,
            sparse_prompt_embeddings=prompt,
            dense_prompt_embeddings=_no_mask_dense(model.sam_prompt_encoder, prompt.size(0)),
            multimask_output=True,
            repeat_image=True,
            high_res_features=features.high_res,
        )
        best = iou.argmax(dim=1)
        return low_res[torch.arange(low_res.size(0), device=low_res.device), best]

    def postprocess(self, low_res: torch.Tensor, features: SamFeatures, original_size: tuple[int, int]) -> torch.Tensor:
        return postprocess_sam2(low_res, original_size)

    def to_official(self, key: str) -> str:
        return self._rename(key, ".gamma", ".weight")

    def from_official(self, key: str) -> str:
        return self._rename(key, ".weight", ".gamma")

    def _rename(self, key: str, old: str, new: str) -> str:
        # only the CXBlock's own parameter: memory_encoder.fuser.layers.<N><old>
        if key.startswith(self._FUSER) and key.endswith(old):
            middle = key[len(self._FUSER) : -len(old)]
            if middle.isdigit():
                return f"{self._FUSER}{middle}{new}"
        return key
