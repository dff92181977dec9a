"""One place that turns ``--device`` / ``device=`` into a :class:`torch.device`.

``"auto"`` (or ``None``) picks CUDA, then Apple's MPS, then the CPU. A device that is not there
is the user's mistake, reported as :class:`~smart_transfer.errors.ConfigError` naming what this
machine has, before any work is done or any file is written.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError


def available_devices() -> list[str]:
    """The device types this machine can run on, best first (``cuda``, ``mps``, ``cpu``)."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    out.append("cpu")
    return out


def resolve_device(device: Any = None, option: str = "--device") -> torch.device:
    """``None`` / ``"auto"`` -> the best available device; otherwise the device named, checked."""
    if isinstance(device, torch.device):
        spec = str(device)
    elif device is None:
        spec = "auto"
    elif isinstance(device, str):
        spec = device.strip().lower()
    else:
        raise ConfigError(
            f"{option} must be a device name such as 'cpu', 'cuda' or 'auto', "
            f"got {type(device).__name__}"
        )
    have = available_devices()
    if spec == "auto":
        return torch.device(have[0])
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"{option} {device!r} is not a device; this machine has: {', '.join(have)} (or 'auto')"
        ) from None
    if dev.type not in have:
        raise ConfigError(
            f"{option} {device!r}: there is no {dev.type} device on this machine; it has: "
            f"{', '.join(have)} (use --device auto or one of those)"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"{option} {device!r}: this machine has {torch.cuda.device_count()} CUDA "
            f"device(s), numbered from 0"
        )
    return dev
