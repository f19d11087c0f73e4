"""Data layer: refer-format reader, Hugging Face forms, masks, and the sample records."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_root() -> Path:
    """``$EVFBENCH_DATA``, else ``$XDG_CACHE_HOME/evfbench/data`` (``~/.cache/evfbench/data``)."""
    if os.environ.get("EVFBENCH_DATA"):
        return Path(os.environ["EVFBENCH_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return cache / "evfbench" / "data"


# Imported after default_data_root, which the reader itself uses.
from evfbench.data.refer import load_split  # noqa: E402

__all__ = ["default_data_root", "load_split"]
