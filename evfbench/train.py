"""Train EVF-SAM with the paper's recipe: ``python -m evfbench.train``.

    python -m evfbench.train --model evf_sam --data refcoco,refcoco+,refcocog,refclef \\
        --sam-checkpoint sam_vit_h_4b8939.pth --beit3-checkpoint beit3_large_patch16_224.pth --output-dir runs/evf
    torchrun --nproc_per_node 4 -m evfbench.train --config my.yaml --output-dir runs/evf    # DDP
    python -m evfbench.train --config my.yaml --output-dir runs/evf --resume               # continue

Every hyper-parameter is a field of :class:`TrainConfig`; defaults are the paper's (see the
field comments). Precedence: defaults < ``--config FILE.yaml`` < command-line flags. The
resolved configuration is written to ``<output-dir>/config.yaml``.

Recipe (paper + reference code): AdamW (lr 1e-4, betas 0.9/0.95 and weight decay 0.0 as in
LISA, whose training code EVF-SAM's follows), linear decay to 0 after an optional linear
warm-up, 15k optimizer steps of a global batch of 128 images with up to 3 expressions each;
gradient accumulation = global batch / (per-device batch x processes), computed, and it must
divide exactly. Loss per mask = 1.0 x BCE (mean over pixels) + 1.0 x dice (sigmoid; numerator
and denominator with inputs scaled by 1/1000, eps 1e-6), on logits upsampled to the
ORIGINAL image size, averaged over every mask of the global batch (so the gradient does not
depend on how the batch is split over processes and accumulation steps). Mixed precision:
``--precision bf16`` (CPU or CUDA autocast) or ``fp16`` (CUDA, with a gradient scaler).
The SAM image encoder is frozen (its embeddings are then computed once per image and kept);
``--train`` / ``--freeze`` choose the trainable modules among ``mm_encoder`` (BEiT-3),
``projector``, ``prompt_encoder``, ``mask_decoder``, ``image_encoder`` (paper Tab. 4).

Stages: ``--stage text`` (default) trains on referring expressions. ``--stage sam_boxes``
trains the SAM parts alone with box prompts of the targets (stock prompt encoder; with
``--point-prob P`` a share P of them get one point of the mask instead, as SAM trains on
both); its ``model/sam.safetensors`` has the stock ``segment_anything`` key names and is a
``--sam-checkpoint`` for a text stage: the way to get a "pretrained SAM" for tiny models
trained from scratch. ``--stage sam_categories`` comes before it for such models: the SAM image
encoder alone learns the category of every pixel (``--category-aux``, 1.0 by default, is its
only loss), which box prompts never ask of it; its output is a ``--sam-checkpoint`` for
``sam_boxes``. ``--init`` a text-only run with ``--model-args fusion=early`` continues
its parameters as early fusion (text first, then fusion: how ``evf_sam_tiny.shapes`` was made).

Auxiliary losses for models trained from scratch (heads kept in ``trainer_state.pt``, never in
the weights; a stage that starts from a checkpoint folder continues them): ``--category-aux``
(what each SAM embedding position shows; with ``--category-aux-attributes color`` its classes
are the (category, colour) pairs, and ``--category-aux-heads size`` adds a head for the size)
and ``--grounding-aux`` (where the target is, on the early-fusion BEiT-3's vision tokens and
image [CLS]); ``--beit3-position-std`` redraws BEiT-3's untrained vision positions at a scale
the patches can carry.

Output folder::

    <output-dir>/config.yaml                 the resolved configuration
    <output-dir>/train_log.csv               step, loss, bce, dice, category, grounding (means over the
                                             masks since the previous row), lr, samples_per_s (images / s,
                                             all processes), elapsed_s
    <output-dir>/eval_log.csv                step, split, ciou, giou, n_sentences (periodic evaluation;
                                             sam_boxes with --point-prob also <split>:points;
                                             sam_categories: <split>:categories, per image and category;
                                             text stages on a corpus that records sentence kinds
                                             (shapes) also <split>/<kind>, per kind)
    <output-dir>/loss_curve.png              loss and evaluation cIoU against the step
    <output-dir>/kinds_curve.png             cIoU per sentence kind against the step (with those rows):
                                             which words the model learns, and when
    <output-dir>/checkpoints/step-NNNNNN/    official layout (config.json, model.safetensors, tokenizer)
                                             or sam.safetensors (sam_boxes, sam_categories), plus trainer_state.pt
    <output-dir>/checkpoints/LATEST          name of the newest complete checkpoint
    <output-dir>/model/                      the final weights (``weights=`` of evfbench.run)

``trainer_state.pt`` holds the optimizer, scheduler, scaler and RNG states and the data
position (the step: batches are a function of ``(seed, step)``, see :mod:`evfbench.train_data`).
``--resume`` continues from ``LATEST``; on CPU in fp32 the result is bit-identical to an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import io
import itertools
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from evfbench.distributed import Context, distributed
from evfbench.errors import EvfbenchError, cli
from evfbench.feature_store import FeatureStore
from evfbench.io import atomic_write_bytes, atomic_write_figure, atomic_write_json, atomic_write_text
from evfbench.train_data import Example, Item, TrainingData, train_tokenizer

__all__ = ["TrainConfig", "MODULES", "mask_losses", "trainable_modules", "set_trainable", "train", "main"]

MODULES = ("image_encoder", "prompt_encoder", "mask_decoder", "mm_encoder", "projector")
STAGES = ("text", "sam_boxes", "sam_categories")
SAM_STAGES = ("sam_boxes", "sam_categories")  # stages that train SAM alone and save its stock state dict
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAM_FILE = "sam.safetensors"
STATE_FILE = "trainer_state.pt"
LOSS_PARTS = ("bce", "dice", "category", "grounding")  # logged per mask; category / grounding: with their _aux
LOG_COLUMNS = ("step", "loss", *LOSS_PARTS, "lr", "samples_per_s", "elapsed_s")
EVAL_COLUMNS = ("step", "split", "ciou", "giou", "n_sentences")
# Fields that may change between a run and its --resume (they do not change the trajectory).
RESUME_FREE = frozenset({"eval_every", "eval_limit", "log_every", "checkpoint_every", "keep_checkpoints", "val_split",
                         "final_dtype", "feature_store"})
DICE_SCALE, DICE_EPS = 1000.0, 1e-6


class TrainError(EvfbenchError):
    """A training run that cannot start or continue as configured; the message says the fix."""


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run (defaults: the paper's recipe)."""

    model: str = "evf_sam"  # registered model name; its card gives the architecture
    model_args: dict[str, Any] = field(default_factory=dict)  # builder arguments (sizes, fusion, ...)
    stage: str = "text"  # text | sam_boxes | sam_categories
    init: str | None = None  # EVF-SAM folder in the official layout (weights=)
    sam_checkpoint: str | None = None  # original SAM file, or a sam_boxes / sam_categories output folder
    beit3_checkpoint: str | None = None  # beit3_large_patch16_224.pth
    tokenizer: str | None = None  # folder or .model file, when init gives none
    tokenizer_vocab: int = 0  # > 0: train a SentencePiece model of this size on the training sentences
    data: list[str] = field(default_factory=lambda: ["refcoco", "refcoco+", "refcocog", "refclef"])
    data_weights: list[float] | None = None  # sampling ratios per source; None = equal
    data_root: str | None = None
    texts_per_image: int = 3  # up to 3 expressions per image per sample
    flip_prob: float = 0.0  # horizontal flip (left/right words swapped); the paper does not flip
    steps: int = 15000  # optimizer steps
    global_batch: int = 128  # images per optimizer step (16 per GPU x 4 GPUs x 2 accumulation)
    per_device_batch: int = 16
    optimizer: str = "adamw"  # adamw | sgd (plain SGD: exact gradient comparisons in tests)
    lr: float = 1e-4
    lr_scales: dict[str, float] = field(default_factory=dict)  # module -> lr multiplier
    weight_decay: float = 0.0  # LISA / EVF-SAM
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # LISA / EVF-SAM
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0
    grad_clip: float = 1.0  # max gradient norm (LISA's DeepSpeed gradient_clipping); 0 = off
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    precision: str = "bf16"  # fp32 | bf16 | fp16 (the paper trains in mixed precision)
    train: list[str] = field(default_factory=lambda: ["mm_encoder", "projector", "prompt_encoder", "mask_decoder"])
    seed: int = 0
    device: str = "cpu"
    val_split: str | None = None  # e.g. refcoco_val; evaluated every eval_every steps and at the end
    eval_every: int = 0
    eval_limit: int | None = None  # sentences of val_split per evaluation (None: all)
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 1
    cache: bool = False  # keep decoded images and frozen SAM embeddings in memory (small datasets, e.g. shapes)
    # A folder for the features of a frozen SAM image encoder, computed once per (image, flip) and
    # shared by the processes of a run and by later stages with the same encoder
    # (evfbench.feature_store); relative paths resolve against the working directory, as init does.
    feature_store: str | None = None
    # Weight of a per-pixel category cross-entropy on the SAM image embedding, through a 1x1 head kept
    # in the trainer state, not in model/. A SAM trained from scratch with box prompts never has to
    # learn what the objects are; a pretrained one knows (shapes: data_prep/shapes.md). In the text
    # stages it keeps the category in the embedding, which the mask loss alone wears away.
    category_aux: float = 0.0
    # Annotation attributes (instances.json ``attributes``; shapes records ``color`` and ``size``)
    # crossed with the category in the classes of category_aux: with [color], one class per
    # (category, colour) pair. The category loss alone sharpens the categories in the embedding
    # at the expense of the colours, and the text stages then read one or the other (TRAINING.md).
    category_aux_attributes: list[str] = field(default_factory=list)
    # Annotation attributes with a per-pixel head of their own beside the category head (classes:
    # the attribute's values and the background), in the same loss and weight: with [size], the
    # embedding is asked for each pixel's size class without splitting every (category, colour)
    # class in three, which wore the category away (TRAINING.md, run DN). Derived attributes count
    # too (train_data.DERIVED_ATTRIBUTES: shapes' hidden, the share of a shape others cover).
    category_aux_heads: list[str] = field(default_factory=list)
    # sam_boxes stage: the probability that a target is prompted by one point drawn from its mask
    # instead of its box. SAM itself trains on points and boxes; a point is one positional token,
    # like the one token the text stages give the decoder.
    point_prob: float = 0.0
    # Weight of a grounding loss on the early-fusion BEiT-3, through heads kept in the trainer state:
    # every vision token predicts the share of its patch the target covers (BCE), and the image
    # [CLS] the target's distribution over the patches (cross-entropy). Trained from scratch with
    # the mask loss alone, the [CLS] never learns where the referent is (TRAINING.md).
    grounding_aux: float = 0.0
    # > 0: redraw BEiT-3's vision position table (normal, this std) before training. The
    # torchscale init (0.02) is tiny next to the patch embeddings, so a BEiT-3 trained from
    # scratch barely sees where a patch is; only for an image side that starts untrained.
    beit3_position_std: float = 0.0
    final_dtype: str = "fp32"  # file dtype of <output-dir>/model (fp16 halves it); checkpoints stay fp32

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise TrainError(f"stage must be one of {', '.join(STAGES)}; got {self.stage!r}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        for name in ("precision", "final_dtype"):
            if getattr(self, name) not in PRECISIONS:
                raise TrainError(f"{name} must be one of {', '.join(PRECISIONS)}; got {getattr(self, name)!r}")
        bad = [m for m in [*self.train, *self.lr_scales] if m not in MODULES]
        if bad:
            raise TrainError(f"unknown module(s) {bad} in train / lr_scales; known: {', '.join(MODULES)}")
        if not self.train:
            raise TrainError("nothing to train: --train names no module")
        for name in ("steps", "global_batch", "per_device_batch", "texts_per_image"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.category_aux < 0:
            raise TrainError(f"category_aux must be >= 0; got {self.category_aux}")
        if self.stage == "sam_categories" and (self.category_aux <= 0 or self.train != ["image_encoder"]):
            raise TrainError("--stage sam_categories trains the SAM image encoder alone on the per-pixel category loss "
                             f"(category_aux {self.category_aux}, train {self.train})\n"
                             "  fix: set --category-aux to a weight > 0 and --train image_encoder")
        for name in ("category_aux_attributes", "category_aux_heads"):
            if getattr(self, name) and (self.category_aux <= 0 or self.stage == "sam_categories"):
                raise TrainError(f"{name} {getattr(self, name)} add attribute classes to the category loss, which this run "
                                 f"does not train as such (category_aux {self.category_aux}, stage {self.stage}; "
                                 "sam_categories scores its head per category)\n  fix: set --category-aux to a weight > 0 "
                                 "in a sam_boxes or text stage, or drop the attributes")
        if self.feature_store and ("image_encoder" in self.train or self.stage in SAM_STAGES):
            raise TrainError("feature_store keeps the features of a frozen SAM image encoder, but this run trains it\n"
                             "  fix: drop feature_store from the config, or image_encoder from --train")
        if self.category_aux > 0 and "image_encoder" not in self.train:
            raise TrainError("category_aux trains the SAM image encoder, but --train does not name image_encoder\n"
                             "  fix: add image_encoder to --train or set --category-aux 0")
        for name in ("grounding_aux", "beit3_position_std"):
            if getattr(self, name) < 0:
                raise TrainError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.grounding_aux > 0 and (self.stage != "text" or "mm_encoder" not in self.train):
            raise TrainError("grounding_aux trains BEiT-3 in a text stage, but the stage is not text or --train does not "
                             "name mm_encoder\n  fix: use --stage text with mm_encoder in --train, or set --grounding-aux 0")
        if self.beit3_position_std > 0 and self.beit3_checkpoint:
            raise TrainError("beit3_position_std redraws the positions of a BEiT-3 trained from scratch, not of "
                             f"--beit3-checkpoint {self.beit3_checkpoint}\n  fix: set --beit3-position-std 0")
        if not 0 <= self.point_prob <= 1:
            raise TrainError(f"point_prob must be in [0, 1]; got {self.point_prob}")
        if self.point_prob > 0 and self.stage != "sam_boxes":
            raise TrainError("point_prob sets the prompts of --stage sam_boxes; the text stages prompt with text\n"
                             "  fix: add --stage sam_boxes or set --point-prob 0")
        if self.init and (self.sam_checkpoint or self.beit3_checkpoint):
            raise TrainError("pass --init (a full EVF-SAM folder) or --sam-checkpoint / --beit3-checkpoint, not both")

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# ---- losses ----------------------------------------------------------------------------------
def mask_losses(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(BCE, dice)`` of each mask: logits and {0, 1} targets of the same ``(..., H, W)`` shape
    -> two tensors of shape ``(...)`` (0-d for one ``(H, W)`` mask), so the trainer scores all
    the masks of an image in one call instead of a dozen small ops per mask.

    BCE is the mean over pixels; dice = ``1 - (2 sum(p t) / s + eps) / ((sum p + sum t) / s + eps)``
    with ``p = sigmoid(logits)``, ``s = 1000``, ``eps = 1e-6`` (LISA / EVF-SAM).
    """
    logits, target = logits.float().flatten(-2), target.float().flatten(-2)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    p = logits.sigmoid()
    numerator = 2 * (p / DICE_SCALE * target).sum(-1)
    denominator = (p / DICE_SCALE).sum(-1) + (target / DICE_SCALE).sum(-1)
    dice = 1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)
    return bce, dice


# ---- modules ---------------------------------------------------------------------------------
def trainable_modules(net: nn.Module) -> dict[str, nn.Module]:
    """The Tab. 4 module names -> modules of an :class:`~evfbench.models.evf_sam.EvfSamNet`."""
    vm = net.visual_model
    sam2 = net.config.family == "sam2"
    return {
        "image_encoder": vm.image_encoder,
        "prompt_encoder": vm.sam_prompt_encoder if sam2 else vm.prompt_encoder,
        "mask_decoder": vm.sam_mask_decoder if sam2 else vm.mask_decoder,
        "mm_encoder": net.mm_extractor,
        "projector": net.text_hidden_fcs,
    }


def set_trainable(net: nn.Module, names: list[str]) -> None:
    """Freeze every parameter, then unfreeze exactly the modules ``names`` (everything else of
    SAM-2, e.g. the memory modules, stays frozen)."""
    net.requires_grad_(False)
    modules = trainable_modules(net)
    for name in names:
        modules[name].requires_grad_(True)


def param_groups(net: nn.Module, cfg: TrainConfig, extra: dict[str, nn.Module | None] | None = None) -> list[dict[str, Any]]:
    """One AdamW group per trainable module (in :data:`MODULES` order), with its lr multiplier;
    the ``extra`` heads of the auxiliary losses last, at the base lr."""
    groups = []
    for name, module in trainable_modules(net).items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": cfg.lr * cfg.lr_scales.get(name, 1.0), "name": name})
    for name, head in (extra or {}).items():
        if head is not None:
            groups.append({"params": list(head.parameters()), "lr": cfg.lr, "name": name})
    return groups


def build_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Optimizer:
    """AdamW (or SGD) over ``groups``, fused where PyTorch has a fused kernel for ``device``: one
    update for every parameter instead of a dozen small ops each, 1.17x per step for the
    tiny shapes models on CPU (``benchmarks/bench_train_step.py``). Resuming keeps the kernel the
    checkpoint was saved with (the optimizer state records it)."""
    fused = device.type in ("cpu", "cuda")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# ---- the model side of a training step -------------------------------------------------------
class GroundingHead(nn.Module):
    """The heads of ``grounding_aux``: ``patch`` scores each vision token, ``cls`` maps the image
    [CLS] to a distribution over the ``num_patches`` patches."""

    def __init__(self, dim: int, num_patches: int) -> None:
        super().__init__()
        self.patch = nn.Linear(dim, 1)
        self.cls = nn.Linear(dim, num_patches)

    def forward(self, tokens: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(B, Nv + L, D)`` of the joint pass, ``cover`` ``(B, P)`` the share of each
        patch covered by the target -> the summed loss of the ``B`` texts."""
        n = cover.size(1)
        patch = F.binary_cross_entropy_with_logits(self.patch(tokens[:, 1 : n + 1].float()).squeeze(-1), cover,
                                                   reduction="none").mean(1)
        where = cover / cover.sum(1, keepdim=True).clamp_min(1e-6)  # an empty target adds no cross-entropy
        cls = -(where * self.cls(tokens[:, 0].float()).log_softmax(-1)).sum(1)
        return (patch + cls).sum()


class Trainer(nn.Module):
    """The forward pass of one micro-batch -> summed per-mask losses (wrapped by DDP).

    With ``cache`` and a frozen SAM image encoder, the embedding of each (image, flip) is
    computed once and kept (the frozen encoder makes it exact; the reference recomputes it).
    With ``category_aux``, ``category_head`` maps the SAM embedding to ``n_classes + 1``
    classes (0 = background) per position: the categories, or with ``category_aux_attributes``
    the (category, attribute values) pairs of :attr:`TrainingData.pixel_classes`; then, for each
    of ``head_classes`` (``category_aux_heads``), that many classes + 1 more
    (:attr:`class_splits`). With ``grounding_aux``, ``grounding_head`` (:class:`GroundingHead`)
    reads the early-fusion BEiT-3 output.
    """

    def __init__(self, model: Any, cfg: TrainConfig, device: torch.device, n_classes: int = 0,
                 head_classes: Sequence[int] = ()) -> None:
        super().__init__()
        self.model = model  # the EvfSam wrapper (tokenizer, predict); its net is the submodule below
        self.net = model.net
        self.cfg = cfg
        self.device = device
        self.cache_sam = cfg.cache and "image_encoder" not in cfg.train
        self._cache: dict[tuple[int, int, bool], Any] = {}
        self.store: FeatureStore | None = None  # with feature_store: see attach_store
        self._store_paths: dict[tuple[int, int], Path] = {}
        self.category_head: nn.Module | None = None
        self.class_splits = [n_classes + 1, *(n + 1 for n in head_classes)]
        if cfg.category_aux > 0:
            if self.net.config.family != "sam":
                raise TrainError("category_aux needs a SAM-1 image encoder (its embedding is one feature map)")
            channels = self.net.visual_model.prompt_encoder.embed_dim
            self.category_head = nn.Conv2d(channels, sum(self.class_splits), kernel_size=1).to(device)
        self.grounding_head: GroundingHead | None = None
        if cfg.grounding_aux > 0:
            if self.net.config.fusion != "early":
                raise TrainError(f"grounding_aux trains the early-fusion BEiT-3; this model's fusion is {self.net.config.fusion!r}"
                                 "\n  fix: --model-args fusion=early, or set --grounding-aux 0")
            beit = self.net.config.beit3
            self.grounding_head = GroundingHead(beit.embed_dim, beit.num_patches).to(device)

    def heads(self) -> dict[str, nn.Module | None]:
        """The auxiliary heads by name (their trainer-state and optimizer-group names)."""
        return {"category_head": self.category_head, "grounding_head": self.grounding_head}

    def attach_store(self, data: TrainingData, ctx: Context, progress: bool = True) -> None:
        """Open (and build, if needed) the :class:`FeatureStore` of every training image under
        ``cfg.feature_store``; :meth:`_sam_features` then reads the frozen features from it."""
        net = self.net
        groups = {g.path: g for source in data.groups for g in source}
        self._store_paths = {(s, i): g.path for s, source in enumerate(data.groups) for i, g in enumerate(source)}
        modules = trainable_modules(net)

        def encode(path: Path, flip: bool) -> Any:
            image = groups[path].load_image()
            if flip:
                image = np.ascontiguousarray(image[:, ::-1])
            with torch.no_grad(), torch.autocast(self.device.type, dtype=PRECISIONS[self.cfg.precision],
                                                 enabled=self.cfg.precision != "fp32"):
                return net.backend.encode(net.visual_model, image, self.device)

        flips = [False, True] if self.cfg.flip_prob > 0 else [False]
        self.store = FeatureStore.open(Path(self.cfg.feature_store), net, [modules["prompt_encoder"], modules["mask_decoder"]],
                                       list(groups), flips, self.cfg.precision, encode, ctx, progress)

    def _stored(self, item: Item, pe: torch.Tensor) -> Any:
        """One example's features from the store, with ``pe``, the prompt encoder's positional encoding."""
        from evfbench.models.sam_backends import SamFeatures

        assert self.store is not None
        tensors, size = self.store.tensors(self._store_paths[(item.source, item.group)], item.flip)
        high = [tensors[f"high_res.{k}"].to(self.device) for k in range(len(tensors) - 1)] or None
        # image_embed as float, as the in-memory path keeps it; the rest as the encoder gave it
        return SamFeatures(image_embed=tensors["image_embed"].to(self.device).float(), image_pe=pe, high_res=high,
                           input_size=size)

    def _sam_features(self, examples: list[Example]) -> list[Any]:
        """SAM features per example: from the cache, else encoded. A frozen encoder sees one
        image at a time, so a cached embedding does not depend on the batch that computed it
        (a resumed run is bit-identical); a trained SAM-1 encoder sees the batch at once."""
        from evfbench.models.sam_backends import SamFeatures

        net, frozen = self.net, "image_encoder" not in self.cfg.train
        if frozen and self.store is not None:
            pe = trainable_modules(net)["prompt_encoder"].get_dense_pe()  # the same for every image
            return [self._stored(ex.item, pe) for ex in examples]
        keys = [(ex.item.source, ex.item.group, ex.item.flip) for ex in examples]
        todo = [i for i, key in enumerate(keys) if key not in self._cache]
        out: dict[int, Any] = {i: self._cache[key] for i, key in enumerate(keys) if key in self._cache}
        with torch.no_grad() if frozen else nullcontext():
            if net.config.family == "sam" and todo and not frozen:
                prepared = [net.backend.preprocess(examples[i].image, self.device) for i in todo]
                embeds = net.visual_model.image_encoder(torch.cat([p for p, _ in prepared]))
                pe = net.visual_model.prompt_encoder.get_dense_pe()
                for row, (i, (_, size)) in enumerate(zip(todo, prepared)):
                    out[i] = SamFeatures(image_embed=embeds[row : row + 1], image_pe=pe, input_size=size)
            else:
                for i in todo:
                    out[i] = net.backend.encode(net.visual_model, examples[i].image, self.device)
        for i in todo:
            if frozen:
                out[i].image_embed = out[i].image_embed.float()
            if self.cache_sam:
                self._cache[keys[i]] = out[i]
        return [out[i] for i in range(len(examples))]

    def forward(self, examples: list[Example]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (loss to back-propagate, its :data:`LOSS_PARTS` detached), each summed over the masks."""
        grounding_sum = torch.zeros((), device=self.device)
        low_res = None
        if self.cfg.stage == "sam_categories":
            feats = self._sam_features(examples)
        elif self.cfg.stage == "sam_boxes":
            low_res, feats = self._boxes(examples, self.cfg.point_prob)
        else:
            low_res, feats, grounding_sum = self._texts(examples)
        bce_sum = dice_sum = torch.zeros((), device=self.device)
        if low_res is not None:  # sam_categories decodes no mask
            bce_sum, dice_sum = self._mask_losses(examples, feats, low_res)
        category_sum = torch.zeros((), device=self.device)
        if self.category_head is not None:
            for ex, f in zip(examples, feats):  # weighted like a mask loss: by the example's masks
                category_sum = category_sum + len(ex.masks) * self._category_loss(ex, f)
        loss_sum = (self.cfg.bce_weight * bce_sum + self.cfg.dice_weight * dice_sum + self.cfg.category_aux * category_sum
                    + self.cfg.grounding_aux * grounding_sum)
        parts = {"bce": bce_sum, "dice": dice_sum, "category": category_sum, "grounding": grounding_sum}
        return loss_sum, {k: v.detach() for k, v in parts.items()}

    def _mask_losses(self, examples: list[Example], feats: list[Any], low_res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed BCE and dice of every target, on logits at the original image size."""
        bce_sum = dice_sum = torch.zeros((), device=self.device)
        row = 0
        for ex, f in zip(examples, feats):
            logits = self.net.backend.postprocess(low_res[row : row + len(ex.masks)], f, ex.masks.shape[1:])
            bce, dice = mask_losses(logits, torch.from_numpy(ex.masks).to(self.device))
            bce_sum, dice_sum = bce_sum + bce.sum(), dice_sum + dice.sum()
            row += len(ex.masks)
        return bce_sum, dice_sum

    def category_logits(self, features: Any) -> torch.Tensor:
        """``(1, classes, h, w)``: the category head over the resized image (padding cropped); the
        channels of every head, split by :attr:`class_splits`."""
        assert self.category_head is not None and features.input_size is not None
        h, w = features.input_size
        size = self.net.backend.img_size
        return F.interpolate(self.category_head(features.image_embed.float()), size=(size, size), mode="bilinear",
                             align_corners=False)[:, :, :h, :w]

    def _category_loss(self, ex: Example, features: Any) -> torch.Tensor:
        """Per-pixel cross-entropy of the category head over the resized image, summed with that
        of each attribute head."""
        assert ex.categories is not None
        maps = [ex.categories, *([] if ex.attributes is None else ex.attributes)]
        assert len(maps) == len(self.class_splits)
        logits = self.category_logits(features)
        labels = torch.from_numpy(np.stack(maps)).to(self.device)[None].float()
        labels = F.interpolate(labels, size=logits.shape[-2:], mode="nearest")[0].long()
        return sum(F.cross_entropy(part, label[None]) for part, label in zip(logits.split(self.class_splits, 1), labels))

    def _texts(self, examples: list[Example]) -> tuple[torch.Tensor, list[Any], torch.Tensor]:
        """-> low-resolution logits, SAM features, the summed grounding loss (0 without it)."""
        from evfbench.models import beit3 as beit3_module

        net = self.net
        feats = self._sam_features(examples)
        pixels = torch.cat([beit3_module.preprocess(ex.image, net.config.beit3.img_size, device=self.device) for ex in examples])
        vision = net.beit3.embed_vision(pixels)
        index = torch.tensor([i for i, ex in enumerate(examples) for _ in ex.texts], device=self.device)
        ids, padding = self.model.tokenize([t for ex in examples for t in ex.texts])
        grounding = torch.zeros((), device=self.device)
        if self.grounding_head is None:
            prompt = net.encode_prompt(vision, ids, padding, image_index=index)
        else:
            tokens = net.joint_tokens(vision, ids, padding, image_index=index)
            prompt = net.text_hidden_fcs[0](tokens[:, :1])
            grounding = self.grounding_head(tokens, self._patch_cover(examples))
        if net.config.family == "sam":
            embeds = torch.cat([f.image_embed for f in feats])[index]
            return net.backend.decode_batched(net.visual_model, embeds, prompt), feats, grounding
        rows, out = 0, []
        for ex, f in zip(examples, feats):
            out.append(net.backend.decode(net.visual_model, f, prompt[rows : rows + len(ex.texts)]))
            rows += len(ex.texts)
        return torch.cat(out), feats, grounding

    def _patch_cover(self, examples: list[Example]) -> torch.Tensor:
        """``(texts, patches)``: the share of each BEiT-3 patch its target covers. BEiT-3 squashes
        the image to a square, so the mask is averaged over a ``g x g`` grid of the whole image."""
        g = self.net.config.beit3.img_size // self.net.config.beit3.patch_size
        masks = [torch.from_numpy(ex.masks).to(self.device, torch.float32) for ex in examples]
        return torch.cat([F.adaptive_avg_pool2d(m[:, None], g).flatten(1) for m in masks])

    def _boxes(self, examples: list[Example], point_prob: float = 0.0) -> tuple[torch.Tensor, list[Any]]:
        """Decode each target from its box, or with probability ``point_prob`` from one point."""
        from segment_anything.utils.transforms import ResizeLongestSide

        net = self.net
        vm = net.visual_model
        feats = self._sam_features(examples)
        resize = ResizeLongestSide(net.backend.img_size)
        boxes = torch.cat([
            resize.apply_boxes_torch(torch.from_numpy(ex.boxes()).to(self.device), ex.image.shape[:2]) for ex in examples
        ])
        sparse, dense = vm.prompt_encoder(points=None, boxes=boxes, masks=None)
        if point_prob > 0:  # a point and its padding token: two tokens, as a box
            drawn = [ex.points(point_prob) for ex in examples]
            coords = torch.cat([
                resize.apply_coords_torch(torch.from_numpy(xy).to(self.device), ex.image.shape[:2])
                for (xy, _), ex in zip(drawn, examples)
            ])[:, None]
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
            point_sparse, _ = vm.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            use = torch.from_numpy(np.concatenate([u for _, u in drawn])).to(self.device)
            sparse = torch.where(use[:, None, None], point_sparse, sparse)
        index = torch.tensor([i for i, ex in enumerate(examples) for _ in ex.masks], device=self.device)
        embeds = torch.cat([f.image_embed for f in feats])[index]
        return net.backend.decode_batched(vm, embeds, sparse, dense), feats


# ---- evaluation ------------------------------------------------------------------------------
def evaluate(trainer: Trainer, split: str, data_root: Path | None, limit: int | None,
             points: bool = False, category_ids: list[int] | None = None) -> dict[str, Any]:
    """cIoU / gIoU of the current weights on ``split`` (and under ``kinds``, per sentence kind
    where the text stage's corpus records them): prompted by the texts, or for ``sam_boxes``
    by the target boxes (``points``: by one point of each target, drawn with the image id as seed),
    or for ``sam_categories`` per (image, category): the pixels the category head labels with it
    against that category's instances (the masks of ``[semantic] {category}`` prompts);
    ``category_ids[k - 1]`` is the head's class ``k``."""
    from evfbench.data.refer import category_names, load_split
    from evfbench.metrics import MetricAccumulator, intersection_union
    from evfbench.registry import get_split
    from evfbench.run import limit_groups
    from evfbench.train_data import semantic_samples

    acc = MetricAccumulator()
    by_kind: dict[str, MetricAccumulator] = {}
    card = get_split(split)
    groups = limit_groups(load_split(card, data_root), limit)
    if trainer.cfg.stage == "sam_categories":  # the targets of the [semantic] view
        names = category_names(card, data_root)
        groups = [dataclasses.replace(g, samples=semantic_samples(g, names)) for g in groups]
        classes = {c: k + 1 for k, c in enumerate(category_ids or [])}
    with torch.no_grad():
        for g in groups:
            image = g.load_image()
            if trainer.cfg.stage == "sam_categories":
                labels = predicted_categories(trainer, image)
                pred = [labels == classes.get(s.category_id, -1) for s in g.samples]
            elif trainer.cfg.stage == "sam_boxes":
                item = Item(-1, g.image_id, tuple(range(len(g.samples))), False, prompt_seed=g.image_id)
                masks = np.stack([g.target_mask(s) for s in g.samples])
                ex = Example(item, image, g.texts, masks)
                low, feats = trainer._boxes([ex], 1.0 if points else 0.0)
                pred = (trainer.net.backend.postprocess(low, feats[0], masks.shape[1:]) > 0).cpu().numpy()
            else:
                pred = trainer.model.predict(image, g)
            for sample, mask in zip(g.samples, pred):
                scores = intersection_union(mask, g.target_mask(sample))
                acc.add(*scores)
                if sample.kind and trainer.cfg.stage == "text":
                    by_kind.setdefault(sample.kind, MetricAccumulator()).add(*scores)
    m = acc.compute()
    kinds = {kind: {"ciou": k["ciou"], "giou": k["giou"], "n_sentences": a.n}
             for kind, a in sorted(by_kind.items()) for k in [a.compute()]}
    return {"ciou": m["ciou"], "giou": m["giou"], "n_sentences": acc.n, "kinds": kinds}


def predicted_categories(trainer: Trainer, image: np.ndarray) -> np.ndarray:
    """``(H, W)`` class of every pixel by the category head (0 = background; see :meth:`TrainingData.category_map`)."""
    net = trainer.net
    feats = net.backend.encode(net.visual_model, image, trainer.device)
    logits = trainer.category_logits(feats)[:, : trainer.class_splits[0]]
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu().numpy()


# ---- output files ----------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def plot_curves(path: Path, log: list[dict[str, Any]], evals: list[dict[str, Any]], title: str) -> None:
    """Mask loss (and BCE, dice, the auxiliary losses) against the step; evaluation cIoU on a second axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = [int(r["step"]) for r in log]
    for key in ("loss", *LOSS_PARTS):
        if all(r.get(key) for r in log):  # category, grounding: only with their losses (and not in older logs)
            ax.plot(steps, [float(r[key]) for r in log], label=key, linewidth=1.5 if key == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if evals:
        ax2 = ax.twinx()
        colors = itertools.cycle(("black", "tab:purple", "tab:brown", "tab:olive"))
        for split, color in zip(sorted({r["split"] for r in evals}), colors):
            rows = [r for r in evals if r["split"] == split]
            ax2.plot([int(r["step"]) for r in rows], [float(r["ciou"]) for r in rows], "o-", color=color,
                     markersize=3, label=f"cIoU {split}")
        ax2.set_ylabel("cIoU")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    fig.tight_layout()
    atomic_write_figure(path, fig)


def plot_kinds(path: Path, evals: list[dict[str, Any]], title: str) -> None:
    """cIoU of each sentence kind (the ``<split>/<kind>`` rows of the evaluation log) against the step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in sorted({r["split"] for r in evals}, key=lambda n: ("/" in n, n)):
        rows = [r for r in evals if r["split"] == name]
        label = name.split("/", 1)[1] + f" ({rows[-1]['n_sentences']})" if "/" in name else f"{name}, all"
        ax.plot([int(r["step"]) for r in rows], [float(r["ciou"]) for r in rows], "o-", markersize=3, label=label,
                color="black" if "/" not in name else None, linewidth=2 if "/" not in name else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("cIoU")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}: cIoU per sentence kind (sentences)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    atomic_write_figure(path, fig)


# ---- checkpoints -----------------------------------------------------------------------------
def save_weights(model: Any, cfg: TrainConfig, folder: Path, dtype: str = "fp32") -> None:
    """The official layout (text stage) or the stock SAM state dict (:data:`SAM_STAGES`), floating
    tensors stored as ``dtype``."""
    from evfbench.models.checkpoint import save_safetensors

    if cfg.stage in SAM_STAGES:
        cast = PRECISIONS[dtype]
        state = {k: v.to(cast) if v.is_floating_point() else v for k, v in model.net.visual_model.state_dict().items()}
        save_safetensors(folder / SAM_FILE, state)
        atomic_write_json(folder / "sam_config.json", model.config.sam.to_dict())
    else:
        model.save_pretrained(folder, dtype=dtype)


def latest_checkpoint(output_dir: Path) -> Path | None:
    pointer = output_dir / "checkpoints" / "LATEST"
    if not pointer.is_file():
        return None
    folder = output_dir / "checkpoints" / pointer.read_text(encoding="utf-8").strip()
    if not (folder / STATE_FILE).is_file():
        raise TrainError(f"{pointer} names {folder}, which holds no {STATE_FILE}\n  fix: delete {pointer} to start over")
    return folder


def save_checkpoint(model: Any, cfg: TrainConfig, output_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``checkpoints/step-N`` completely under a temporary name, rename it, then point
    ``LATEST`` at it: a crash leaves the previous checkpoint usable."""
    root = output_dir / "checkpoints"
    folder = root / f"step-{state['step']:06d}"
    partial = root / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_weights(model, cfg, partial)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(partial / STATE_FILE, buffer.getvalue())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    atomic_write_text(root / "LATEST", folder.name + "\n")
    old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != folder)
    for p in old[: max(0, len(old) - (cfg.keep_checkpoints - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return folder


# ---- building --------------------------------------------------------------------------------
def resolve_sam_checkpoint(path: str) -> str:
    """A ``sam_boxes`` / ``sam_categories`` output folder (``model/`` or a checkpoint) stands for its ``sam.safetensors``."""
    p = Path(path)
    if p.is_dir():
        if not (p / SAM_FILE).is_file():
            raise TrainError(f"--sam-checkpoint {p} is a folder without {SAM_FILE}; pass a SAM file or a sam_boxes / "
                             "sam_categories output")
        return str(p / SAM_FILE)
    return path


def build_model(cfg: TrainConfig, device: torch.device, resume_from: Path | None) -> Any:
    from evfbench.registry import create_model

    args = dict(cfg.model_args)
    if resume_from is not None and cfg.stage == "text":
        args["weights"] = str(resume_from)
    elif resume_from is not None:
        args["sam_checkpoint"] = str(resume_from / SAM_FILE)
        if cfg.beit3_checkpoint:
            args["beit3_checkpoint"] = cfg.beit3_checkpoint
    switch_to = None
    if resume_from is None:
        if cfg.init:
            args["weights"] = cfg.init
            if "fusion" in args:
                # e.g. --init a text-only run --model-args fusion=early: load it with the fusion its
                # config.json records (fusion=None), then switch
                switch_to, args["fusion"] = args["fusion"], None
        if cfg.sam_checkpoint:
            args["sam_checkpoint"] = resolve_sam_checkpoint(cfg.sam_checkpoint)
        if cfg.beit3_checkpoint:
            args["beit3_checkpoint"] = cfg.beit3_checkpoint
    if cfg.tokenizer and resume_from is None:
        args["tokenizer"] = cfg.tokenizer
    model = create_model(cfg.model, device=device, **args)
    if not hasattr(model, "net") or not hasattr(model.net, "visual_model"):
        raise TrainError(f"--model {cfg.model} is not an EVF-SAM model; evfbench.train trains evf_sam / evf_sam2 architectures")
    if cfg.stage in SAM_STAGES and model.config.family != "sam":
        raise TrainError(f"--stage {cfg.stage} trains SAM-1 (segment_anything) models only")
    trained_as = model.config.fusion
    if switch_to is not None and switch_to != trained_as:
        try:
            model.net.switch_fusion(switch_to)
        except ValueError as err:
            raise TrainError(f"--init {cfg.init}: {err}") from None
        print(f"--init {cfg.init}: {trained_as}-fusion weights continue as {switch_to} fusion")
    if cfg.beit3_position_std > 0 and resume_from is None:
        if cfg.init and trained_as != "text":
            raise TrainError(f"--init {cfg.init} is a {trained_as}-fusion model: its BEiT-3 image side is trained, and "
                             "beit3_position_std would redraw its positions\n  fix: set --beit3-position-std 0")
        with torch.no_grad():
            nn.init.normal_(model.net.beit3.encoder.embed_positions.A.weight, std=cfg.beit3_position_std)
    return model


def carry_heads(trainer: Trainer, cfg: TrainConfig, announce: bool = True) -> None:
    """Continue each auxiliary head from the checkpoint this run starts from (``init``, or a
    ``sam_checkpoint`` checkpoint folder) when that run trained one of the same shape. A fresh
    head at full weight first pulls the encoder towards its random classes: in a chained stage
    the category loss restarted at 1.16 (its first 20 steps) where the previous one ended at 0.08."""
    heads = {name: head for name, head in trainer.heads().items() if head is not None}
    start = cfg.init or cfg.sam_checkpoint
    state_file = Path(start) / STATE_FILE if heads and start else None
    if state_file is None or not state_file.is_file():
        return  # no head, or a model/ folder, a file or a hub id: the heads start fresh
    # mmap: only the heads are read, not the optimizer state beside them (GBs for a large model)
    state = torch.load(state_file, map_location="cpu", weights_only=True, mmap=True)
    for name, head in heads.items():
        saved = state.get(name)
        if saved is None:
            continue
        own = head.state_dict()
        if saved.keys() != own.keys() or any(saved[k].shape != v.shape for k, v in own.items()):
            if announce:
                print(f"{state_file}: its {name} has other shapes (another category set?); {name} starts fresh")
            continue
        head.load_state_dict(saved)
        if announce:
            print(f"{name} continues from {state_file}")


def attach_tokenizer(model: Any, cfg: TrainConfig, data: TrainingData, output_dir: Path, ctx: Context) -> None:
    """Give a model built without one the tokenizer trained on the training sentences: every
    sentence of every ``--data`` source, also of a source with weight 0, which is how a first
    curriculum stage learns the words of the later ones without sampling them."""
    from evfbench.models.tokenizer import BeitTokenizer

    if model.tokenizer is not None or cfg.stage in SAM_STAGES:
        return
    if cfg.tokenizer_vocab <= 0:
        raise TrainError("the model has no tokenizer: pass --init (a folder with one), --tokenizer FOLDER_OR_SPM_FILE, "
                         "or --tokenizer-vocab N to train one on the training sentences")
    folder = output_dir / "tokenizer"
    if ctx.is_main:
        train_tokenizer(data.sentences(), folder, cfg.tokenizer_vocab)
    ctx.barrier()
    tok = BeitTokenizer.from_folder(folder, max_length=model.config.beit3.max_text_len)
    if len(tok) > model.config.beit3.vocab_size:
        raise TrainError(f"the trained tokenizer has {len(tok)} ids but BEiT-3's vocab_size is {model.config.beit3.vocab_size}; "
                         "lower --tokenizer-vocab or raise beit3_config.vocab_size")
    model.tokenizer = tok


# ---- the loop --------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def config_changes(output_dir: Path, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (was, now)}`` for each field outside :data:`RESUME_FREE` in which ``cfg``
    differs from the run in ``output_dir`` (its ``config.yaml``): would ``cfg`` train another run?"""
    path = output_dir / "config.yaml"
    old = dataclasses.asdict(TrainConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path)))
    return {k: (old[k], v) for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE and old[k] != v}


def _check_resume_config(output_dir: Path, cfg: TrainConfig) -> None:
    path = output_dir / "config.yaml"
    if not path.is_file():
        raise TrainError(f"--resume: {path} is missing, so the run cannot be checked\n  fix: start a new run without --resume")
    diff = config_changes(output_dir, cfg)
    if diff:
        lines = "\n  ".join(f"{k}: was {o!r}, now {n!r}" for k, (o, n) in diff.items())
        raise TrainError(f"--resume with settings that change the run ({path}):\n  {lines}\n"
                         "  fix: rerun with the original settings, or use a new --output-dir")


def _no_buffer_sync() -> dict[str, bool]:
    """DDP arguments that skip the per-step buffer broadcast: every rank builds the same buffers
    (SAM's pixel statistics and positional Gaussian matrix, from the same weights). Newer torch
    names the flag ``forward_sync_buffers`` and warns on ``broadcast_buffers`` (2.14 does); older
    torch has only ``broadcast_buffers``."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _micro_batches(items: list[Item], ctx: Context, per_device: int, accum: int) -> Iterator[list[Item]]:
    """This process's share: micro-batch ``a`` is slice ``a * world + rank`` of the global batch."""
    for a in range(accum):
        start = (a * ctx.world_size + ctx.rank) * per_device
        yield items[start : start + per_device]


def train(cfg: TrainConfig, output_dir: Path, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> Path:
    """Run ``cfg`` into ``output_dir``; returns the final weights folder (``<output-dir>/model``).

    ``stop_at``: checkpoint and return at this step (a time slice of the run; the schedule
    still spans ``cfg.steps``); returns the checkpoint folder then.
    """
    cfg.validate()
    output_dir = Path(output_dir)
    data_root = Path(cfg.data_root) if cfg.data_root else None
    with distributed(cfg.device) as ctx:
        device = ctx.device(cfg.device)
        per_process = cfg.per_device_batch * ctx.world_size
        if cfg.global_batch % per_process:
            raise TrainError(f"global_batch {cfg.global_batch} is not a multiple of per_device_batch {cfg.per_device_batch} "
                             f"x {ctx.world_size} processes\n  fix: change --global-batch or --per-device-batch")
        accum = cfg.global_batch // per_process
        amp_dtype = PRECISIONS[cfg.precision]
        if cfg.precision == "fp16" and device.type != "cuda":
            raise TrainError("--precision fp16 needs CUDA (use bf16 on CPU)")

        resume_from = latest_checkpoint(output_dir) if resume else None
        if resume and resume_from is None:
            raise TrainError(f"--resume: {output_dir}/checkpoints/LATEST does not exist (no checkpoint yet)\n"
                             "  fix: start without --resume")
        if ctx.is_main:
            if resume:
                _check_resume_config(output_dir, cfg)
            elif (output_dir / "checkpoints" / "LATEST").exists():
                raise TrainError(f"{output_dir} already holds a run\n  fix: pass --resume to continue it or use another --output-dir")
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output_dir / "config.yaml", cfg.to_yaml())
        ctx.barrier()

        data = TrainingData(cfg.data, cfg.data_weights, data_root, class_attributes=cfg.category_aux_attributes,
                            head_attributes=cfg.category_aux_heads)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, device, resume_from)
        attach_tokenizer(model, cfg, data, output_dir, ctx)
        net = model.net.float().train()
        set_trainable(net, cfg.train)
        trainer = Trainer(model, cfg, device, n_classes=len(data.pixel_classes),
                          head_classes=[len(values) for values in data.head_values.values()])
        if resume_from is None:
            carry_heads(trainer, cfg, announce=ctx.is_main)
        store_s = 0.0  # building the store counts in the run's time, as encoding inside the steps does without it
        if cfg.feature_store:
            started = time.perf_counter()
            trainer.attach_store(data, ctx, progress)
            store_s = time.perf_counter() - started
        module: nn.Module = trainer
        if ctx.enabled:
            module = nn.parallel.DistributedDataParallel(
                trainer, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True, **_no_buffer_sync(),
            )
        optimizer = build_optimizer(cfg, param_groups(net, cfg, trainer.heads()), device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps))
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

        start, elapsed_before = 0, 0.0
        log = read_csv(output_dir / "train_log.csv") if resume else []
        evals = read_csv(output_dir / "eval_log.csv") if resume else []
        if resume_from is not None:
            state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
            if state["world_size"] * state["per_device_batch"] * state["accum"] != cfg.global_batch:
                raise TrainError(f"{resume_from / STATE_FILE}: saved for another global batch")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            for name, head in trainer.heads().items():
                if head is not None:
                    head.load_state_dict(state[name])
            start, elapsed_before = int(state["step"]), float(state["elapsed_s"])
            log = [r for r in log if int(r["step"]) <= start]
            evals = [r for r in evals if int(r["step"]) <= start]

        def autocast() -> Any:
            return torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.precision != "fp32")

        def write_logs() -> None:
            if ctx.is_main:
                write_csv(output_dir / "train_log.csv", LOG_COLUMNS, log)
                write_csv(output_dir / "eval_log.csv", EVAL_COLUMNS, evals)
                title = f"{cfg.model} ({cfg.stage}) {output_dir.name}"
                if log:
                    plot_curves(output_dir / "loss_curve.png", log, [r for r in evals if "/" not in r["split"]], title)
                if any("/" in r["split"] for r in evals):
                    plot_kinds(output_dir / "kinds_curve.png", evals, title)

        def run_eval(step: int) -> None:
            if not (cfg.val_split and ctx.is_main):
                return
            prompts = [False, True] if cfg.stage == "sam_boxes" and cfg.point_prob > 0 else [False]
            for points in prompts:
                m = evaluate(trainer, cfg.val_split, data_root, cfg.eval_limit, points=points, category_ids=data.category_ids)
                suffix = ":points" if points else ":categories" if cfg.stage == "sam_categories" else ""
                split = cfg.val_split + suffix
                rows = [(split, m), *((f"{split}/{kind}", k) for kind, k in m["kinds"].items())]
                evals.extend({"step": step, "split": name, "ciou": f"{r['ciou']:.6f}", "giou": f"{r['giou']:.6f}",
                              "n_sentences": r["n_sentences"]} for name, r in rows)
                tqdm.write(f"step {step}: {split} cIoU {m['ciou']:.4f} gIoU {m['giou']:.4f}")
            # the rows now, so they can be watched and survive a crash; the curves follow at the
            # checkpoint, which comes right after the evaluation at the last step
            write_csv(output_dir / "eval_log.csv", EVAL_COLUMNS, evals)

        def checkpoint(step: int, elapsed: float) -> None:
            if ctx.is_main:
                state = {"step": step, "elapsed_s": elapsed, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                         "data_position": step, "world_size": ctx.world_size, "per_device_batch": cfg.per_device_batch,
                         "accum": accum}
                for name, head in trainer.heads().items():
                    if head is not None:
                        state[name] = head.state_dict()
                save_checkpoint(model, cfg, output_dir, state)
                write_logs()
            ctx.barrier()

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.stage}", unit="step", dynamic_ncols=True,
                   disable=not (progress and ctx.is_main))
        t0 = time.perf_counter() - elapsed_before - store_s
        window = {**dict.fromkeys(LOSS_PARTS, 0.0), "masks": 0, "images": 0, "t": time.perf_counter()}
        images_cache: dict[tuple[int, int], np.ndarray] = {}
        for step in range(start, cfg.steps):
            items = data.global_batch(cfg.seed, step, cfg.global_batch, cfg.texts_per_image, cfg.flip_prob)
            n_masks = sum(len(i.texts) for i in items)
            optimizer.zero_grad(set_to_none=True)
            local = dict.fromkeys(LOSS_PARTS, 0.0)
            for a, micro in enumerate(_micro_batches(items, ctx, cfg.per_device_batch, accum)):
                examples = []
                for item in micro:
                    key = (item.source, item.group)
                    image = images_cache.get(key)
                    if image is None:
                        image = data.group(item).load_image()
                        if cfg.cache:
                            images_cache[key] = image
                    examples.append(data.example(item, image, categories=cfg.category_aux > 0))
                sync = module.no_sync() if ctx.enabled and a < accum - 1 else nullcontext()
                with sync:
                    with autocast():
                        loss_sum, parts = module(examples)
                    # sum over this micro-batch's masks / all masks of the global batch; DDP
                    # averages over processes, hence the world size.
                    scaler.scale(loss_sum * ctx.world_size / n_masks).backward()
                for key in LOSS_PARTS:
                    local[key] += float(parts[key])
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            done = step + 1
            for key in LOSS_PARTS:
                window[key] += local[key]
            window["masks"] += n_masks
            window["images"] += cfg.global_batch
            if done % cfg.log_every == 0 or done == cfg.steps:
                sums = ctx.all_gather(tuple(window[key] for key in LOSS_PARTS))
                mean = {key: sum(s[k] for s in sums) / window["masks"] for k, key in enumerate(LOSS_PARTS)}
                now = time.perf_counter()
                rate = window["images"] / max(now - window["t"], 1e-9)
                loss = cfg.bce_weight * mean["bce"] + cfg.dice_weight * mean["dice"]
                if cfg.stage == "sam_categories":  # its one loss
                    loss = cfg.category_aux * mean["category"]
                lr = optimizer.param_groups[0]["lr"] / cfg.lr_scales.get(optimizer.param_groups[0]["name"], 1.0)
                masks = cfg.stage != "sam_categories"
                logged = {"bce": masks, "dice": masks, "category": cfg.category_aux > 0, "grounding": cfg.grounding_aux > 0}
                log.append({"step": done, "loss": f"{loss:.6f}",
                            **{key: f"{mean[key]:.6f}" if logged[key] else "" for key in LOSS_PARTS},
                            "lr": f"{lr:.6g}", "samples_per_s": f"{rate:.2f}", "elapsed_s": f"{now - t0:.1f}"})
                if ctx.is_main:  # the CSV is small: rewritten whole, atomically, so it can be watched
                    write_csv(output_dir / "train_log.csv", LOG_COLUMNS, log)
                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.1f}", refresh=False)
                window = {**dict.fromkeys(LOSS_PARTS, 0.0), "masks": 0, "images": 0, "t": now}
            bar.update(1)
            if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
                run_eval(done)
                ctx.barrier()
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or done == stop_at:
                if done == cfg.steps:
                    run_eval(done)
                checkpoint(done, time.perf_counter() - t0)
            if done == stop_at and done < cfg.steps:
                bar.close()
                return output_dir / "checkpoints" / f"step-{done:06d}"
        bar.close()
        final = output_dir / "model"
        if ctx.is_main:
            if start >= cfg.steps:
                write_logs()
            # written whole under a temporary name, then renamed: a model/ folder is a finished run
            partial = output_dir / ".model.partial"
            shutil.rmtree(partial, ignore_errors=True)
            save_weights(model, cfg, partial, cfg.final_dtype)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            total = time.perf_counter() - t0
            print(f"trained {cfg.steps} steps ({total / 60:.1f} min) -> {final}")
        ctx.barrier()
    return final


# ---- command line ----------------------------------------------------------------------------
def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evfbench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help="YAML file of TrainConfig fields (flags win over it)")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/LATEST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-at", type=int, default=None, help="checkpoint and exit at this step (resume later)")
    p.add_argument("--model", help="registered EVF-SAM model (default evf_sam)")
    p.add_argument("--model-args", help="builder arguments k=v,k2=v2 (YAML values), merged over the config's")
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--init", help="EVF-SAM folder in the official layout to start from (a run's checkpoints/step-N "
                   "also passes on its auxiliary heads)")
    p.add_argument("--sam-checkpoint", help="original SAM file, or a --stage sam_boxes / sam_categories output folder")
    p.add_argument("--beit3-checkpoint", help="beit3_large_patch16_224.pth")
    p.add_argument("--tokenizer", help="tokenizer folder or SentencePiece .model file")
    p.add_argument("--tokenizer-vocab", type=int, help="train a SentencePiece tokenizer of this size on the data")
    p.add_argument("--data", type=_csv_list, help="training sources, e.g. refcoco,refcoco+,refcocog,refclef; NAME:semantic gives "
                   "[semantic] {category} prompts, NAME:KIND+KIND only those sentence kinds (shapes)")
    p.add_argument("--data-weights", type=lambda t: [float(x) for x in _csv_list(t)], help="sampling ratios, e.g. 1,1,1,1")
    p.add_argument("--data-root", help="datasets root (default $EVFBENCH_DATA)")
    p.add_argument("--val-split", help="evaluate on this split (e.g. refcoco_val)")
    p.add_argument("--train", type=_csv_list, help=f"trainable modules among {','.join(MODULES)}")
    p.add_argument("--freeze", type=_csv_list, help="modules to remove from the trainable set")
    for name, kind in (("steps", int), ("global-batch", int), ("per-device-batch", int), ("texts-per-image", int),
                       ("lr", float), ("weight-decay", float), ("warmup-steps", int), ("grad-clip", float),
                       ("bce-weight", float), ("dice-weight", float), ("flip-prob", float), ("seed", int),
                       ("eval-every", int), ("eval-limit", int), ("log-every", int), ("checkpoint-every", int),
                       ("keep-checkpoints", int)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--cache", action="store_true", default=None, help="keep images and frozen SAM embeddings in memory")
    p.add_argument("--feature-store", help="folder for the frozen SAM features, computed once per image and flip and "
                   "shared by processes and by later stages with the same encoder")
    p.add_argument("--category-aux", type=float, help="weight of a per-pixel category loss on the SAM embedding (a SAM "
                   "trained from scratch then learns what the objects are); needs image_encoder in --train")
    p.add_argument("--category-aux-attributes", type=_csv_list, help="annotation attributes crossed with the category in "
                   "the classes of --category-aux, e.g. color (shapes): one class per (category, colour)")
    p.add_argument("--category-aux-heads", type=_csv_list, help="annotation attributes with a per-pixel head of their "
                   "own in the --category-aux loss, e.g. size (shapes): one class per size; hidden (shapes, derived from "
                   "full_area): whole, slightly or partly covered by other shapes")
    p.add_argument("--grounding-aux", type=float, help="weight of a loss teaching the early-fusion BEiT-3 where the "
                   "target is (per-patch cover, and the image [CLS]'s distribution over the patches)")
    p.add_argument("--beit3-position-std", type=float, help="redraw BEiT-3's vision position table with this std "
                   "(a BEiT-3 trained from scratch; the 0.02 init hides where patches are)")
    p.add_argument("--point-prob", type=float, help="--stage sam_boxes: share of targets prompted by one point of "
                   "the mask instead of the box (SAM trains on both)")
    p.add_argument("--precision", choices=sorted(PRECISIONS))
    p.add_argument("--final-dtype", choices=sorted(PRECISIONS), help="file dtype of <output-dir>/model")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--device", help="cpu or cuda")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the ``--config`` file, then the flags that were given."""
    from evfbench.run import parse_model_args

    data: dict[str, Any] = {}
    if args.config is not None:
        if not args.config.is_file():
            raise TrainError(f"--config {args.config} does not exist")
        loaded = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise TrainError(f"{args.config} must hold a mapping of TrainConfig fields")
        data.update(loaded)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in vars(args).items():
        if key in fields and value is not None and key != "model_args":
            data[key] = value
    if args.model_args:
        data["model_args"] = {**(data.get("model_args") or {}), **parse_model_args(args.model_args)}
    cfg = TrainConfig.from_dict(data, str(args.config or "the command line"))
    if cfg.stage == "sam_boxes" and "train" not in data:
        cfg.train = ["image_encoder", "prompt_encoder", "mask_decoder"]
    if cfg.stage == "sam_categories" and "train" not in data:
        cfg.train = ["image_encoder"]
    if cfg.stage == "sam_categories" and "category_aux" not in data:
        cfg.category_aux = 1.0
    if args.freeze:
        cfg.train = [m for m in cfg.train if m not in args.freeze]
        unknown = [m for m in args.freeze if m not in MODULES]
        if unknown:
            raise TrainError(f"--freeze {unknown}: unknown module(s); known: {', '.join(MODULES)}")
    return cfg


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    train(cfg, args.output_dir, resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at)
    return 0


if __name__ == "__main__":
    sys.exit(main())
