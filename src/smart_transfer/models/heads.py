"""Head surgery and feature extraction: find a network's classifier, replace it, cut before it.

The classifier ("head") is the last Linear (or 1x1 Conv2d) that produces the logits.  It is
found from ``model.pretrained_cfg["classifier"]`` when present (every backbone from
:func:`smart_transfer.load_backbone` has it), otherwise from the names the common families
use: ``_fc`` (EfficientNet-Lite), ``fc`` (ResNet), ``classifier`` or its last layer (VGG,
MobileNet, EfficientNet, ConvNeXt, DenseNet), ``head.fc`` / ``head`` (timm),
``heads.head`` (torchvision ViT).
"""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UnknownNameError

HEAD_CANDIDATES = (
    "_fc",
    "fc",
    "classifier",
    "head.fc",
    "head",
    "heads.head",
    "heads",
    "last_linear",
)
PENULTIMATE = "penultimate"


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _as_head(name: str, module: nn.Module) -> tuple[str, nn.Module] | None:
    """``module`` itself if it is a Linear / Conv2d, else the last such child of a Sequential."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return name, module
    if isinstance(module, nn.Sequential):
        for child_name, child in reversed(list(module.named_children())):
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                return f"{name}.{child_name}", child
            if any(True for _ in child.parameters()):
                return None  # a parametrised non-linear layer after the last Linear: not a head
    return None


def find_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Module]:
    """Name and module of ``model``'s classifier.

    ``head`` names it explicitly; otherwise ``pretrained_cfg["classifier"]`` and then the
    usual names are tried.  Raises :class:`ConfigError` if none is a Linear/Conv2d.
    """
    if head is not None:
        module = _get(model, head)
        if module is None:
            linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            close = difflib.get_close_matches(head, linear, n=3) or linear[-3:]
            hint = f", e.g. {' or '.join(map(repr, close))}" if close else ""
            raise UnknownNameError(
                f"{type(model).__name__} has no module {head!r}; pass head= the name of its "
                f"classifier{hint}"
            )
        found = _as_head(head, module)
        if found is None:
            raise ConfigError(
                f"head={head!r} is a {type(module).__name__}, not a Linear or Conv2d; "
                f"name the classifier layer itself"
            )
        return found
    cfg = getattr(model, "pretrained_cfg", None)
    candidates = list(HEAD_CANDIDATES)
    if isinstance(cfg, dict) and isinstance(cfg.get("classifier"), str):
        candidates.insert(0, cfg["classifier"])
    for name in candidates:
        module = _get(model, name)
        if module is not None:
            found = _as_head(name, module)
            if found is not None:
                return found
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    shown = f" (its last Linear layers: {', '.join(linears[-3:])})" if linears else ""
    raise ConfigError(
        f"cannot find the classifier of {type(model).__name__}: none of "
        f"{', '.join(HEAD_CANDIDATES)} is a Linear layer{shown}; pass head='module.name'"
    )


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def replace_head(model: nn.Module, num_classes: int, head: str | None = None) -> nn.Module:
    """Replace the classifier by a freshly initialised one with ``num_classes`` outputs.

    The new layer has the old one's input size, bias setting, dtype and device; every other
    module and parameter is left as it was.  ``model`` is changed in place and returned.
    ``pretrained_cfg["num_classes"]`` (and a timm model's ``num_classes``) are updated.
    A timm model (without an explicit ``head``) gets timm's own ``reset_classifier``, which
    replaces every head it has: a distilled DeiT's ``head`` and ``head_dist`` both.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    name, old = find_head(model, head)
    if (
        head is None
        and callable(getattr(model, "reset_classifier", None))
        and callable(getattr(model, "get_classifier", None))
    ):
        return _reset_timm_classifier(model, num_classes, old)
    weight = old.weight
    factory = {"device": weight.device, "dtype": weight.dtype}
    new: nn.Module
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    else:  # a 1x1 Conv2d classifier (SqueezeNet style)
        new = nn.Conv2d(
            old.in_channels,  # type: ignore[arg-type]
            num_classes,
            old.kernel_size,  # type: ignore[arg-type]
            stride=old.stride,  # type: ignore[arg-type]
            padding=old.padding,  # type: ignore[arg-type]
            bias=old.bias is not None,
            **factory,  # type: ignore[arg-type]
        )
    _set_module(model, name, new)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        model.pretrained_cfg = {**cfg, "num_classes": num_classes, "classifier": name}  # type: ignore[assignment]
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes  # type: ignore[assignment]
    return model


def _reset_timm_classifier(model: nn.Module, num_classes: int, old: nn.Module) -> nn.Module:
    """timm's own ``reset_classifier``: every head it has (a distilled DeiT has two), with the
    model's pooling left as it is; the new heads then go to the old head's device and dtype."""
    weight: Tensor = old.weight  # type: ignore[assignment]
    model.reset_classifier(num_classes)  # type: ignore[operator]
    heads = model.get_classifier()  # type: ignore[operator]
    for h in heads if isinstance(heads, (tuple, list)) else (heads,):
        if isinstance(h, nn.Module):
            h.to(device=weight.device, dtype=weight.dtype)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        model.pretrained_cfg = {**cfg, "num_classes": num_classes}  # type: ignore[assignment]
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes  # type: ignore[assignment]
    return model


class _StopForward(Exception):
    """Raised by the capture hook once the wanted output is in hand."""


def _channels_of(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return None


def pool_features(out: Tensor, module: nn.Module | None = None) -> Tensor:
    """Reduce a layer output to (B, C): mean over positions (pixels or tokens).

    Linear and LayerNorm outputs carry channels last (``(B, ..., C)``); other outputs with
    4 or more dims are NCHW; 3-dim outputs of non-conv modules are tokens ``(B, T, C)``.
    """
    if out.ndim == 2:
        return out
    if out.ndim < 2:
        raise ConfigError(
            f"cannot pool a layer output of shape {tuple(out.shape)} into (B, C) features"
        )
    channels_last = False
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        channels_last = out.shape[-1] == _channels_of(module)
    elif out.ndim == 3:
        channels_last = not isinstance(
            module, (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d)
        )
    if channels_last:
        return out.reshape(out.shape[0], -1, out.shape[-1]).mean(1)
    return out.flatten(2).mean(2)


class FeatureExtractor(nn.Module):
    """Images -> (B, C) features pooled at one layer of ``model``.

    A forward hook captures the layer's output (or, for ``"penultimate"``, the head's input)
    and stops the forward pass there, so later layers cost nothing.  The hook exists only
    during each call.  Train/eval mode and gradients are those of the caller.
    """

    def __init__(self, model: nn.Module, layer: str = PENULTIMATE) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        if layer == PENULTIMATE:
            self.target, _ = find_head(model)
        else:
            found = _get(model, layer) if layer else None
            if found is None:
                names = [n for n, _ in model.named_modules() if n]
                close = difflib.get_close_matches(layer, names, n=3)
                hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
                raise UnknownNameError(
                    f"{type(model).__name__} has no layer {layer!r}; {hint}"
                    f"see smart_transfer.list_layers(model), or use layer='penultimate'"
                )
            self.target = layer
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            self.pretrained_cfg = dict(cfg)

    @property
    def num_features(self) -> int | None:
        """Feature size C when it follows from the layer's type (None: run a batch to see)."""
        module = self.model.get_submodule(self.target)
        if self.layer == PENULTIMATE:
            return int(getattr(module, "in_features", getattr(module, "in_channels", 0))) or None
        return _channels_of(module)

    def forward(self, x: Tensor) -> Tensor:
        module = self.model.get_submodule(self.target)
        captured: list[Tensor] = []

        def take(value: object) -> None:
            if isinstance(value, (tuple, list)) and value:
                value = value[0]
            if not isinstance(value, torch.Tensor):
                raise ConfigError(
                    f"layer {self.target!r} gives a {type(value).__name__}, not a tensor; "
                    f"choose another layer"
                )
            captured.append(value)
            raise _StopForward

        if self.layer == PENULTIMATE:
            handle = module.register_forward_pre_hook(lambda _m, args: take(args))
        else:
            handle = module.register_forward_hook(lambda _m, _args, out: take(out))
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ConfigError(
                f"layer {self.target!r} of {type(self.model).__name__} did not run in the "
                f"forward pass; choose one of smart_transfer.list_layers(model)"
            )
        return pool_features(captured[0], None if self.layer == PENULTIMATE else module)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}"


def feature_extractor(model: nn.Module, layer: str = PENULTIMATE) -> FeatureExtractor:
    """A module mapping images to (B, C) features at ``layer`` (default: the head's input).

    4-d outputs are averaged over H and W, token outputs (B, T, C) over tokens, (B, C) kept.
    ``model`` is shared, not copied.
    """
    return FeatureExtractor(model, layer)


class MLPHead(nn.Sequential):
    """Seed 001's head: BatchNorm1d, Linear to twice the width, ReLU, BatchNorm1d, Dropout 0.5,
    Linear to the classes. A Sequential whose last layer is the classifier, so
    :func:`find_head` finds that Linear and :func:`head_root` the whole head."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(
            nn.BatchNorm1d(in_features),
            nn.Linear(in_features, in_features * 2),
            nn.ReLU(),
            nn.BatchNorm1d(in_features * 2),
            nn.Dropout(0.5),
            nn.Linear(in_features * 2, num_classes),
        )


def head_root(model: nn.Module) -> tuple[str, nn.Module]:
    """The whole new head: an :class:`MLPHead` holding the classifier, else the classifier."""
    name, head = find_head(model)
    parent = name.rpartition(".")[0]
    if parent:
        module = model.get_submodule(parent)
        if isinstance(module, MLPHead):
            return parent, module
    return name, head


def mlp_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace ``model``'s classifier by an :class:`MLPHead` (on its device and dtype); a model
    that already has one keeps it. ``model`` is changed in place and returned."""
    name, head = head_root(model)
    if isinstance(head, MLPHead):
        return model
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"head='mlp' needs a Linear classifier; {type(model).__name__}'s is a "
            f"{type(head).__name__}"
        )
    new = MLPHead(head.in_features, num_classes).to(
        device=head.weight.device, dtype=head.weight.dtype
    )
    _set_module(model, name, new)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        model.pretrained_cfg = {**cfg, "num_classes": num_classes, "classifier": f"{name}.5"}  # type: ignore[assignment]
    return model
