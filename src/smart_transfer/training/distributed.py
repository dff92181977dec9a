"""Data-parallel training: every rank sees the same global batches, takes its share of each."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def launched_group(device: str | None = None) -> Iterator[tuple[int, int]]:
    """Join the process group that ``torchrun`` describes in the environment, for one command.

    Launched by ``torchrun`` with ``WORLD_SIZE`` > 1 and no group yet, this initialises the
    default group from the ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` variables
    (NCCL on CUDA, with ``cuda:LOCAL_RANK`` as the current device; gloo on the CPU), and at a
    normal end waits for every rank before it destroys the group, so that no rank tears down
    its connections while another still uses them. Otherwise it does nothing (a single process,
    or a group the caller made). Yields ``(rank, world_size)``.
    """
    dist = torch.distributed
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available() or dist.is_initialized():
        yield world()
        return
    cuda = str(device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    ok = False
    try:
        yield world()
        ok = True
    finally:
        if ok:
            dist.barrier()
        dist.destroy_process_group()


class ShardedBatches:
    """Global ``(x, y)`` batches of ``loader`` (the same order on every rank: same seed), each
    passed through ``transform`` whole and then split: rank ``r`` keeps rows ``r::world``.

    Transforming before splitting makes every rank draw the same random augmentation as a
    single process would, so a run on N processes with the same global batch reaches the same
    weights as one process (up to floating-point summation order).
    """

    def __init__(
        self,
        loader: Iterable[Any],
        rank: int,
        world: int,
        transform: Callable[[Tensor], Tensor] | None,
    ):
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
