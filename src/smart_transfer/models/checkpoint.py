"""Reading weights files: ``.pt`` / ``.pth`` / ``.bin`` state dicts or full checkpoints,
``.safetensors``.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled code.  A full checkpoint is a dict holding the state dict under
``state_dict``, ``model``, ``model_state_dict`` or ``module`` (optionally with ``arch`` and
``pretrained_cfg`` entries); prefixes added by ``DataParallel`` (``module.``) and
``torch.compile`` (``_orig_mod.``) are removed.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..errors import DataError, IncompatibleError, MissingDependencyError

PathLike = Union[str, "os.PathLike[str]"]
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors")
STATE_KEYS = ("state_dict", "model", "model_state_dict", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SHOWN = 4  # keys quoted in a mismatch message


def looks_like_path(name: Any) -> bool:
    """True for an ``os.PathLike``, an existing file, or a string with a checkpoint suffix /
    separator."""
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str):
        return False
    return (
        name.lower().endswith(CHECKPOINT_SUFFIXES)
        or os.sep in name
        or "/" in name
        or Path(name).is_file()
    )


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def read_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict in ``path`` and the checkpoint's metadata (``arch``, ``pretrained_cfg``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"weights file {str(p)!r} does not exist; check the path")
    meta: dict[str, Any] = {}
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise MissingDependencyError(
                f"reading {p.name} needs the safetensors package: run `pip install safetensors`"
            ) from exc
        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise DataError(
                f"{str(p)!r} is not a readable safetensors file ({_brief(exc)})"
            ) from exc
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" not in str(exc).lower():
                raise DataError(
                    f"{str(p)!r} is not a readable PyTorch weights file ({_brief(exc)})"
                ) from exc
            raise DataError(
                f"{str(p)!r} holds pickled Python objects (a whole model, or objects beside the "
                f"tensors), which are not loaded "
                f"for safety; save the weights with torch.save(model.state_dict(), path)"
            ) from exc
        except Exception as exc:  # torch raises many types (KeyError, RuntimeError...) for junk
            raise DataError(
                f"{str(p)!r} is not a readable PyTorch weights file ({_brief(exc)}); "
                f"check that it was written by torch.save"
            ) from exc
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                meta = {k: obj[k] for k in ("arch", "pretrained_cfg") if k in obj}
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, Tensor) for v in obj.values())
    ):
        raise DataError(
            f"{str(p)!r} does not contain a state dict (name -> tensor); save one with "
            f"torch.save(model.state_dict(), path) or a dict with it under 'state_dict'"
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state, meta


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (" ..." if len(keys) > SHOWN else "")


def load_state(model: nn.Module, state: Mapping[str, Tensor], origin: str, arch: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a readable error on any mismatch.

    BatchNorm ``num_batches_tracked`` counters missing from old checkpoints are tolerated.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        if mismatched:
            parts.append(
                f"{len(mismatched)} shape mismatches, file vs model ({_examples(mismatched)})"
            )
        raise IncompatibleError(
            f"the weights in {origin} do not fit {arch}: {'; '.join(parts)}; "
            f"pass the arch= the weights were saved from"
        )
    full = dict(state)
    for k, v in own.items():  # counters the file lacks keep their current value
        full.setdefault(k, v)
    model.load_state_dict(full, strict=True)
