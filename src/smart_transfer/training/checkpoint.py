"""Checkpoints of a training run: weights as safetensors, the rest as a weights-only torch file.

A checkpoint folder holds ``model.safetensors`` (the weights after the last finished epoch),
``best.safetensors`` (the weights with the best validation accuracy so far) and ``state.pt``
(optimizer, scheduler, random-number generators, epoch counters, history), each written
atomically. ``state.pt`` contains only tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._atomic import PathLike, atomic_open
from ..errors import DataError

WEIGHTS = "model.safetensors"
BEST = "best.safetensors"
STATE = "state.pt"


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses shared or non-contiguous storage: store independent copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: PathLike, state: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict as safetensors, atomically."""
    from safetensors.torch import save

    path = Path(path)
    blob = save(_contiguous(state), metadata=metadata)
    with atomic_open(path, "wb") as f:
        f.write(blob)
    return path


def load_weights(path: PathLike) -> dict[str, Tensor]:
    """Read a safetensors state dict (clear error when the file is missing or unreadable)."""
    from safetensors.torch import load

    path = Path(path)
    try:
        return load(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"no weights file {str(path)!r}; was the run saved there?") from None
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise DataError(f"cannot read weights {str(path)!r}: {exc}") from None


def save_state(path: PathLike, state: dict[str, Any]) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def load_state(path: PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(
            f"no checkpoint in {str(path.parent)!r} (missing {path.name}); "
            "start a new run instead of resuming"
        ) from None
    except Exception as exc:  # noqa: BLE001  (unpickling errors of every kind)
        raise DataError(f"cannot read checkpoint {str(path)!r}: {exc}") from None


def has_checkpoint(folder: PathLike) -> bool:
    folder = Path(folder)
    return (folder / STATE).is_file() and (folder / WEIGHTS).is_file()
