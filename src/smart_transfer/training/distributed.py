"""Data-parallel training: every rank sees the same global batches, takes its share of each."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedBatches:
    """Global ``(x, y)`` batches of ``loader`` (the same order on every rank: same seed), each
    passed through ``transform`` whole and then split: rank ``r`` keeps rows ``r::world``.

    Transforming before splitting makes every rank draw the same random augmentation as a
    single process would, so a run on N processes with the same global batch reaches the same
    weights as one process (up to floating-point summation order).
    """

    def __init__(self, loader: Iterable[Any], rank: int, world: int, transform: Callable[[Tensor], Tensor] | None):
        self.loader, self.rank, self.world, self.transform = loader, rank, world, transform

    @property
    def generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            if self.transform is not None:
                x = self.transform(x)
            yield x[self.rank :: self.world], y[self.rank :: self.world]
