"""Batches of ``(x, y)`` from a dataset, with a batch transform applied after collation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Callable, cast

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SubsetRandomSampler
from torch.utils.data._utils.collate import default_collate

from ..errors import ConfigError, DataError

Batch = tuple[torch.Tensor, torch.Tensor]


class Loader:
    """An iterable of ``(x, y)`` batches over ``dataset`` (or the ``indices`` of it).

    A thin layer over :class:`torch.utils.data.DataLoader`: items are collated into a
    uint8/float batch, moved to ``device`` (when given), and then passed through
    ``transform`` as a whole batch, on that device. Datasets that hold their images in one
    tensor (``get_batch``, as Fashion-MNIST and :func:`arrays` do) are indexed a batch at a
    time instead of item by item. Shuffling draws from a generator seeded with ``seed``:
    each pass over the loader gives a new order, and the sequence of orders is the same
    every run.
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int] | torch.Tensor | np.ndarray | None = None,
        batch_size: int = 64,
        shuffle: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}.")
        if transform is not None and not callable(transform):
            raise ConfigError(
                f"transform must be callable on a batch, got {type(transform).__name__}; "
                "pass e.g. smart_transfer.data.transforms_for(model)."
            )
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise ConfigError(
                f"dataset must be a map-style dataset (len() and ds[i]), got "
                f"{type(dataset).__name__}; pass e.g. smart_transfer.data.image_folder(root)."
            )
        n = len(dataset)  # type: ignore[arg-type]
        self.dataset = dataset
        self.indices = _check_indices(indices, n)
        self.transform = transform
        self.device = torch.device(device) if device is not None else None
        self.generator = torch.Generator().manual_seed(int(seed))
        order = (
            SubsetRandomSampler(self.indices, generator=self.generator) if shuffle else self.indices
        )
        self.batch_sampler = BatchSampler(order, batch_size, drop_last)
        pin = self.device is not None and self.device.type == "cuda"
        whole_batches = callable(getattr(dataset, "get_batch", None)) and (
            getattr(dataset, "transform", None) is None
        )
        if whole_batches:
            # each "item" the DataLoader fetches is a whole list of indices
            self._loader: DataLoader = DataLoader(
                _BatchView(dataset),
                sampler=self.batch_sampler,
                batch_size=None,
                num_workers=num_workers,
                pin_memory=pin,
            )
        else:
            self._loader = DataLoader(
                dataset,
                batch_sampler=self.batch_sampler,
                collate_fn=collate,
                num_workers=num_workers,
                pin_memory=pin,
                generator=self.generator,
            )

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self._loader:
            if self.device is not None:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            if self.transform is not None:
                x = self.transform(x)
            yield x, y

    def __repr__(self) -> str:
        return (
            f"Loader(n={len(self.indices)}, batches={len(self)}, "
            f"batch_size={self.batch_sampler.batch_size}, transform={self.transform!r})"
        )


class _BatchView(Dataset):
    """``view[list_of_indices]`` is ``dataset.get_batch(list_of_indices)``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        return cast(Batch, self.dataset.get_batch(indices))


def collate(samples: Sequence[Any]) -> Batch:
    """Stack ``(image, label)`` items into ``(images (B, ...), labels (B, ...))``.

    Images may be tensors, numpy arrays or PIL images (these become uint8 ``(C, H, W)``).
    Raises :class:`DataError` when the items are not pairs or the images differ in shape.
    """
    bad = next((s for s in samples if not (isinstance(s, (tuple, list)) and len(s) == 2)), None)
    if bad is not None:
        raise DataError(
            f"dataset items must be (image, label) pairs, got {type(bad).__name__}; wrap the "
            "dataset so that ds[i] returns (image_tensor, label)."
        )
    images = [_image_tensor(s[0]) for s in samples]
    labels = [s[1] for s in samples]
    shapes = sorted({tuple(t.shape) for t in images})
    if len(shapes) > 1:
        raise DataError(
            f"images in one batch have different shapes {shapes[0]} and {shapes[-1]}; resize "
            "them in the dataset (e.g. image_folder(..., size=224) or a torchvision Resize)."
        )
    return torch.stack(images), default_collate(labels)


def _image_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image)
    if hasattr(image, "getbands") and hasattr(image, "size"):  # a PIL image
        array = torch.from_numpy(np.array(image, copy=True))
        return array.unsqueeze(0) if array.dim() == 2 else array.permute(2, 0, 1).contiguous()
    raise DataError(
        f"dataset images must be tensors, numpy arrays or PIL images, got "
        f"{type(image).__name__}; convert them in the dataset (e.g. transform=PILToTensor())."
    )


def _check_indices(indices: Sequence[int] | torch.Tensor | np.ndarray | None, n: int) -> list[int]:
    if indices is None:
        return list(range(n))
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if idx.dim() != 1 or (idx.numel() and (idx.is_floating_point() or idx.dtype == torch.bool)):
        raise DataError(
            f"indices must be a 1-D sequence of integers, got shape {tuple(idx.shape)} "
            f"dtype {idx.dtype}; pass e.g. the output of few_shot."
        )
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise DataError(
            f"indices run from {int(idx.min())} to {int(idx.max())} but the dataset has {n} "
            "items; pass indices of this dataset."
        )
    return idx.to(torch.int64).tolist()


def loader(
    ds: Dataset,
    indices: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    batch_size: int = 64,
    shuffle: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_workers: int = 0,
    seed: int = 0,
    *,
    drop_last: bool = False,
    device: str | torch.device | None = None,
) -> Loader:
    """Iterate ``(x, y)`` batches of ``ds``, ``x`` passed through ``transform``; see
    :class:`Loader`.

    ``ds`` is any map-style dataset whose items are ``(image, label)``: the datasets of this
    package, or e.g. a torchvision dataset built with ``transform=PILToTensor()``.
    """
    return Loader(ds, indices, batch_size, shuffle, transform, num_workers, seed, drop_last, device)
