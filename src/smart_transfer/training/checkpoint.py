"""Checkpoints of a training run, each written as one unit.

A checkpoint is a folder ``epoch-NNNNNN`` inside the checkpoint folder, holding
``model.safetensors`` (the weights after that epoch), ``best.safetensors`` (the weights with the
best validation accuracy so far) and ``state.pt`` (optimizer, scheduler, random-number
generators, epoch counters, history). The three files are written into a hidden temporary
folder first and the folder is renamed into place only when all three are on disk, so a
Ctrl-C, SIGTERM, full disk or crash between two of the writes leaves the previous checkpoint
whole and the next one absent: weights of one epoch never meet the optimizer state of another.
Older checkpoints are removed after the new one is in place; :func:`latest` picks the highest
epoch. Every file also carries its epoch (safetensors metadata, ``state["epoch"]``), which
:func:`load_checkpoint` checks.

``state.pt`` contains only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``; a file that holds anything else is refused, and the
error never suggests ``weights_only=False``.

Checkpoint folders written before this layout (the three files directly in the folder) are
still read.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._atomic import PathLike, atomic_open, disk_errors
from ..errors import DataError, StorageError

WEIGHTS = "model.safetensors"
BEST = "best.safetensors"
STATE = "state.pt"
UNIT = re.compile(r"^epoch-(\d{6})$")
# What fit() stores in state.pt and needs back to resume.
STATE_KEYS = ("epoch", "best_acc", "best_epoch", "bad_epochs", "history", "optimizer", "rng")


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses shared or non-contiguous storage: store independent copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(
    path: PathLike, state: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> Path:
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
        raise DataError(
            f"cannot read weights {str(path)!r} ({type(exc).__name__}: {_first_line(exc)}); the "
            "file is damaged: train the run again"
        ) from None


def _epoch_of(path: Path) -> int | None:
    """The epoch recorded in a safetensors file's metadata (None: not recorded)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta["epoch"]) if "epoch" in meta else None
    except Exception:  # noqa: BLE001  (an unreadable file is reported by load_weights)
        return None


def save_state(path: PathLike, state: dict[str, Any]) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def _first_line(exc: BaseException) -> str:
    """The first line of an error message, without torch's advice to unpickle the file."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if "weights_only" not in ln and "trust" not in ln.lower()]
    return (keep or [type(exc).__name__])[0][:200]


def load_state(path: PathLike) -> dict[str, Any]:
    """Read ``state.pt`` with ``weights_only=True`` and check that it holds what resume needs."""
    path = Path(path)
    fix = "start the run again in a new folder (or delete this checkpoint folder)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(
            f"no checkpoint in {str(path.parent)!r} (missing {path.name}); "
            "start a new run instead of resuming"
        ) from None
    except Exception as exc:  # noqa: BLE001  (unpickling errors of every kind)
        raise DataError(
            f"cannot read checkpoint {str(path)!r}: it is damaged or holds objects other than "
            f"tensors, numbers and strings ({type(exc).__name__}), which are never loaded; {fix}"
        ) from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {str(path)!r} is damaged (not a dict); {fix}")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise DataError(
            f"checkpoint {str(path)!r} is damaged: it lacks {', '.join(map(repr, missing))}; {fix}"
        )
    if not isinstance(state["rng"], dict) or not isinstance(state["rng"].get("torch"), Tensor):
        raise DataError(
            f"checkpoint {str(path)!r} is damaged: 'rng' holds no generator state; {fix}"
        )
    if not isinstance(state["optimizer"], dict) or "param_groups" not in state["optimizer"]:
        raise DataError(
            f"checkpoint {str(path)!r} is damaged: 'optimizer' is not an optimizer state; {fix}"
        )
    return state


# --------------------------------------------------------------------------- units


def _units(folder: Path) -> list[tuple[int, Path]]:
    """The complete checkpoint units in ``folder``, oldest first."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        m = UNIT.match(p.name)
        if m and p.is_dir() and all((p / n).is_file() for n in (WEIGHTS, BEST, STATE)):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(folder: PathLike) -> Path | None:
    """The folder holding the newest complete checkpoint (a unit, or a folder of the older
    layout with the files directly in it), or None."""
    folder = Path(folder)
    units = _units(folder)
    if units:
        return units[-1][1]
    if (folder / STATE).is_file() and (folder / WEIGHTS).is_file():
        return folder
    return None


def has_checkpoint(folder: PathLike) -> bool:
    return latest(folder) is not None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    folder: PathLike, weights: dict[str, Tensor], best: dict[str, Tensor], state: dict[str, Any]
) -> Path:
    """Write one checkpoint unit for ``state["epoch"]`` and return its folder.

    The files go into ``.epoch-NNNNNN.HEX.tmp`` first; only a complete folder is renamed to
    ``epoch-NNNNNN``. On any error or interrupt the temporary folder is removed and the
    previous checkpoint is left as it was. Older units (and files of the older layout) are
    removed once the new unit is in place.
    """
    folder = Path(folder)
    epoch = int(state["epoch"])
    name = f"epoch-{epoch:06d}"
    with disk_errors(folder / name):
        folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
    final = folder / name
    meta = {"epoch": str(epoch)}
    try:
        with disk_errors(final):
            tmp.mkdir()
            save_weights(tmp / WEIGHTS, weights, metadata={**meta, "role": "last"})
            save_weights(tmp / BEST, best, metadata={**meta, "role": "best"})
            save_state(tmp / STATE, state)
            if final.exists():  # a unit of this epoch from an earlier attempt: replaced
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(folder)
    except StorageError as exc:  # name the checkpoint, not its temporary folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(str(exc).replace(str(tmp), str(final))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in _units(folder)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    for legacy in (WEIGHTS, BEST, STATE):
        (folder / legacy).unlink(missing_ok=True)
    return final


def load_checkpoint(
    folder: PathLike,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """``(weights, best, state)`` of the newest checkpoint in ``folder``, checked to belong
    together (the epoch in every file)."""
    folder = Path(folder)
    unit = latest(folder)
    if unit is None:
        raise DataError(
            f"nothing to resume in {str(folder)!r}: no checkpoint there; start a new run"
        )
    state = load_state(unit / STATE)
    epoch = int(state["epoch"])
    for name in (WEIGHTS, BEST):
        recorded = _epoch_of(unit / name)
        if recorded is not None and recorded != epoch:
            raise DataError(
                f"checkpoint {str(unit)!r} mixes epochs: {name} is from epoch {recorded}, "
                f"{STATE} from epoch {epoch}; start the run again in a new folder"
            )
    return load_weights(unit / WEIGHTS), load_weights(unit / BEST), state


def load_best(folder: PathLike) -> dict[str, Tensor]:
    """The best weights of the newest checkpoint in ``folder``."""
    folder = Path(folder)
    unit = latest(folder)
    if unit is None:
        raise DataError(f"no checkpoint in {str(folder)!r}; train the run again")
    return load_weights(unit / BEST)
