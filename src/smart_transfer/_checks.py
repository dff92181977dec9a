"""Checks of what a model is fed, shared by profiling and training.

A forward pass over a batch of the wrong shape fails deep inside torch with a message about
tensor sizes (or, for a 3-D batch to a conv net, silently treats it as one unbatched image).
These helpers turn that into one :class:`DataError` naming the batch, its shape and the fix.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .errors import DataError

# What a forward pass raises on inputs of the wrong shape, size or dtype.
FORWARD_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    IndexError,
    TypeError,
    NotImplementedError,
)


def first_layer(model: nn.Module) -> nn.Module | None:
    """The first module (in registration order) that holds parameters of its own."""
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            return m
    return None


def check_loader(loader: Any, what: str = "loader") -> None:
    """Refuse a loader that cannot be iterated (None, a number...) or is a single tensor."""
    if isinstance(loader, Tensor):
        raise DataError(
            f"{what} is a single tensor; pass an iterable of batches, e.g. [x] or "
            "smart_transfer.data.loader(dataset)."
        )
    if not hasattr(loader, "__iter__"):
        raise DataError(
            f"{what} is a {type(loader).__name__}, not an iterable of batches; pass e.g. "
            "smart_transfer.data.loader(dataset)."
        )


def check_input(model: nn.Module, x: Tensor, where: str) -> None:
    """Refuse a batch whose rank cannot fit a model whose first layer is a 2-D convolution.

    Without a batch dimension a ``(C, H, W)`` tensor would pass through ``Conv2d`` as one
    unbatched image and fail later with a misleading message (or not at all).
    """
    layer = first_layer(model)
    if isinstance(layer, nn.Conv2d) and x.dim() != 4:
        raise DataError(
            f"{where} has shape {tuple(x.shape)} ({x.dim()}-d), but the model starts with a "
            f"Conv2d that takes (batch, channels, height, width) with {layer.in_channels} "
            "channels; "
            + (
                "add the batch dimension (x.unsqueeze(0)) or batch the loader's items"
                if x.dim() == 3
                else "reshape the batches to 4-d images"
            )
            + "."
        )


# Phrases of torch's messages about inputs that do not fit a layer, and the fix for each.
_CHANNELS = (
    "the images have another channel count than the model takes; convert them "
    "(gray to RGB: x.expand(-1, 3, -1, -1))"
)
_TOO_SMALL = (
    "the images are too small for this network; resize them larger (e.g. --size 32 or more)"
)
_ONE_VALUE = (
    "a BatchNorm in training mode needs at least 2 values per channel; use batches of 2 or "
    "more images (drop_last=True)"
)
_FEATURES = (
    "the features reaching a layer have another size than it takes; use the image size and "
    "channel count the model was built for"
)
_RANK = (
    "the batches have another rank than the model takes; pass (batch, channels, height, width) "
    "images"
)
_DTYPE = "convert the batches to the model's float dtype (e.g. x.float() / 255)"
_INPUT_PROBLEMS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("channels, but got", "to have", "channels instead"), _CHANNELS),
    (("kernel size can't be greater", "output size is too small", "too small"), _TOO_SMALL),
    (("expected more than 1 value per channel",), _ONE_VALUE),
    (
        ("mat1 and mat2", "shapes cannot be multiplied", "size mismatch", "must match the size"),
        _FEATURES,
    ),
    (
        ("unbatched", "expected 2d", "expected 3d", "expected 4d", "dimensions", "expected input"),
        _RANK,
    ),
    (
        (
            "input type",
            "should be the same",
            "expected scalar type",
            "not implemented for",
            "dtype",
        ),
        _DTYPE,
    ),
)


def _hint(message: str) -> str | None:
    m = message.lower()
    for phrases, fix in _INPUT_PROBLEMS:
        if any(p in m for p in phrases):
            return fix
    return None


def forward_error(exc: BaseException, x: Any, where: str) -> DataError | None:
    """A :class:`DataError` explaining why the model's forward failed on ``x``, or None.

    Only failures whose message says the input does not fit (rank, channels, size, dtype)
    are translated; any other error is the model's own and is left as it is.
    """
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    fix = _hint(first)
    if fix is None:
        return None
    if len(first) > 200:
        first = first[:200] + "..."
    shape = f" of shape {tuple(x.shape)} ({x.dtype})" if isinstance(x, Tensor) else ""
    return DataError(
        f"the model's forward failed on {where}{shape}: {type(exc).__name__}: {first}; {fix}."
    )
