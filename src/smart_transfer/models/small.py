"""A small VGG-style CNN: the reference network for speed benchmarks and tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torch import Tensor, nn

from ..errors import ConfigError
from .registry import register_backbone


class SmallVGG(nn.Module):
    """conv3x3(-BN)-ReLU blocks with 2x2 max-pooling after each stage, then a linear head.

    ``widths`` gives the channels of each stage (two convs per stage). Layer names are
    ``features.N`` (as in torchvision's VGG) and ``classifier``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for width in widths:
            for _ in range(2):
                layers.append(nn.Conv2d(c_in, width, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        # an annotation, not cast(): TorchScript compiles this
        out: Tensor = self.classifier(self.flatten(self.pool(self.features(x))))
        return out


@register_backbone("small_vgg")
def small_vgg(pretrained: bool = False, num_classes: int | None = None, **kwargs: Any) -> SmallVGG:
    """small_vgg: SmallVGG with random weights (a fast network for tests and benchmarks)."""
    if pretrained:
        raise ConfigError(
            "small_vgg has no pretrained weights; use load_backbone('small_vgg', pretrained=False) "
            "or load your own with load_backbone(path, arch='small_vgg')"
        )
    model = SmallVGG(num_classes=10 if num_classes is None else num_classes, **kwargs)
    c_in = cast(nn.Conv2d, model.features[0]).in_channels
    model.pretrained_cfg = {  # type: ignore[assignment]
        "arch": "small_vgg",
        "input_size": (c_in, 32, 32),
        "mean": (0.5,) * c_in,
        "std": (0.5,) * c_in,
        "num_classes": model.classifier.out_features,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "classifier": "classifier",
        "source": "random init",
    }
    return model
