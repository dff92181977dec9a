"""One registry of strategies: name -> what it trains, what it needs, its options, its function."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownNameError


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    trains: str  # what gradient descent (or the closed-form fit) changes
    needs: str  # what it needs beyond labelled images
    options: dict[str, str]  # option -> meaning and default
    run: Callable[..., Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trains": self.trains, "needs": self.needs, "options": dict(self.options)}


_REGISTRY: dict[str, StrategyInfo] = {}


def register(info: StrategyInfo) -> StrategyInfo:
    _REGISTRY[info.name] = info
    return info


def get_strategy(name: str) -> StrategyInfo:
    _ensure()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise UnknownNameError(
            f"unknown strategy {name!r}; {hint}known: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]


def list_strategies(details: bool = False) -> list[Any]:
    """Strategy names (or, with ``details=True``, dicts: name, trains, needs, options)."""
    _ensure()
    return [s.to_dict() if details else s.name for s in _REGISTRY.values()]


def _ensure() -> None:
    if not _REGISTRY:
        from . import builtin  # noqa: F401  (registers the built-in strategies)
