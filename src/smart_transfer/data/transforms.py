"""Batch transforms: turn a whole batch of images into what a pretrained network expects.

Everything runs on the batch's own device in a few tensor operations, with no Python loop
over images: uint8 -> float in [0, 1], resize (antialiased, bilinear or bicubic) and, for
evaluation, the centre crop of timm's eval transform (``crop_pct``), for training a
random resized crop and horizontal flip per sample (one ``grid_sample`` with per-sample
affine parameters), gray -> RGB by repeating the channel, normalisation with the model's
mean and std.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601 luma weights, the ones PIL's convert("L") uses
_LUMA = (0.299, 0.587, 0.114)

Size = Union[int, Sequence[int]]
_MODES = ("bilinear", "bicubic", "nearest")


class BatchTransform(nn.Module):
    """Callable on a batch ``(B, C, H, W)`` or ``(B, H, W)``, uint8 or float in [0, 1].

    Returns a float batch ``(B, channels, *size)`` on the input's device (float32 for uint8
    input, the input's dtype for float input), normalised as ``(x - mean) / std``.

    ``channels``: what the network takes; a 1-channel batch is repeated to 3, a 3-channel
    batch becomes luma for 1. ``size``: ``(H, W)`` to resize to, ``None`` to keep the input's.
    With ``train=True`` each sample also gets a random crop covering a fraction in ``scale``
    of the image area with width/height ratio (relative to the image's) in ``ratio``,
    stretched back to full size, and a horizontal flip with probability ``flip``;
    ``.eval()`` / ``.train()`` switch this augmentation off and on. The
    crop is taken after the resize, so one interpolation does the antialiasing and the
    crop only zooms in. Randomness comes from ``generator`` (a CPU ``torch.Generator``)
    when given to ``forward``, else from torch's global generator, so it is reproducible
    with ``torch.manual_seed`` on any device.
    """

    mean: Tensor  # (1, C, 1, 1) buffers, registered in __init__
    std: Tensor

    def __init__(
        self,
        channels: int = 3,
        size: Size | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        crop_pct: float | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        if interpolation not in _MODES:
            raise ConfigError(
                f"interpolation must be one of {', '.join(map(repr, _MODES))}, got "
                f"{interpolation!r}."
            )
        if crop_pct is not None and not (0 < float(crop_pct) <= 1):
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct!r}.")
        self.crop_pct = None if crop_pct is None else float(crop_pct)
        self.interpolation = interpolation
        if channels < 1:
            raise ConfigError(f"channels must be positive, got {channels}.")
        self.channels = int(channels)
        self.size = _as_size(size)
        mean_t, std_t = _per_channel(mean, "mean", channels), _per_channel(std, "std", channels)
        if (std_t <= 0).any():
            raise ConfigError(f"std must be positive in every channel, got {list(std)}.")
        # buffers follow .to(device); forward still moves them to the input's device
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"scale must satisfy 0 < low <= high <= 1, got {scale}.")
        if not (0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"ratio must satisfy 0 < low <= high, got {ratio}.")
        if not (0 <= flip <= 1):
            raise ConfigError(f"flip is a probability in [0, 1], got {flip}.")
        self.train(bool(train))  # nn.Module's flag: .eval() / .train() switch augmentation
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip = float(flip)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = self._to_float(x)
        if self.size is not None and not self.training:
            crop_pct = 1.0 if self.crop_pct is None else self.crop_pct
            x = self._resize(x, _scale_size(tuple(x.shape[-2:]), self.size, crop_pct))
            x = _center_crop(x, self.size)
        elif self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = self._resize(x, self.size)
        if self.training:
            x = self._random_crop_flip(x, generator)
        x = self._match_channels(x)
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return _resize(x, size, self.interpolation)

    def _to_float(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise DataError(
                f"batch transforms take a tensor batch, got {type(x).__name__}; convert images "
                "with torch.as_tensor or torchvision's PILToTensor first."
            )
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4:
            raise DataError(
                f"a batch must be (B, C, H, W) or (B, H, W), got shape {tuple(x.shape)}; "
                "for a single image use x.unsqueeze(0)."
            )
        if x.dtype == torch.uint8:
            return x.to(torch.float32).div_(255)
        if x.is_floating_point():
            return x
        raise DataError(
            f"batch dtype {x.dtype} is not supported; pass uint8 pixels or floats in [0, 1]."
        )

    def _match_channels(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c == self.channels:
            return x
        if c == 1:
            return x.expand(-1, self.channels, -1, -1)
        if c == 3 and self.channels == 1:
            w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            return (x * w).sum(1, keepdim=True)
        if c == 4 and self.channels == 3:  # RGBA: the network has no use for alpha
            return x[:, :3]
        raise DataError(
            f"the batch has {c} channels but the network takes {self.channels}; pass gray (1) "
            f"or {self.channels}-channel images."
        )

    def _random_crop_flip(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        b = x.shape[0]
        # parameters are drawn on the CPU (B numbers each) so a seed gives the same crops anywhere
        u = torch.rand(5, b, generator=generator, dtype=torch.float64)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
        w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop size as a fraction of the image
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (1 - w) * (2 * u[2] - 1)  # crop centre in [-1, 1] coordinates, crop inside image
        cy = (1 - h) * (2 * u[3] - 1)
        sign = torch.where(u[4] < self.flip, -1.0, 1.0).to(torch.float64)
        theta = torch.zeros(b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = w * sign  # a negative x scale mirrors the output horizontally
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def extra_repr(self) -> str:
        s = f"channels={self.channels}, size={self.size}, train={self.training}"
        s += f", interpolation={self.interpolation!r}"
        if self.crop_pct is not None:
            s += f", crop_pct={self.crop_pct}"
        if self.training:
            s += f", scale={self.scale}, ratio={self.ratio}, flip={self.flip}"
        return s + f", mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _resize(x: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    """Resize a float ``(B, C, H, W)`` batch (antialiased unless ``nearest``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)


def eval_geometry(
    image: Tensor,
    size: Size,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
) -> Tensor:
    """One ``(C, H, W)`` image brought to the evaluation geometry, ready to batch.

    The image is resized as the evaluation transform resizes it (the short side to
    ``floor(size / crop_pct)``, aspect kept; ``crop_pct=None`` means 1.0) and then cropped to
    that square ``floor(size / crop_pct)`` (not yet to ``size``): the batch transform of
    :func:`transforms_for` takes the final centre crop to ``size`` and its resize is then a
    no-op, so an image read so and batched gives the pixels that transform gives the raw image
    (the margin is kept so that training augmentation sees the whole resized image). The
    crop's offsets are chosen so that the two centre crops together equal one centre crop of
    the resized image, pixel for pixel. uint8 stays uint8 (rounded), floats stay floats.
    """
    if interpolation not in _MODES:
        raise ConfigError(
            f"interpolation must be one of {', '.join(map(repr, _MODES))}, got {interpolation!r}."
        )
    target = _as_size(size)
    if target is None:
        return image
    pct = 1.0 if crop_pct is None else float(crop_pct)
    if not 0 < pct <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct!r}.")
    if image.dim() != 3:
        raise DataError(f"an image must be (C, H, W), got shape {tuple(image.shape)}.")
    is_uint8 = image.dtype == torch.uint8
    x = image.unsqueeze(0)
    x = x.to(torch.float32).div_(255) if is_uint8 else x.to(torch.float32)
    x = _resize(x, _scale_size(tuple(x.shape[-2:]), target, pct), interpolation)
    margin = tuple(math.floor(v / pct) for v in target)
    h, w = x.shape[-2:]
    # offsets such that this crop followed by the transform's centre crop of `target` is the
    # centre crop of `target` of the resized image
    top = round((h - target[0]) / 2.0) - round((margin[0] - target[0]) / 2.0)
    left = round((w - target[1]) / 2.0) - round((margin[1] - target[1]) / 2.0)
    top, left = min(max(top, 0), h - margin[0]), min(max(left, 0), w - margin[1])
    x = x[..., top : top + margin[0], left : left + margin[1]][0]
    if is_uint8:
        return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return x.to(image.dtype) if image.is_floating_point() else x


def _scale_size(hw: tuple[int, ...], size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """The size to resize to before a centre crop of ``size``, as timm's eval transform does.

    ``floor(size / crop_pct)``; for a square crop the shorter side is resized to it, keeping
    the aspect ratio (torchvision's ``Resize(int)``), otherwise both sides are.
    """
    th, tw = (math.floor(v / crop_pct) for v in size)
    if th != tw:
        return (th, tw)
    h, w = int(hw[0]), int(hw[1])
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = th, int(th * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """torchvision's ``CenterCrop``: the same offsets, zero padding where the image is smaller."""
    h, w = x.shape[-2:]
    th, tw = size
    if th > h or tw > w:
        pad_l, pad_t = (tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0
        pad_r = (tw - w + 1) // 2 if tw > w else 0
        pad_b = (th - h + 1) // 2 if th > h else 0
        x = F.pad(x, [pad_l, pad_r, pad_t, pad_b])
        h, w = x.shape[-2:]
    top = round((h - th) / 2.0)
    left = round((w - tw) / 2.0)
    return x[..., top : top + th, left : left + tw]


def transforms_for(
    model_or_cfg: Any = None,
    train: bool = True,
    size: Size | None = None,
    **options: Any,
) -> BatchTransform:
    """The batch transform that feeds ``model_or_cfg`` the input it was pretrained on.

    ``model_or_cfg``: a model with a ``pretrained_cfg`` (or ``default_cfg``) dict, as timm
    models have, holding ``input_size`` ``(C, H, W)``, ``mean`` and ``std``; such a dict
    itself; any other ``nn.Module``; or ``None``. Missing entries fall back to: channels
    from the first ``Conv2d``'s ``in_channels`` (else 3), ImageNet mean/std (their channel
    average for a one-channel network), and no resizing. ``size`` (int or ``(H, W)``)
    overrides the configured size. ``options`` go to :class:`BatchTransform`
    (``scale``, ``ratio``, ``flip``, ``mean``, ``std``, ``channels``, ``crop_pct``,
    ``interpolation``).

    The evaluation transform (``train=False``, or the module in ``.eval()`` mode) follows the
    configuration as timm's ``resolve_data_config`` / ``create_transform`` do: resize to
    ``floor(size / crop_pct)`` (the shorter side, for a square size) with the configured
    ``interpolation`` (``bicubic`` for most timm models), then crop the centre ``size``.
    Without a ``crop_pct`` it does the same with ``crop_pct = 1`` (the short side resized to
    ``size``, aspect kept, then the centre crop), never a straight resize that distorts, so one
    image as a ``(1, C, H, W)`` batch gets exactly a dataset's preprocessing
    (:func:`eval_geometry`).
    """
    cfg = _config_of(model_or_cfg)
    input_size = cfg.get("input_size")
    if input_size is not None and len(input_size) != 3:
        raise ConfigError(f"input_size must be (C, H, W), got {input_size!r}.")
    channels = options.pop("channels", None)
    if channels is None:
        channels = (
            int(input_size[0]) if input_size is not None else _first_conv_channels(model_or_cfg)
        )
    if size is None and input_size is not None:
        size = (int(input_size[1]), int(input_size[2]))
    mean = options.pop("mean", cfg.get("mean"))
    std = options.pop("std", cfg.get("std"))
    if mean is None:
        mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    if std is None:
        std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    options.setdefault("crop_pct", cfg.get("crop_pct"))
    interpolation = options.pop("interpolation", cfg.get("interpolation")) or "bilinear"
    if interpolation not in _MODES:  # timm also knows "lanczos" / "box"; bicubic is closest
        interpolation = "bicubic" if interpolation in ("lanczos", "box", "hamming") else "bilinear"
    return BatchTransform(
        channels, size, mean, std, train=train, interpolation=interpolation, **options
    )


def _config_of(model_or_cfg: Any) -> Mapping[str, Any]:
    if model_or_cfg is None:
        return {}
    if isinstance(model_or_cfg, Mapping):
        return model_or_cfg
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model_or_cfg, attr, None)
        if isinstance(cfg, Mapping):
            return cfg
        if cfg is not None and hasattr(cfg, "to_dict"):  # timm's PretrainedCfg dataclass
            return cast(Mapping[str, Any], cfg.to_dict())
    if isinstance(model_or_cfg, nn.Module):
        return {}
    raise ConfigError(
        f"transforms_for takes a model or a config dict, got {type(model_or_cfg).__name__}; "
        "pass the network or {'input_size': (3, 224, 224), 'mean': ..., 'std': ...}."
    )


def _first_conv_channels(model: Any) -> int:
    if isinstance(model, nn.Module):
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                return int(m.in_channels)
    return 3


def _per_channel(values: Sequence[float], what: str, channels: int) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels:
        raise ConfigError(
            f"{what} has {t.numel()} values but the network takes {channels} channels; pass "
            f"one value per channel."
        )
    return t


def _as_size(size: Size | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"size must be a positive int or (height, width), got {size!r}.")
    return (int(pair[0]), int(pair[1]))
