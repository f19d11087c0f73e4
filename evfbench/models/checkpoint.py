"""Checkpoint files: finding them, reading them safely, checking them strictly, writing them.

A checkpoint *folder* in the official EVF-SAM layout (Hugging Face ``save_pretrained``)::

    <folder>/
      config.json                 model_type "evf", architectures, hidden_size, out_dim, scales
      model.safetensors           or pytorch_model.bin (or sharded, with a *.index.json)
      sentencepiece.bpe.model     tokenizer (+ added_tokens.json, special_tokens_map.json,
                                  tokenizer_config.json)

Reading never executes pickled code: ``.bin`` / ``.pth`` / ``.pt`` go through
``torch.load(weights_only=True)``, ``.safetensors`` through ``safetensors``. Every load is
strict: missing and unexpected keys, and wrong shapes, raise :class:`CheckpointError` naming
the keys; floating tensors are cast to the model's dtype (the official files mix fp16/fp32).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from evfbench.errors import EvfbenchError
from evfbench.io import atomic_path

__all__ = [
    "CheckpointError", "CONFIG_FILE", "resolve_weights", "read_weights_file", "read_folder_state_dict",
    "read_checkpoint", "check_state_dict", "load_checked", "save_safetensors", "empty_init", "state_dict_summary",
]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
WEIGHT_FILES = (SAFETENSORS_FILE, "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SHOWN = 5  # key names quoted in an error message


class CheckpointError(EvfbenchError):
    """A checkpoint that cannot be found, read, or does not match the model."""


# ---- locating -------------------------------------------------------------------------------
def resolve_weights(spec: str | os.PathLike[str]) -> Path:
    """A local folder, or a Hugging Face id (``YxZhang/evf-sam``) fetched by ``snapshot_download``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"weights={spec} is a file; pass the folder holding {CONFIG_FILE} and the weights")
    text = str(spec)
    if not _HUB_ID.fullmatch(text):
        raise CheckpointError(f"weights={spec}: no such folder, and not a Hugging Face id of the form org/name")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text))
    except Exception as err:  # offline, unknown repository, gated, network error...
        raise CheckpointError(
            f"cannot fetch the weights '{text}': there is no folder of that name here, and the Hugging Face Hub "
            f"did not provide it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).\n"
            f"  fix: on a machine with access run `hf download {text} --local-dir DIR` (or "
            f"`huggingface-cli download {text} --local-dir DIR`), copy DIR here and pass weights=DIR"
        ) from err


# ---- reading --------------------------------------------------------------------------------
def read_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of one file: safetensors, or a torch pickle read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor file that torch.load(weights_only=True) accepts "
            f"(pickled code is never executed).\n  detail: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict")
    return dict(data)


def _unwrap(data: dict[str, object], path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    """Original SAM-2 / BEiT-3 files nest the state dict under ``"model"``."""
    if key in data and isinstance(data[key], Mapping):
        data = dict(data[key])  # type: ignore[arg-type]
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:_SHOWN]}")
    return data  # type: ignore[return-value]


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a single file, unwrapping a top-level ``"model"`` entry."""
    return _unwrap(read_weights_file(path), Path(path))


def read_folder_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of a checkpoint folder and the file (or index) it came from."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            index = json.loads(path.read_text(encoding="utf-8"))
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index.get("weight_map", {}).values())):
                state.update(read_weights_file(folder / shard))
            return state, path
        return read_weights_file(path), path
    present = sorted(p.name for p in folder.iterdir())[:20]
    raise CheckpointError(f"{folder} holds none of {list(WEIGHT_FILES)}; it has {present}")


# ---- checking and loading -------------------------------------------------------------------
def _quote(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str, target: str) -> None:
    """Raise :class:`CheckpointError` unless ``found`` has exactly the keys and shapes of ``expected``."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (the model has them, the file does not): {_quote(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (the file has them, the model does not): {_quote(unexpected)}")
        raise CheckpointError(f"{source} does not match {target}:\n  " + "\n  ".join(parts))
    wrong = [k for k in sorted(expected) if tuple(expected[k].shape) != tuple(found[k].shape)]
    if wrong:
        lines = [f"'{k}': the model expects {tuple(expected[k].shape)}, the file has {tuple(found[k].shape)}" for k in wrong[:_SHOWN]]
        more = f"\n  ... and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else ""
        raise CheckpointError(f"{source} does not match {target}: {len(wrong)} tensors have the wrong shape:\n  " + "\n  ".join(lines) + more)


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, target: str, assign: bool = False) -> None:
    """Strictly load ``state`` into ``module``, casting floating tensors to the module's dtypes.

    ``assign=True`` adopts the tensors (for modules built under :func:`empty_init`).
    """
    expected = module.state_dict()
    check_state_dict(expected, state, source, target)
    cast = {}
    for key, value in state.items():
        want = expected[key]
        if value.is_floating_point() and want.is_floating_point() and value.dtype != want.dtype:
            value = value.to(want.dtype)
        cast[key] = value
    module.load_state_dict(cast, strict=True, assign=assign)
    if assign:
        left = [n for n, p in [*module.named_parameters(), *module.named_buffers()] if p.is_meta]
        if left:
            raise CheckpointError(f"{source}: tensors left uninitialised after loading: {_quote(left)}")


@contextmanager
def empty_init() -> Iterator[None]:
    """Build modules without materialising their parameters: each parameter moves to the
    ``meta`` device as it is registered, so initialisers cost nothing (buffers stay real).

    Use it to count a model's tensors, or to build one that a checkpoint fills with
    ``load_checked(..., assign=True)``.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def state_dict_summary(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(number of tensors, number of elements)`` of a state dict (works on meta tensors)."""
    return len(state), sum(int(t.numel()) for t in state.values())


# ---- writing --------------------------------------------------------------------------------
def save_safetensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write a safetensors file atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata={"format": "pt"})
