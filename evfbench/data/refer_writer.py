"""Write annotations in the refer layout, so every corpus evfbench makes reads like RefCOCO.

``<root>/<dataset>/refs(<split_by>).p`` is a pickle of a list of refs (protocol 2, which the
original Python 2 tools can read too) and ``<root>/<dataset>/instances.json`` a COCO subset.
Both are written atomically: a crash leaves the previous files or none, never half a file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from evfbench.io import atomic_write_bytes, atomic_write_text


def write_refer(
    root: Path,
    dataset: str,
    split_by: str,
    refs: list[dict[str, Any]],
    instances: dict[str, Any],
) -> Path:
    """Write ``refs(<split_by>).p`` and ``instances.json`` under ``root/dataset``; returns that folder.

    ``refs`` follow the refer schema: ``{ref_id, ann_id, image_id, category_id, split, sent_ids,
    file_name, sentences: [{sent_id, raw, sent, tokens}]}``; ``instances`` has ``images``,
    ``annotations`` and ``categories``.
    """
    folder = Path(root) / dataset
    # Through JSON first: pickle shares repeated objects by identity, so the same refs built
    # in another order or process would give other bytes; a canonical copy gives the same.
    canonical = json.loads(json.dumps(refs))
    atomic_write_bytes(folder / f"refs({split_by}).p", pickle.dumps(canonical, protocol=2))
    atomic_write_text(folder / "instances.json", json.dumps(instances))
    return folder
