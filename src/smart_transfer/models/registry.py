"""Registry of built-in backbones: ``register_backbone`` adds a factory, ``create`` calls it.

A factory takes ``pretrained: bool``, ``num_classes: int | None`` and keyword arguments, and
returns an ``nn.Module`` with a ``pretrained_cfg`` dict.  Names with a ``torchvision:`` or
``timm:`` prefix are not registered here; :mod:`smart_transfer.models.adapters` resolves
them.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..errors import UnknownNameError

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone."""

    name: str  # the name load_backbone accepts
    factory: Factory  # builds the model: factory(pretrained=..., num_classes=..., **kwargs)
    has_weights: bool  # whether pretrained weights exist (the default of pretrained=None)
    description: str  # first line of the factory's docstring


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, has_weights: bool = False) -> Callable[[Factory], Factory]:
    """Decorator that registers ``factory`` under ``name`` (lower case, no ``:``)."""
    if ":" in name or name != name.lower():
        raise ValueError(f"backbone names are lower case without ':', got {name!r}")

    def deco(factory: Factory) -> Factory:
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = BackboneEntry(name, factory, has_weights, doc[0] if doc else "")
        return factory

    return deco


def _ensure_builtins() -> None:
    # Importing the modules runs their register_backbone decorators.
    from . import efficientnet_lite, small  # noqa: F401


def registered() -> dict[str, BackboneEntry]:
    """All registered backbones by name."""
    _ensure_builtins()
    return dict(_REGISTRY)


def get_entry(name: str) -> BackboneEntry:
    """The registry entry for ``name``; unknown names raise with suggestions."""
    entries = registered()
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
    close += [f"{prefix}:{name}" for prefix in _libraries_with(name)]
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownNameError(
        f"unknown backbone {name!r}; {hint}built-in backbones are {', '.join(sorted(entries))}, "
        f"and any torchvision or timm model works as 'torchvision:NAME' or 'timm:NAME' "
        f"(see smart_transfer.list_backbones('torchvision') / list_backbones('timm'))"
    )


def _libraries_with(name: str) -> list[str]:
    """Which of torchvision / timm (if installed) have a model called ``name``."""
    found = []
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        if name in torchvision.models.list_models(module=torchvision.models):
            found.append("torchvision")
    if importlib.util.find_spec("timm") is not None:
        import timm

        if timm.is_model(name):
            found.append("timm")
    return found


def create(
    name: str, pretrained: bool | None = None, num_classes: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build the registered backbone ``name``; ``pretrained=None`` means "if weights exist"."""
    entry = get_entry(name)
    if pretrained is None:
        pretrained = entry.has_weights
    return entry.factory(pretrained=pretrained, num_classes=num_classes, **kwargs)
