"""One registry of strategies: name -> what it trains, what it needs, its options, its function.

Each strategy's options are a frozen dataclass (:attr:`StrategyInfo.options_type`) derived once
from the help strings registered here and the keyword parameters of the function that runs it,
whose defaults are the options' defaults: the two cannot drift apart. :meth:`StrategyInfo.check`
refuses an unknown option, a wrong type or a value out of range before any work, naming the
option and what it may be.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from functools import cached_property
from typing import Any

from ..errors import ConfigError, UnknownNameError

# option -> the values it may take, wherever it appears (checked with option_values' rules)
CHOICES: dict[str, tuple[Any, ...]] = {
    "select": ("fixed", "val"),
    "bn_stats": ("adapt", "freeze", "update"),
    "point": ("output", "norm", "act"),
    "init": ("pretrained", "probe"),
    "rule": ("one-se", "best"),
    "prefer": ("simplest", "advice"),
    "tie": ("loss", "order"),
    "direction": ("similar", "shifted", "val"),
    "classifier": ("logistic", "svm"),
    "head": ("linear", "mlp"),
}
# options every gradient-trained strategy takes from the context rather than its function
CONTEXT_DEFAULTS: dict[str, Any] = {"head": "linear"}


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    trains: str  # what gradient descent (or the closed-form fit) changes
    needs: str  # what it needs beyond labelled images
    options: dict[str, str]  # option -> meaning and default
    run: Callable[..., Any]
    # "module:function" whose keyword parameters give the options' defaults, in order
    params: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trains": self.trains,
            "needs": self.needs,
            "options": dict(self.options),
        }

    @cached_property
    def options_type(self) -> type:
        """The strategy's options as a frozen dataclass: one field per option, its default the
        run function's, its metadata the help line and the allowed values."""
        defaults = _defaults(self.params)
        specs = []
        for opt, text in self.options.items():
            default = defaults.get(opt, CONTEXT_DEFAULTS.get(opt))
            meta = {"help": text, "choices": CHOICES.get(opt)}
            if isinstance(default, (list, dict, set)):
                specs.append((opt, Any, field(default_factory=lambda d=default: d, metadata=meta)))  # type: ignore[misc]
            else:
                specs.append((opt, Any, field(default=default, metadata=meta)))
        camel = "".join(part.capitalize() for part in self.name.replace("_", "-").split("-"))
        return make_dataclass(f"{camel}Options", specs, frozen=True)

    def defaults(self) -> dict[str, Any]:
        """Every option with its default."""
        typ = self.options_type
        return {
            f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc,operator]
            for f in fields(typ)
        }

    def check(self, options: dict[str, Any], known: Iterable[str] | None = None) -> Any:
        """Refuse an option this strategy does not have, or a value of the wrong type or out of
        range, before any work; the options as an :attr:`options_type` instance."""
        known = list(self.options) if known is None else list(known)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"strategy {self.name!r} has no option {', '.join(map(repr, unknown))}; its "
                f"options are {', '.join(sorted(known)) or 'none'} (see "
                "smart_transfer.list_strategies(details=True))"
            )
        from .option_values import check_option_values

        check_option_values(self.name, options)
        for opt, value in options.items():
            allowed = CHOICES.get(opt)
            if allowed is not None and value not in allowed:
                raise ConfigError(
                    f"option {opt}={value!r} of strategy {self.name!r} must be one of "
                    f"{', '.join(map(repr, allowed))}; e.g. --option {opt}={allowed[0]} (Python: "
                    f"{opt}=...)"
                )
        return self.options_type(**{k: v for k, v in options.items() if k in self.options})


def _defaults(params: tuple[str, ...]) -> dict[str, Any]:
    """Keyword defaults of the functions ``params`` names, the first one's winning."""
    out: dict[str, Any] = {}
    for ref in params:
        module, _, name = ref.partition(":")
        fn = getattr(importlib.import_module(module, __package__), name)
        for p in inspect.signature(fn).parameters.values():
            if p.default is not inspect.Parameter.empty and p.name not in out:
                out[p.name] = p.default
    return out


_REGISTRY: dict[str, StrategyInfo] = {}


def register(info: StrategyInfo) -> StrategyInfo:
    _REGISTRY[info.name] = info
    return info


def get_strategy(name: str) -> StrategyInfo:
    _ensure()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise UnknownNameError(f"unknown strategy {name!r}; {hint}known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_strategies(details: bool = False) -> list[Any]:
    """Strategy names (or, with ``details=True``, dicts: name, trains, needs, options)."""
    _ensure()
    return [s.to_dict() if details else s.name for s in _REGISTRY.values()]


def _ensure() -> None:
    if not _REGISTRY:
        from . import builtin  # noqa: F401  (registers the built-in strategies)
