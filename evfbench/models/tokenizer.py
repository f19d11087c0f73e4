"""The BEiT-3 / EVF-SAM tokenizer: the slow ``XLMRobertaTokenizer`` algorithm over SentencePiece.

EVF-SAM checkpoints ship ``sentencepiece.bpe.model`` (BEiT-3's ``beit3.spm``), read by the
reference with ``AutoTokenizer.from_pretrained(folder, use_fast=False)``, i.e. the *slow*
``transformers.XLMRobertaTokenizer`` of transformers 4.x:

- added tokens (``[semantic]`` = 64002 in the multitask checkpoints, from ``added_tokens.json``)
  and the special tokens are split out of the text first, whitespace around them stripped;
- every other span goes through ``SentencePieceProcessor.encode``; a piece id ``i`` becomes
  ``i + 1`` (the fairseq offset) and SentencePiece's unknown (0) becomes ``<unk>`` = 3;
- ids: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, ``<mask>`` = pieces + 1;
  a text is ``<s> pieces </s>``; batches are right-padded with 1.

Supported transformers versions: all, because this module does not use transformers. It
re-implements the algorithm above on the ``sentencepiece`` package (>= 0.1.99) so that the ids
are those of the reference on any installed version. transformers 5 removed the slow class:
its ``XLMRobertaTokenizer`` is a ``tokenizers``-backed Unigram re-implementation, which agrees
for Unigram-type models (checked in ``tests/test_evf_sam.py`` against 5.24) but segments BPE-type
SentencePiece models differently. The files written by :meth:`BeitTokenizer.save` still load
with ``transformers.AutoTokenizer`` (4.x slow or 5.x).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import torch

from evfbench.errors import EvfbenchError
from evfbench.io import atomic_write_bytes, atomic_write_json

__all__ = ["BeitTokenizer", "SPM_FILE", "SEMANTIC_TOKEN"]

SPM_FILE = "sentencepiece.bpe.model"
SEMANTIC_TOKEN = "[semantic]"
BOS, PAD, EOS, UNK = 0, 1, 2, 3
_SPECIALS = {"<s>": BOS, "<pad>": PAD, "</s>": EOS, "<unk>": UNK}


class BeitTokenizer:
    """Text -> BEiT-3 ids, exactly as the reference's slow ``XLMRobertaTokenizer``.

    >>> tok = BeitTokenizer.from_folder("/ckpt/evf-sam-multitask")
    >>> ids, padding = tok.batch(["[semantic] sky", "the man on the left"])  # (B, L), True = pad
    """

    def __init__(self, spm_model: bytes, added_tokens: dict[str, int] | None = None, max_length: int | None = None) -> None:
        import sentencepiece

        self.spm_bytes = bytes(spm_model)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.spm_bytes)
        self.mask_id = len(self.sp) + 1
        self.base_size = len(self.sp) + 2  # pieces shifted by one, plus <mask>
        self.added_tokens = dict(added_tokens or {})
        for token, idx in self.added_tokens.items():
            if idx < self.base_size:
                raise EvfbenchError(
                    f"added token {token!r} has id {idx}, inside the SentencePiece vocabulary (size {self.base_size}); "
                    "added_tokens.json does not belong to this sentencepiece model"
                )
        self.max_length = max_length
        splitters = {**_SPECIALS, "<mask>": self.mask_id, **self.added_tokens}
        self._splitters = splitters
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in sorted(splitters, key=len, reverse=True)) + ")")

    # ---- files --------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int | None = None) -> "BeitTokenizer":
        """Read ``sentencepiece.bpe.model`` and the added tokens (``added_tokens.json`` or the
        ``added_tokens_decoder`` of ``tokenizer_config.json``) from a checkpoint folder."""
        folder = Path(folder)
        spm_path = folder / SPM_FILE
        if not spm_path.is_file():
            raise EvfbenchError(f"{folder} has no {SPM_FILE}: not an EVF-SAM / BEiT-3 tokenizer folder")
        added: dict[str, int] = {}
        added_json = folder / "added_tokens.json"
        if added_json.is_file():
            added.update({str(k): int(v) for k, v in json.loads(added_json.read_text(encoding="utf-8")).items()})
        config_json = folder / "tokenizer_config.json"
        if config_json.is_file():
            decoder = json.loads(config_json.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
            for idx, spec in decoder.items():
                content = spec.get("content") if isinstance(spec, dict) else str(spec)
                if content and content not in _SPECIALS and content != "<mask>":
                    added.setdefault(content, int(idx))
        return cls(spm_path.read_bytes(), added, max_length=max_length)

    @classmethod
    def from_path(cls, path: str | Path, max_length: int | None = None) -> "BeitTokenizer":
        """A checkpoint folder, or a bare SentencePiece model file (no added tokens)."""
        path = Path(path)
        if path.is_dir():
            return cls.from_folder(path, max_length=max_length)
        if path.is_file():
            return cls(path.read_bytes(), max_length=max_length)
        raise EvfbenchError(f"tokenizer {path} does not exist (expected a folder with {SPM_FILE}, or the .model file)")

    def save(self, folder: str | Path) -> None:
        """Write the tokenizer files of the official layout (loadable by ``AutoTokenizer`` too)."""
        folder = Path(folder)
        atomic_write_bytes(folder / SPM_FILE, self.spm_bytes)
        if self.added_tokens:
            atomic_write_json(folder / "added_tokens.json", self.added_tokens)
        specials = {
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
            "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>",
        }
        atomic_write_json(folder / "special_tokens_map.json", specials)
        atomic_write_json(folder / "tokenizer_config.json", {"tokenizer_class": "XLMRobertaTokenizer", **specials})

    # ---- encoding -----------------------------------------------------------------------
    def __len__(self) -> int:
        return max([self.base_size - 1, *self.added_tokens.values()]) + 1

    def token_id(self, token: str) -> int:
        """Id of a special or added token, e.g. ``token_id("[semantic]")``."""
        if token not in self._splitters:
            raise KeyError(f"{token!r} is not a special or added token of this tokenizer")
        return self._splitters[token]

    def encode(self, text: str) -> list[int]:
        """``<s> ... </s>`` ids of one text (truncated to ``max_length`` ids, eos kept)."""
        ids = [BOS]
        # re.split with a group alternates text, token, text, ...: odd indices are tokens.
        chunks = self._split_re.split(text)
        for n, chunk in enumerate(chunks):
            if n % 2:
                ids.append(self._splitters[chunk])
                continue
            if n > 0:  # whitespace next to a special / added token is stripped (transformers 4.x)
                chunk = chunk.lstrip()
            if n < len(chunks) - 1:
                chunk = chunk.rstrip()
            if chunk:
                ids.extend(i + 1 if i else UNK for i in self.sp.encode(chunk))
        if self.max_length is not None and len(ids) + 1 > self.max_length:
            ids = ids[: self.max_length - 1]
        ids.append(EOS)
        return ids

    def batch(self, texts: Iterable[str], device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(B, L) long`` ids and the ``(B, L) bool`` padding mask (True = padding)."""
        encoded = [self.encode(t) for t in texts]
        if not encoded:
            raise ValueError("no texts to tokenize")
        length = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), length), PAD, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        padding = torch.zeros_like(ids, dtype=torch.bool)
        for row, e in enumerate(encoded):
            padding[row, len(e) :] = True
        return ids.to(device), padding.to(device)
