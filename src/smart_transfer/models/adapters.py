"""Backbones from torchvision (``torchvision:NAME``) and timm (``timm:NAME``).

Both libraries are optional; they are imported when a name with their prefix is used.
Each adapter returns the library's own model, unchanged, with a ``pretrained_cfg`` dict in
smart-transfer's form: ``arch``, ``input_size`` (C, H, W), ``mean``, ``std``,
``num_classes``, ``interpolation``, ``crop_pct``, ``classifier`` (module name of the
head) and ``source`` (where the weights came from).  For timm models, timm's own
``pretrained_cfg`` keys are kept as well, so timm's data helpers still work.

Without internet, ``pretrained=True`` fails unless the weights are already in the local
cache; the error then says how to load a weights file instead.
"""

from __future__ import annotations

import difflib
import fnmatch
import http.client
import importlib
from typing import Any

from torch import nn

from ..errors import DataError, MissingDependencyError, SmartTransferError, UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREFIXES = ("torchvision", "timm")


def _import(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependencyError(
            f"'{package}:' backbones need the {package} package: run `pip install {package}` "
            f"(or `pip install smart-transfer[vision]`)"
        ) from exc


def _unknown(prefix: str, name: str, known: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(f'{prefix}:{c}') for c in close)}? " if close else ""
    return UnknownNameError(
        f"{prefix} has no classification model {name!r}; {hint}"
        f"see smart_transfer.list_backbones({prefix!r}) for the names"
    )


def _offline_error(arch: str, detail: str, exc: BaseException) -> DataError:
    return DataError(
        f"could not fetch the pretrained weights of {arch} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:160] if str(exc) else 'no details'}); without internet, "
        f"download {detail} on another machine and load it with "
        f"load_backbone(path, arch={arch!r}) or load_backbone({arch!r}, weights=path), "
        f"or use pretrained=False for random weights"
    )


# ------------------------------------------------------------------------- torchvision


def torchvision_names() -> list[str]:
    """Names of torchvision's image classification models."""
    tv = _import("torchvision")
    return sorted(tv.models.list_models(module=tv.models))


def _torchvision_weights(name: str, tag: str | None) -> Any:
    """The weights enum member for ``name`` (``tag`` or its DEFAULT), or None if it has none."""
    tv = _import("torchvision")
    try:
        enum = tv.models.get_model_weights(name)
    except (KeyError, ValueError):
        return None
    if tag is None:
        return enum.DEFAULT
    try:
        return enum[tag.split(".")[-1]]
    except KeyError:
        tags = ", ".join(m.name for m in enum)
        raise UnknownNameError(
            f"torchvision:{name} has no weights {tag!r}; choose one of {tags}"
        ) from None


def torchvision_backbone(
    name: str,
    pretrained: bool = True,
    weights_tag: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``torchvision.models.get_model(name)``, with ImageNet weights when ``pretrained``.

    ``weights_tag`` picks one of the model's weight sets (``"IMAGENET1K_V2"``); default its
    DEFAULT.  Extra keyword arguments go to the torchvision builder.
    """
    tv = _import("torchvision")
    names = torchvision_names()
    if name not in names:
        raise _unknown("torchvision", name, names)
    arch = f"torchvision:{name}"
    weights = _torchvision_weights(name, weights_tag)
    if pretrained and weights is None:
        raise DataError(
            f"torchvision has no pretrained weights for {name}; use pretrained=False "
            f"or load_backbone(path, arch={arch!r})"
        )
    try:
        model: nn.Module = tv.models.get_model(
            name, weights=weights if pretrained else None, **kwargs
        )
    except (OSError, http.client.HTTPException) as exc:
        url = getattr(weights, "url", "the weights file")
        raise _offline_error(
            arch, f"{url} (or copy it into torch's cache, ~/.cache/torch/hub/checkpoints/)", exc
        ) from exc
    cfg: dict[str, Any] = {
        "arch": arch,
        "input_size": (3, 224, 224),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "source": "random init",
    }
    if weights is not None:
        tf = weights.transforms()
        crop = int(tf.crop_size[0])
        cfg.update(
            input_size=(3, crop, crop),
            mean=tuple(float(m) for m in tf.mean),
            std=tuple(float(s) for s in tf.std),
            interpolation=str(getattr(tf.interpolation, "value", tf.interpolation)),
            crop_pct=crop / float(tf.resize_size[0]),
            weights=str(weights),
            url=weights.url,
        )
        if pretrained:
            cfg["source"] = f"torchvision weights {weights} ({weights.url})"
    _finish_cfg(model, cfg)
    return model


# -------------------------------------------------------------------------------- timm


def timm_names(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """timm model names (with ``pretrained=True``: ``arch.tag`` names that have weights)."""
    timm = _import("timm")
    return list(timm.list_models(pattern or "", pretrained=pretrained))


def timm_backbone(name: str, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name)``; ``name`` may carry a weights tag (``resnet18.a1_in1k``)."""
    timm = _import("timm")
    arch = f"timm:{name}"
    if not timm.is_model(name):
        raise _unknown("timm", name, timm_names())
    try:
        model: nn.Module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except SmartTransferError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if not pretrained:
            raise
        cfg = (
            timm.models.get_pretrained_cfg(name)
            if hasattr(timm.models, "get_pretrained_cfg")
            else None
        )
        hub = getattr(cfg, "hf_hub_id", None)
        where = (
            f"model.safetensors from https://huggingface.co/{hub}"
            if hub
            else getattr(cfg, "url", "the weights file")
        )
        raise _offline_error(arch, str(where), exc) from exc
    timm_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg = dict(timm_cfg)
    cfg.update(
        arch=arch,
        input_size=tuple(timm_cfg.get("input_size", (3, 224, 224))),
        mean=tuple(timm_cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(timm_cfg.get("std", IMAGENET_STD)),
        interpolation=timm_cfg.get("interpolation", "bicubic"),
        crop_pct=timm_cfg.get("crop_pct", 0.875),
        source="random init",
    )
    if pretrained:
        where = timm_cfg.get("hf_hub_id") or timm_cfg.get("url") or "timm"
        tag = timm_cfg.get("tag")
        cfg["source"] = (
            f"timm weights {timm_cfg.get('architecture', name)}{'.' + tag if tag else ''} ({where})"
        )
    _finish_cfg(model, cfg)
    return model


# ------------------------------------------------------------------------------ shared


def _finish_cfg(model: nn.Module, cfg: dict[str, Any]) -> None:
    """Record the head's module name and class count, then attach ``cfg`` to ``model``."""
    from .heads import find_head

    try:
        head_name, head = find_head(model, cfg.get("classifier"))
    except SmartTransferError:
        cfg["classifier"] = None
        cfg["num_classes"] = int(getattr(model, "num_classes", 0) or 0)
    else:
        cfg["classifier"] = head_name
        cfg["num_classes"] = int(getattr(head, "out_features", getattr(head, "out_channels", 0)))
    model.pretrained_cfg = cfg  # type: ignore[assignment]


def list_prefixed(source: str, pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """``torchvision:NAME`` / ``timm:NAME`` names matching the glob ``pattern``."""
    if source == "torchvision":
        names = torchvision_names()
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    elif source == "timm":
        names = timm_names(pattern, pretrained=pretrained)
    else:
        raise UnknownNameError(
            f"unknown backbone source {source!r}; use list_backbones(), "
            f"list_backbones('torchvision') or list_backbones('timm')"
        )
    return [f"{source}:{n}" for n in names]
