"""A labelled image set held as one tensor in memory (Fashion-MNIST, arrays, .npz files)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
from torch.utils.data import Dataset

from ..errors import DataError


class TensorImageDataset(Dataset):
    """Images in one tensor, ``(N, H, W)`` (gray) or ``(N, C, H, W)``, with integer labels.

    ``ds[i]`` is ``(image, label)``: a ``(C, H, W)`` tensor (``C = 1`` for gray, a view into
    the stored tensor, no copy) and a Python ``int``. ``targets`` is a 1-D int64 tensor,
    ``classes`` the class names (``classes[label]``). :meth:`get_batch` indexes many items at
    once, which is what :func:`smart_transfer.data.loader` uses instead of collating items.
    ``transform``, when given, is applied to each item's image in ``ds[i]`` only.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dim() not in (3, 4):
            raise DataError(
                f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}."
            )
        if targets.dim() != 1 or targets.numel() != images.shape[0]:
            raise DataError(
                f"there are {images.shape[0]} images but labels of shape "
                f"{tuple(targets.shape)}; pass one label per image."
            )
        self.images = images
        self.targets = targets.to(torch.int64)
        self.classes = list(classes)
        self.transform = transform
        if len(self.targets) and int(self.targets.max()) >= len(self.classes):
            raise DataError(
                f"label {int(self.targets.max())} has no class name: only {len(self.classes)} "
                "classes are named; pass one name per class."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, C, H, W), labels (B,))`` for many indices in one indexing operation."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        images = self.images[idx]
        if images.dim() == 3:
            images = images.unsqueeze(1)
        return images, self.targets[idx]

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label."""
        return {name: i for i, name in enumerate(self.classes)}

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        return (
            f"{type(self).__name__}(n={len(self)}, image_shape={shape}, "
            f"dtype={self.images.dtype}, classes={len(self.classes)})"
        )
