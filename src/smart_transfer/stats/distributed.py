"""Combining the profiles of several processes under torch.distributed.

Each rank profiles its own shard of the data; the finished statistics (a few kB to MB per
layer, never activations) are exchanged with ``all_gather_object`` and merged in rank order,
so every rank ends with the same global profile. A failure on one rank is exchanged too, so
the other ranks raise instead of waiting forever.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, DataError, ProfileError
from .profile import ActivationProfile


def distributed_world(distributed: bool | None) -> int:
    """World size to combine over: 1 when not distributed (or asked not to be)."""
    if distributed is False:
        return 1
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized()
    if distributed and not active:
        raise ConfigError(
            "distributed=True but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first or leave distributed=None"
        )
    return dist.get_world_size() if active else 1


def distributed_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_profiles(
    local: ActivationProfile | None, error: BaseException | None
) -> ActivationProfile:
    """Every rank's profile merged in rank order, returned on every rank.

    ``local`` is None for a rank whose shard was empty; ``error`` is the exception a rank hit
    (re-raised there, reported as a :class:`ProfileError` on the others).
    """
    import torch.distributed as dist

    payload: dict[str, Any] = {
        "profile": None if local is None else local.to_dict(),
        "error": None if error is None else f"{type(error).__name__}: {error}",
    }
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    if error is not None:
        raise error
    for rank, item in enumerate(gathered):
        if item["error"] is not None:
            raise ProfileError(
                f"profiling failed on rank {rank} ({item['error']}); fix that rank's data or model"
            )
    parts = [
        ActivationProfile.from_dict(item["profile"])
        for item in gathered
        if item["profile"] is not None
    ]
    if not parts:
        raise DataError(
            "no rank's loader yielded a batch; give each process a non-empty shard of the data"
        )
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    merged.meta["world_size"] = len(gathered)
    return merged
