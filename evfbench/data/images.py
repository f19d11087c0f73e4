"""Reading images with errors that name the file and say what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from evfbench.errors import EvfbenchError


class ImageError(EvfbenchError):
    """An image that is missing, unreadable or not the size its annotation file says."""


def read_image(path: Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read ``path`` as RGB ``HWC uint8``; ``expected_size`` is ``(height, width)`` from the annotations."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(
            f"image not found: {path}\n  fix: check --data-root / EVFBENCH_DATA and that the image "
            f"folder was unpacked as drawn in data_prep/README.md (python -m evfbench.prep <dataset> checks it)"
        )
    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))  # writable: torch.as_tensor warns on read-only arrays
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(
            f"cannot decode image {path}: {err}\n  fix: the file is corrupt or truncated; download it again"
        ) from err
    if expected_size is not None and tuple(array.shape[:2]) != tuple(expected_size):
        raise ImageError(
            f"image {path} is {array.shape[0]}x{array.shape[1]} (HxW) but its annotation says "
            f"{expected_size[0]}x{expected_size[1]}\n  fix: the image does not belong to this annotation file; "
            f"check that images and annotations come from the same release"
        )
    return array
