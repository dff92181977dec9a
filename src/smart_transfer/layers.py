"""Which modules of a network are "layers" for smart-transfer, and which parameters they own.

A *layer* is a module whose output is profiled: by default every ``Conv2d`` and ``Linear``.
Its *channels* are the output channels (dim 1 of a conv output, the last dim of a linear
output).  A layer owns, per output channel, row ``c`` of its weight, entry ``c`` of its
bias, and entry ``c`` of the affine parameters of a BatchNorm that directly follows it.
These helpers are shared by profiling, planning, applying plans and model summaries, so all
of them agree on names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .errors import ConfigError, UnknownLayerError

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.BatchNorm1d, nn.SyncBatchNorm)


def num_out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return int(module.out_channels)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, NORM_TYPES):
        return int(cast(_NormBase, module).num_features)
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor):
        return int(w.shape[0])
    raise ConfigError(f"cannot tell the output channels of {type(module).__name__}")


def select_layers(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    types: Sequence[type[nn.Module]] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[str]:
    """Names of the modules to profile, in registration order (input to output for most nets).

    ``layers`` are exact names or glob patterns (``"features.*"``); ``types`` restricts module
    types (default Conv2d and Linear); ``exclude`` removes names matching its patterns.
    A name or pattern (in ``layers`` or ``exclude``) that matches no module of the model raises
    :class:`UnknownNameError` with the close matches, and ``layers=[]`` raises
    :class:`ConfigError` (``None`` means every layer).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    types_t = _types(types)
    patterns = _patterns(layers, "layers")
    excl = _patterns(exclude, "exclude") or []
    if patterns is not None and not patterns:
        raise ConfigError("layers= is empty; pass None to select every conv/linear layer")
    modules = [n for n, m in model.named_modules() if n]
    for option, pats in (("layers", patterns or []), ("exclude", excl)):
        for p in pats:
            if not any(n == p or fnmatch.fnmatchcase(n, p) for n in modules):
                close = difflib.get_close_matches(p, modules, n=3, cutoff=0.6)
                hint = (
                    f"did you mean {', '.join(map(repr, close))}?"
                    if close
                    else "see smart_transfer.list_layers(model) for the names"
                )
                raise UnknownLayerError(
                    f"no layer or module of {type(model).__name__} matches {option}={p!r}; {hint}"
                )
    names = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, types_t):
            continue
        if patterns and not any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if any(name == p or fnmatch.fnmatchcase(name, p) for p in excl):
            continue
        names.append(name)
    if not names:
        all_names = [n for n, m in model.named_modules() if n and isinstance(m, DEFAULT_TYPES)]
        shown = ", ".join(all_names[:8]) + (" ..." if len(all_names) > 8 else "")
        raise ConfigError(
            f"no layer of {type(model).__name__} matches layers={layers!r}, "
            f"types={[t.__name__ for t in types_t]}, exclude={exclude!r}; "
            f"conv/linear layers are: {shown or 'none'} (see smart_transfer.list_layers(model))"
        )
    return names


def _types(types: Any) -> tuple[type[nn.Module], ...]:
    """``types=`` as a tuple of module classes (one class alone is accepted too)."""
    if not types:
        return DEFAULT_TYPES
    if isinstance(types, type):
        types = [types]
    if isinstance(types, (str, bytes)) or not isinstance(types, Iterable):
        raise ConfigError(
            f"types= is {types!r} ({type(types).__name__}); pass a list of module classes, "
            "e.g. types=[nn.Conv2d]"
        )
    out = tuple(types)
    for t in out:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise ConfigError(
                f"types= holds {t!r}, which is not an nn.Module class; pass e.g. types=[nn.Conv2d]"
            )
    return out


def _patterns(value: str | Sequence[str] | None, option: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) and not isinstance(value, Iterable):
        raise ConfigError(
            f"{option}= is {value!r} ({type(value).__name__}); pass a module name, a glob "
            f"pattern or a list of them, e.g. {option}=['features.*']"
        )
    pats = [value] if isinstance(value, str) else list(value)
    for p in pats:
        if not isinstance(p, str):
            raise ConfigError(
                f"{option}= holds {p!r} ({type(p).__name__}); pass module names or glob patterns"
            )
    return pats


def following_norms(model: nn.Module) -> dict[str, str]:
    """Map each Conv2d/Linear name to the BatchNorm that directly follows it.

    "Directly follows" means: the next module registered after it (skipping containers and
    parameter-free modules such as activations and padding) is a BatchNorm with as many
    features as the layer has output channels. This matches conv->bn pairs of VGG, ResNet,
    MobileNet, EfficientNet and timm models.
    """
    leaves = [
        (n, m)
        for n, m in model.named_modules()
        if n
        and (
            isinstance(m, DEFAULT_TYPES + NORM_TYPES)
            or any(True for _ in m.parameters(recurse=False))
        )
    ]
    pairs: dict[str, str] = {}
    for (name, mod), (nxt_name, nxt) in zip(leaves, leaves[1:]):
        if (
            isinstance(mod, DEFAULT_TYPES)
            and isinstance(nxt, NORM_TYPES)
            and int(cast(_NormBase, nxt).num_features) == num_out_channels(mod)
        ):
            pairs[name] = nxt_name
    return pairs


def channel_params(
    model: nn.Module,
    layer: str,
    norms: dict[str, str] | None = None,
    modules: dict[str, nn.Module] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Parameters whose dim 0 indexes ``layer``'s output channels: name -> shape.

    Names are as in ``model.named_parameters()``. ``norms`` / ``modules``: the model's
    :func:`following_norms` and ``dict(named_modules())``, when the caller has them.
    """
    modules = dict(model.named_modules()) if modules is None else modules
    norms = following_norms(model) if norms is None else norms
    out: dict[str, tuple[int, ...]] = {}
    for mod_name in [layer] + ([norms[layer]] if layer in norms else []):
        for pname, p in modules[mod_name].named_parameters(recurse=False):
            if p.ndim >= 1:
                out[f"{mod_name}.{pname}"] = tuple(p.shape)
    return out


def layer_param_map(
    model: nn.Module, layers: Iterable[str]
) -> dict[str, dict[str, tuple[int, ...]]]:
    norms, modules = following_norms(model), dict(model.named_modules())
    return {name: channel_params(model, name, norms, modules) for name in layers}
