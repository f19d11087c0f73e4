"""EVF-SAM: BEiT-3 early vision-language fusion prompting SAM (SAM-1) or SAM-2.

    >>> from evfbench.registry import create_model
    >>> model = create_model("evf_sam.multitask")                    # YxZhang/evf-sam-multitask
    >>> model = create_model("evf_sam2", weights="/ckpt/evf-sam2", dtype="bf16")
    >>> masks = model.predict(image, group)                          # (N, H, W) bool

Pipeline per image (``embed_image``, once): the SAM branch (see :mod:`.sam_backends`) and the
BEiT-3 branch's image half (squash to 224, mean = std = 0.5, patch embedding + positions).
Per batch of expressions (``segment``): lower-case + strip, tokenize, one joint BEiT-3 pass
over ``[vision ; text]`` with the padding masked, the image [CLS] (index 0) through the
projector ``text_hidden_fcs`` -> ``(B, 1, 256)``: the whole sparse prompt of SAM's mask
decoder, with the no-mask dense prompt. Masks at the original size, logits > 0.

The network :class:`EvfSamNet` has the official parameter names (``visual_model.*``,
``mm_extractor.beit3.*``, ``text_hidden_fcs.0.{0,2}.*``); :meth:`EvfSam.save_pretrained`
writes the official folder layout and the builders read it back (``weights=FOLDER`` or a
Hugging Face id). ``fusion`` selects the prompt feature (paper Tab. 3): ``early`` (the paper,
default), ``text`` (BEiT-3 on the text alone, its [CLS] ``<s>`` projected) or ``late`` (image-only
and text-only passes, the two [CLS] concatenated: the projector takes ``2 D``). Official
checkpoints are ``early``; ``config.json`` records ``fusion`` only when it is another one.
Test architectures (``evf_sam_tiny``, ``evf_sam2_tiny``) use the same code
with tiny sizes, recorded in ``config.json`` under ``beit3_config`` / ``sam_config``.

Tokenization does not use transformers (see :mod:`.tokenizer`): any transformers version,
or none, gives the reference's ids.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evfbench.errors import EvfbenchError
from evfbench.io import atomic_write_json
from evfbench.models import beit3 as beit3_module
from evfbench.models.base import PromptableModel
from evfbench.models.beit3 import BEIT3_CONFIGS, BEiT3, Beit3Config
from evfbench.models.checkpoint import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    CheckpointError,
    empty_init,
    load_checked,
    read_checkpoint,
    read_folder_state_dict,
    resolve_weights,
    save_safetensors,
    state_dict_summary,
)
from evfbench.models.sam_backends import (
    SAM2_CONFIGS,
    SAM_CONFIGS,
    Sam1Backend,
    Sam2Backend,
    Sam2Config,
    SamConfig,
    SamFeatures,
)
from evfbench.models.tokenizer import BeitTokenizer

__all__ = ["FUSIONS", "EvfConfig", "EvfSamNet", "EvfSam", "EvfImageEmbedding", "evf_sam", "evf_sam2", "DTYPES", "BEIT3_PRETRAINING_HEADS"]

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_FAMILIES = {"sam": (Sam1Backend, SAM_CONFIGS, SamConfig), "sam2": (Sam2Backend, SAM2_CONFIGS, Sam2Config)}
FUSIONS = ("early", "text", "late")
_OFFICIAL_BEIT3_SCALES = ("base", "large")
_OFFICIAL_SAM_SCALES = {"sam": ("huge", "large", "base"), "sam2": ("large", "base_plus", "small", "tiny")}

# Heads of BEiT-3 pretraining / task checkpoints that EVF-SAM does not use: ignored (and
# reported) when initialising from beit3_large_patch16_224.pth; any other extra key is an error.
BEIT3_PRETRAINING_HEADS = (
    "mlm_head.", "mim_head.", "lm_head.", "vision_head.", "language_head.", "text_head.", "logit_scale", "pooler.",
)


# ---- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EvfConfig:
    """An EVF-SAM architecture: which SAM (``family``), the BEiT-3 and SAM sizes, projector
    width, and how text and image meet (``fusion``, one of :data:`FUSIONS`)."""

    family: str
    beit3: Beit3Config
    sam: SamConfig | Sam2Config
    out_dim: int = 256
    fusion: str = "early"

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise EvfbenchError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")

    @property
    def projector_in_dim(self) -> int:
        """``D``, or ``2 D`` for late fusion (image [CLS] and text [CLS] concatenated)."""
        return self.beit3.embed_dim * (2 if self.fusion == "late" else 1)

    @classmethod
    def create(
        cls,
        family: str,
        mm_extractor_scale: str = "large",
        sam_scale: str | None = None,
        beit3_config: dict[str, Any] | None = None,
        sam_config: dict[str, Any] | None = None,
        out_dim: int | None = None,
        fusion: str = "early",
    ) -> "EvfConfig":
        """From preset names (``BEIT3_CONFIGS``, ``SAM_CONFIGS`` / ``SAM2_CONFIGS``) or explicit
        dicts (which win over the names)."""
        if family not in _FAMILIES:
            raise EvfbenchError(f"unknown EVF-SAM family {family!r}; known: {sorted(_FAMILIES)}")
        _, presets, sam_cls = _FAMILIES[family]
        if beit3_config:
            beit3 = Beit3Config.from_dict(dict(beit3_config))
        elif mm_extractor_scale in BEIT3_CONFIGS:
            beit3 = BEIT3_CONFIGS[mm_extractor_scale]
        else:
            raise EvfbenchError(f"unknown mm_extractor_scale {mm_extractor_scale!r}; known: {sorted(BEIT3_CONFIGS)} (or pass beit3_config)")
        sam_scale = sam_scale or ("huge" if family == "sam" else "large")
        if sam_config:
            sam = sam_cls.from_dict(dict(sam_config))
        elif sam_scale in presets:
            sam = presets[sam_scale]
        else:
            raise EvfbenchError(f"unknown sam_scale {sam_scale!r} for {family}; known: {sorted(presets)} (or pass sam_config)")
        prompt_dim = sam.prompt_dim
        if out_dim is not None and int(out_dim) != prompt_dim:
            raise EvfbenchError(f"out_dim {out_dim} differs from the SAM prompt width {prompt_dim}")
        return cls(family=family, beit3=beit3, sam=sam, out_dim=prompt_dim, fusion=fusion)

    @property
    def architecture(self) -> str:
        return _FAMILIES[self.family][0].architecture

    def scale_names(self, official: bool = True) -> tuple[str, str]:
        """The ``(mm_extractor_scale, sam_scale)`` preset names; ``"custom"`` for sizes that no
        official name (``official=True``) or no preset (``False``) covers."""
        presets = _FAMILIES[self.family][1]
        beit_names = _OFFICIAL_BEIT3_SCALES if official else tuple(BEIT3_CONFIGS)
        sam_names = _OFFICIAL_SAM_SCALES[self.family] if official else tuple(presets)
        beit = next((n for n in beit_names if BEIT3_CONFIGS[n] == self.beit3), "custom")
        sam = next((n for n in sam_names if presets[n] == self.sam), "custom")
        return beit, sam

    def describe(self) -> str:
        beit, sam = self.scale_names(official=False)
        return f"{self.architecture} (BEiT-3 {beit}, {'SAM' if self.family == 'sam' else 'SAM-2'} {sam})"

    def differences(self, other: "EvfConfig") -> list[str]:
        out = []
        for name in ("family", "beit3", "sam", "out_dim", "fusion"):
            if getattr(self, name) != getattr(other, name):
                out.append(f"{name}: {getattr(self, name)} vs {getattr(other, name)}")
        return out

    # config.json ------------------------------------------------------------------------
    def to_json(self, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        beit, sam = self.scale_names()
        data: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": "evf",
            "hidden_size": self.beit3.embed_dim,
            "out_dim": self.out_dim,
            "mm_extractor_scale": beit,
            "sam_scale": sam,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "torch_dtype": _DTYPE_NAMES.get(dtype, "float32"),
        }
        if beit == "custom":  # sizes the official scale names do not cover (test architectures)
            data["beit3_config"] = self.beit3.to_dict()
        if sam == "custom":
            data["sam_config"] = self.sam.to_dict()
        if self.fusion != "early":  # official files have no such key: absent means early
            data["fusion"] = self.fusion
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = CONFIG_FILE) -> "EvfConfig":
        if data.get("model_type") != "evf":
            raise CheckpointError(f"{source}: model_type is {data.get('model_type')!r}, not 'evf' (not an EVF-SAM checkpoint)")
        archs = data.get("architectures") or []
        family = next((f for f, (backend, _, _) in _FAMILIES.items() if backend.architecture in archs), None)
        if family is None:
            raise CheckpointError(
                f"{source}: architectures {archs} names none of EvfSamModel (SAM-1), EvfSam2Model (SAM-2); "
                "EfficientSAM variants are not supported"
            )
        try:
            config = cls.create(
                family,
                mm_extractor_scale=data.get("mm_extractor_scale", "large"),
                sam_scale=data.get("sam_scale"),
                beit3_config=data.get("beit3_config"),
                sam_config=data.get("sam_config"),
                out_dim=data.get("out_dim"),
                fusion=data.get("fusion", "early"),
            )
        except (EvfbenchError, ValueError, TypeError) as err:
            raise CheckpointError(f"{source}: {err}") from err
        if "hidden_size" in data and int(data["hidden_size"]) != config.beit3.embed_dim:
            raise CheckpointError(f"{source}: hidden_size {data['hidden_size']} differs from the BEiT-3 width {config.beit3.embed_dim}")
        return config


# ---- the network -----------------------------------------------------------------------------
class BEiT3Wrapper(nn.Module):
    """``mm_extractor``: holds ``beit3`` so parameter names read ``mm_extractor.beit3.*``."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.beit3 = BEiT3(cfg)


@dataclass
class EvfImageEmbedding:
    """Everything about one image that does not depend on the text."""

    sam: SamFeatures
    vision_tokens: torch.Tensor  # (1, Nv, D) BEiT-3 vision tokens with positions
    original_size: tuple[int, int]


class EvfSamNet(nn.Module):
    """The EVF-SAM network with the official parameter names.

    ``visual_model``: stock SAM / SAM-2; ``mm_extractor.beit3``: :class:`BEiT3`;
    ``text_hidden_fcs``: ``ModuleList([Sequential(Linear(D_in, D), ReLU, Linear(D, out_dim))])``
    with ``D_in = D`` (``2 D`` for late fusion).
    """

    def __init__(self, config: EvfConfig) -> None:
        super().__init__()
        self.config = config
        backend_cls = _FAMILIES[config.family][0]
        self.backend = backend_cls(config.sam)
        self.visual_model = self.backend.build()
        self.mm_extractor = BEiT3Wrapper(config.beit3)
        d = config.beit3.embed_dim
        self.text_hidden_fcs = nn.ModuleList(
            [nn.Sequential(nn.Linear(config.projector_in_dim, d), nn.ReLU(), nn.Linear(d, config.out_dim))]
        )

    @property
    def beit3(self) -> BEiT3:
        return self.mm_extractor.beit3

    def switch_fusion(self, fusion: str) -> None:
        """Use the same parameters with another fusion, in place: ``text`` and ``early`` both
        project one BEiT-3 [CLS] of width D, so weights trained text-only can start an
        early-fusion run (a curriculum for encoders trained from scratch). ``late``'s projector
        reads 2 D and cannot be switched to or from."""
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}")
        if fusion != self.config.fusion and "late" in (fusion, self.config.fusion):
            raise ValueError(f"cannot switch {self.config.fusion!r} fusion to {fusion!r}: late fusion's projector "
                             f"reads 2 x {self.config.beit3.embed_dim} features, the others {self.config.beit3.embed_dim}")
        self.config = replace(self.config, fusion=fusion)

    # official names ---------------------------------------------------------------------
    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the names of the official files."""
        out = {}
        for key, value in self.state_dict().items():
            if key.startswith("visual_model."):
                key = "visual_model." + self.backend.to_official(key[len("visual_model.") :])
            out[key] = value
        return out

    def from_official_names(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Official names -> this module's names (SAM-2: ``fuser.layers.N.weight`` -> ``gamma``;
        a file that already uses the stock ``gamma`` name is accepted as is)."""
        out: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}
        for key, value in state.items():
            name = key
            if key.startswith("visual_model."):
                name = "visual_model." + self.backend.from_official(key[len("visual_model.") :])
            if name in out:
                raise CheckpointError(f"{source}: '{origin[name]}' and '{key}' both hold '{name}'")
            out[name], origin[name] = value, key
        return out

    # inference steps --------------------------------------------------------------------
    def embed_image(self, image: np.ndarray, device: torch.device) -> EvfImageEmbedding:
        """RGB ``HWC uint8`` -> the SAM features and BEiT-3 vision tokens of the image."""
        sam = self.backend.encode(self.visual_model, image, device)
        pixels = beit3_module.preprocess(image, self.config.beit3.img_size, device=device)
        return EvfImageEmbedding(sam=sam, vision_tokens=self.beit3.embed_vision(pixels), original_size=tuple(image.shape[:2]))

    def encode_prompt(
        self,
        vision_tokens: torch.Tensor,
        text_ids: torch.Tensor,
        padding: torch.Tensor,
        fuse_layers: int | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, L)`` ids + padding mask -> the ``(B, 1, out_dim)`` prompt, per :attr:`EvfConfig.fusion`.

        ``vision_tokens`` ``(N, Nv, D)`` holds ``N`` images; text ``b`` belongs to image
        ``image_index[b]`` (``None``: one image for every text, or one image per text).
        Training passes several images at once; inference one.
        """
        fusion = self.config.fusion
        if fusion == "text":
            feature = self.beit3.forward_text(text_ids, padding)[:, :1]
        elif fusion == "late":
            image_cls = self.beit3.forward_image(vision_tokens=vision_tokens)[:, :1]
            image_cls = image_cls if image_index is None else image_cls[image_index]
            text_cls = self.beit3.forward_text(text_ids, padding)[:, :1]
            feature = torch.cat([image_cls.expand(text_cls.size(0), -1, -1), text_cls], dim=-1)
        else:
            feature = self.joint_tokens(vision_tokens, text_ids, padding, fuse_layers, image_index)[:, :1]
        return self.text_hidden_fcs[0](feature)

    def joint_tokens(
        self,
        vision_tokens: torch.Tensor,
        text_ids: torch.Tensor,
        padding: torch.Tensor,
        fuse_layers: int | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The early-fusion BEiT-3 output ``(B, Nv + L, D)`` (index 0: the image [CLS] that
        :meth:`encode_prompt` projects); training reads its vision tokens too."""
        tokens = vision_tokens if image_index is None else vision_tokens[image_index]
        return self.beit3(text_ids=text_ids, text_padding_mask=padding, vision_tokens=tokens, fuse_layers=fuse_layers)

    def prompt(self, embedding: EvfImageEmbedding, text_ids: torch.Tensor, padding: torch.Tensor, fuse_layers: int | None = None) -> torch.Tensor:
        """``(B, L)`` ids + padding mask -> ``(B, 1, out_dim)`` prompt (early fusion: projected image [CLS])."""
        return self.encode_prompt(embedding.vision_tokens, text_ids, padding, fuse_layers)

    def forward(self, embedding: EvfImageEmbedding, text_ids: torch.Tensor, padding: torch.Tensor, fuse_layers: int | None = None) -> torch.Tensor:
        """Low-resolution mask logits ``(B, h, w)`` for ``B`` texts of one image."""
        return self.backend.decode(self.visual_model, embedding.sam, self.prompt(embedding, text_ids, padding, fuse_layers))

    def postprocess(self, low_res: torch.Tensor, embedding: EvfImageEmbedding, size: tuple[int, int]) -> torch.Tensor:
        return self.backend.postprocess(low_res, embedding.sam, size)


# ---- the registered model --------------------------------------------------------------------
class EvfSam(PromptableModel):
    """EVF-SAM behind the evfbench model contract (embed an image once, decode its texts in batches).

    Args:
        net: the network (weights loaded).
        tokenizer: the checkpoint's tokenizer; ``None`` only for a model that is saved, never run.
        dtype: ``fp32``, or ``bf16`` / ``fp16`` autocast (on CUDA the weights are cast too).
        fuse_layers: cross-modal attention in the first K BEiT-3 layers only (``None``: all).
        lowercase: lower-case and strip texts (the evaluation protocol).
    """

    def __init__(
        self,
        net: EvfSamNet,
        tokenizer: BeitTokenizer | None,
        *,
        dtype: str = "fp32",
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        fuse_layers: int | None = None,
        lowercase: bool = True,
        weights: str | None = None,
        load_report: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if dtype not in DTYPES:
            raise EvfbenchError(f"dtype must be one of fp32, bf16, fp16; got {dtype!r}")
        if fuse_layers is not None and net.config.fusion != "early":
            raise EvfbenchError(f"fuse_layers applies to early fusion only; this model's fusion is {net.config.fusion!r}")
        self.dtype = DTYPES[dtype]
        self.net = net.eval().to(self.device)
        if self.device.type == "cuda" and self.dtype != torch.float32:
            self.net.to(self.dtype)
        self.tokenizer = tokenizer
        self.fuse_layers = fuse_layers
        self.lowercase = lowercase
        self.weights = weights
        self.load_report = dict(load_report or {})
        if tokenizer is not None and self.net.config.beit3.max_text_positions:
            tokenizer.max_length = self.net.config.beit3.max_text_len

    @property
    def config(self) -> EvfConfig:
        return self.net.config

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _require_tokenizer(self) -> BeitTokenizer:
        if self.tokenizer is None:
            raise EvfbenchError(
                "this EVF-SAM model has no tokenizer: load weights from a checkpoint folder (which holds "
                "sentencepiece.bpe.model), or pass tokenizer=FOLDER_OR_SPM_FILE"
            )
        return self.tokenizer

    @torch.inference_mode()
    def embed_image(self, image: np.ndarray) -> EvfImageEmbedding:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB HWC uint8 image, got shape {image.shape} dtype {image.dtype}")
        with self._autocast():
            return self.net.embed_image(image, self.device)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids ``(B, L)`` and padding mask (True = pad), after lower-case + strip."""
        texts = [t.lower().strip() if self.lowercase else t for t in texts]
        return self._require_tokenizer().batch(texts, device=self.device)

    @torch.inference_mode()
    def segment(self, embedding: EvfImageEmbedding, texts: list[str], size: tuple[int, int]) -> torch.Tensor:
        ids, padding = self.tokenize(list(texts))
        with self._autocast():
            low_res = self.net(embedding, ids, padding, self.fuse_layers)
        return self.net.postprocess(low_res.float(), embedding, tuple(size))

    def save_pretrained(self, folder: str | Path, dtype: str | None = None) -> Path:
        """Write the official layout: ``config.json``, ``model.safetensors``, tokenizer files.

        ``dtype`` casts the floating tensors in the file (e.g. ``fp16`` halves its size).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        file_dtype = DTYPES[dtype] if dtype else torch.float32
        state = {k: (v.to(file_dtype) if v.is_floating_point() else v) for k, v in self.net.official_state_dict().items()}
        save_safetensors(folder / SAFETENSORS_FILE, state)
        atomic_write_json(folder / CONFIG_FILE, self.config.to_json(file_dtype))
        if self.tokenizer is not None:
            self.tokenizer.save(folder)
        return folder

    def describe(self) -> dict[str, Any]:
        n_tensors, n_params = state_dict_summary(self.net.official_state_dict())
        return {
            **super().describe(),
            "architecture": self.config.describe(),
            "weights": self.weights,
            "dtype": _DTYPE_NAMES[self.dtype],
            "device": str(self.device),
            "batch_size": self.batch_size,
            "fuse_layers": self.fuse_layers,
            "fusion": self.config.fusion,
            "tensors": n_tensors,
            "parameters": n_params,
            **({"load_report": self.load_report} if self.load_report else {}),
        }


# ---- building and loading --------------------------------------------------------------------
def build_net(config: EvfConfig, empty: bool = False) -> EvfSamNet:
    """The network, randomly initialised, or with parameters on ``meta`` (``empty=True``)."""
    if empty:
        with empty_init():
            return EvfSamNet(config)
    return EvfSamNet(config)


def load_pretrained(folder: Path, config: EvfConfig) -> EvfSamNet:
    """Build ``config`` and fill it from the weights in ``folder`` (strict, cast to fp32)."""
    state, path = read_folder_state_dict(folder)
    net = build_net(config, empty=True)
    load_checked(net, net.from_official_names(state, str(path)), source=str(path), target=config.describe(), assign=True)
    return net.eval()


def load_sam_checkpoint(net: EvfSamNet, path: str | Path) -> None:
    """Initialise ``visual_model`` from an original SAM (``sam_vit_h_4b8939.pth``) or SAM-2
    (``sam2_hiera_large.pt``, key ``"model"``) checkpoint, with the stock key names."""
    state = read_checkpoint(path)
    load_checked(net.visual_model, state, source=str(path), target=f"the SAM of {net.config.describe()}")


def load_beit3_checkpoint(net: EvfSamNet, path: str | Path) -> list[str]:
    """Initialise BEiT-3 from ``beit3_large_patch16_224.pth`` (key ``"model"``; names relative
    to ``beit3.`` or with that prefix). Known pretraining heads are ignored and returned."""
    state = read_checkpoint(path)
    state = {k[len("beit3.") :] if k.startswith("beit3.") else k: v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(BEIT3_PRETRAINING_HEADS))
    state = {k: v for k, v in state.items() if k not in ignored}
    load_checked(net.beit3, state, source=str(path), target=f"the BEiT-3 of {net.config.describe()}")
    if ignored:
        warnings.warn(f"{path}: ignored {len(ignored)} pretraining-head tensors: {ignored[:5]}", stacklevel=2)
    return ignored


def _build(
    family: str,
    weights: str | None,
    mm_extractor_scale: str,
    sam_scale: str,
    beit3_config: dict[str, Any] | None,
    sam_config: dict[str, Any] | None,
    tokenizer: str | None,
    sam_checkpoint: str | None,
    beit3_checkpoint: str | None,
    dtype: str,
    device: str,
    batch_size: int,
    fuse_layers: int | None,
    lowercase: bool,
    fusion: str | None,
) -> EvfSam:
    config = EvfConfig.create(family, mm_extractor_scale, sam_scale, beit3_config, sam_config, fusion=fusion or "early")
    report: dict[str, Any] = {}
    if weights is not None:
        if sam_checkpoint or beit3_checkpoint:
            raise EvfbenchError("pass either weights= (a full EVF-SAM checkpoint) or sam_checkpoint= / beit3_checkpoint=, not both")
        folder = resolve_weights(weights)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_FILE}: not a checkpoint folder in the official EVF-SAM layout")
        file_config = EvfConfig.from_json(json.loads(config_path.read_text(encoding="utf-8")), str(config_path))
        if fusion is None:  # not asked for: the checkpoint's
            config = replace(config, fusion=file_config.fusion)
        # The test scale names no fixed sizes (evf_sam_tiny, evf_sam2_tiny): a checkpoint trained
        # at any small size loads by name alone, with the sizes its config.json records.
        if beit3_config is None and mm_extractor_scale == "test":
            config = replace(config, beit3=file_config.beit3)
        if sam_config is None and sam_scale == "test" and file_config.family == config.family:
            config = replace(config, sam=file_config.sam, out_dim=file_config.out_dim)
        diff = file_config.differences(config)
        if diff:
            raise CheckpointError(
                f"{config_path} describes {file_config.describe()}, but this model name builds {config.describe()}:\n  "
                + "\n  ".join(diff)
                + "\n  fix: use the model name that matches the checkpoint (evf_sam for SAM-1, evf_sam2 for SAM-2), "
                "or pass mm_extractor_scale= / sam_scale= / fusion= to match config.json; a checkpoint of other sizes "
                "loads with evf_sam_tiny / evf_sam2_tiny, which take the sizes config.json records"
            )
        net = load_pretrained(folder, config)
        tok = BeitTokenizer.from_path(tokenizer) if tokenizer else BeitTokenizer.from_folder(folder)
    else:
        net = build_net(config)
        if sam_checkpoint:
            load_sam_checkpoint(net, sam_checkpoint)
            report["sam_checkpoint"] = str(sam_checkpoint)
        if beit3_checkpoint:
            report["beit3_checkpoint"] = str(beit3_checkpoint)
            report["ignored_beit3_heads"] = load_beit3_checkpoint(net, beit3_checkpoint)
        tok = BeitTokenizer.from_path(tokenizer) if tokenizer else None
    if tok is not None and len(tok) > config.beit3.vocab_size:
        raise EvfbenchError(f"the tokenizer has {len(tok)} ids but BEiT-3's text_embed only {config.beit3.vocab_size}")
    return EvfSam(
        net, tok, dtype=dtype, device=device, batch_size=batch_size, fuse_layers=fuse_layers,
        lowercase=lowercase, weights=None if weights is None else str(weights), load_report=report,
    )


def evf_sam(
    weights: str | None = None,
    *,
    mm_extractor_scale: str = "large",
    sam_scale: str = "huge",
    beit3_config: dict[str, Any] | None = None,
    sam_config: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    sam_checkpoint: str | None = None,
    beit3_checkpoint: str | None = None,
    dtype: str = "fp32",
    device: str = "cpu",
    batch_size: int = 16,
    fuse_layers: int | None = None,
    lowercase: bool = True,
    fusion: str | None = None,
) -> EvfSam:
    """EVF-SAM with SAM-1 (default BEiT-3 large + SAM ViT-H).

    Args:
        weights: a checkpoint folder in the official layout, or a Hugging Face id.
        mm_extractor_scale / sam_scale: preset sizes; ``beit3_config`` / ``sam_config`` give explicit ones.
        tokenizer: a folder or SentencePiece file, overriding the checkpoint's (needed without ``weights``).
        sam_checkpoint / beit3_checkpoint: initialise from the original SAM and BEiT-3 files (training).
        dtype: ``fp32`` | ``bf16`` | ``fp16``; device: ``cpu`` | ``cuda``; batch_size: texts per decoder pass.
        fuse_layers: early fusion in the first K BEiT-3 layers only (paper Tab. 3); ``None`` = all.
        fusion: ``early`` | ``text`` | ``late`` prompt feature (Tab. 3 baselines); ``None``: the
            checkpoint's (``config.json``), else ``early``.
    """
    return _build("sam", weights, mm_extractor_scale, sam_scale, beit3_config, sam_config, tokenizer,
                  sam_checkpoint, beit3_checkpoint, dtype, device, batch_size, fuse_layers, lowercase, fusion)


def evf_sam2(
    weights: str | None = None,
    *,
    mm_extractor_scale: str = "large",
    sam_scale: str = "large",
    beit3_config: dict[str, Any] | None = None,
    sam_config: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    sam_checkpoint: str | None = None,
    beit3_checkpoint: str | None = None,
    dtype: str = "fp32",
    device: str = "cpu",
    batch_size: int = 16,
    fuse_layers: int | None = None,
    lowercase: bool = True,
    fusion: str | None = None,
) -> EvfSam:
    """EVF-SAM2: BEiT-3 large + SAM-2 Hiera-L (``configs/sam2/sam2_hiera_l.yaml``, v2.0). Same
    arguments as :func:`evf_sam`; ``sam_scale`` names a SAM-2 size (large, base_plus, small, tiny)."""
    return _build("sam2", weights, mm_extractor_scale, sam_scale, beit3_config, sam_config, tokenizer,
                  sam_checkpoint, beit3_checkpoint, dtype, device, batch_size, fuse_layers, lowercase, fusion)
