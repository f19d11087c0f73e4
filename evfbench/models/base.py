"""The model contract: embed an image once, segment every expression of it.

The runner hands a model one :class:`~evfbench.data.types.ImageGroup` at a time together
with its pixels, and gets back one mask per sample, at the original image size. How the
model batches its texts, caches its image embedding, or uses the device is its own affair;
that is what lets the SAM-based models encode each image once for ~3 expressions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from evfbench.data.types import ImageGroup


class SegmentationModel(ABC):
    """Base class of every registered model.

    Subclasses implement :meth:`predict`. Models that read the ground truth (the reference
    rows ``oracle``, ``box``, ...) set ``uses_ground_truth = True`` so reports can mark them.
    """

    uses_ground_truth: ClassVar[bool] = False

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 16) -> None:
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @abstractmethod
    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        """Masks for ``group.samples``.

        Args:
            image: RGB ``HWC uint8`` of shape ``(group.height, group.width, 3)``.
            group: the image's samples (``group.texts``) and annotations.

        Returns:
            ``(len(group.samples), H, W) bool`` at the original image size.
        """

    def describe(self) -> dict[str, Any]:
        """What results.json records about this model instance (weights, dtype, ...)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}"}


class PromptableModel(SegmentationModel):
    """A neural text-prompted model: one image embedding, texts decoded in batches.

    Subclasses implement :meth:`embed_image` and :meth:`segment`; :meth:`predict` wires
    them so the image is encoded once and texts go through in chunks of ``batch_size``.
    """

    @abstractmethod
    def embed_image(self, image: np.ndarray) -> Any:
        """Everything about the image that does not depend on the text."""

    @abstractmethod
    def segment(self, embedding: Any, texts: list[str], size: tuple[int, int]) -> torch.Tensor:
        """Mask logits ``(len(texts), H, W)`` at the original ``size = (H, W)``."""

    @torch.inference_mode()
    def predict(self, image: np.ndarray, group: ImageGroup) -> np.ndarray:
        embedding = self.embed_image(image)
        size = (group.height, group.width)
        out = np.empty((len(group.samples), *size), dtype=bool)
        texts = group.texts
        for start in range(0, len(texts), self.batch_size):
            logits = self.segment(embedding, texts[start : start + self.batch_size], size)
            out[start : start + len(logits)] = (logits > 0).cpu().numpy()
        return out
