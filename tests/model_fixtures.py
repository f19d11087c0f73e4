"""Offline stand-ins for model files: a tiny SentencePiece tokenizer trained here, tiny EVF-SAM
models of the real architectures, images and image groups.

Import the fixtures into a test module (``from model_fixtures import spm_folder``) to use them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from evfbench.data.types import ImageGroup, Sample

CORPUS = [
    "the man on the left", "a red car parked near the tree", "woman in blue shirt", "left zebra",
    "right most person", "guy with hat holding a bat", "small dog under the table", "kid wearing glasses",
    "tall building behind the bus", "white plate with food", "person in the middle", "bottom right corner",
    "the elephant facing us", "blue umbrella", "girl with long hair", "closest chair", "broccoli on top",
]


def train_spm(folder: Path, vocab_size: int = 60, semantic: bool = True, model_type: str = "unigram") -> Path:
    """Train a tiny SentencePiece model on :data:`CORPUS` and write a tokenizer folder in the
    official layout: ``sentencepiece.bpe.model`` (+ ``added_tokens.json`` with ``[semantic]`` at
    the first free id, as 64002 in the multitask checkpoints)."""
    import sentencepiece

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 10), model_writer=buffer, vocab_size=vocab_size, model_type=model_type,
        hard_vocab_limit=False, num_threads=1, minloglevel=2, seed_sentencepiece_size=10000,
    )
    (folder / "sentencepiece.bpe.model").write_bytes(buffer.getvalue())
    if semantic:
        processor = sentencepiece.SentencePieceProcessor(model_proto=buffer.getvalue())
        (folder / "added_tokens.json").write_text(json.dumps({"[semantic]": len(processor) + 2}))
    return folder


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB ``HWC uint8`` image (blobs, so resizing changes it gradually)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(height // 8, 2), max(width // 8, 2), 3)).astype(np.float32)
    ys = np.linspace(0, small.shape[0] - 1, height)
    xs = np.linspace(0, small.shape[1] - 1, width)
    img = small[np.round(ys).astype(int)][:, np.round(xs).astype(int)]
    noise = rng.integers(0, 32, size=(height, width, 3))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_group(texts: list[str], height: int, width: int, image_id: int = 1) -> ImageGroup:
    samples = [Sample(sent_id=image_id * 100 + i, ref_id=i, image_id=image_id, text=t, ann_ids=(i,)) for i, t in enumerate(texts)]
    return ImageGroup(image_id=image_id, path=Path(f"{image_id}.jpg"), height=height, width=width, samples=samples)


@pytest.fixture(scope="session")
def spm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_spm(tmp_path_factory.mktemp("spm"))


def tiny_model(family: str, tokenizer: Path, **kwargs):
    """A randomly initialised ``evf_sam_tiny`` / ``evf_sam2_tiny`` (seeded)."""
    import torch

    from evfbench.registry import create_model

    torch.manual_seed(kwargs.pop("seed", 0))
    name = "evf_sam_tiny" if family == "sam" else "evf_sam2_tiny"
    return create_model(name, tokenizer=str(tokenizer), **kwargs)


def spread_weights(model, seed: int = 0, gain: float = 1.5) -> None:
    """Re-draw the matrices of a random tiny model at a variance-preserving scale.

    The stock initialisations (trunc-normal 0.02, ...) give logits of about 0.1 that barely
    depend on the text; after this, logits are O(1..10) and differ per text, so tests can
    compare masks without near-ties at 0.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.net.named_parameters()):
            if param.dim() < 2:
                continue
            is_table = isinstance(_module_of(model.net, name), torch.nn.Embedding)
            std = 1.0 if is_table else gain / param[0].numel() ** 0.5
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def _module_of(root, param_name: str):
    module = root
    for part in param_name.split(".")[:-1]:
        module = getattr(module, part)
    return module
