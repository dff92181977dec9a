"""Checks of the batches, outputs and loss of a training loop, each one clear error.

A loader of the wrong kind, labels of the wrong type or range, and a diverging loss would
otherwise end in a traceback from deep inside torch, or (a NaN loss) not end at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import FORWARD_ERRORS, check_input, forward_error
from ..errors import DataError, SmartTransferError, TrainingError

_WIDE_UINTS = (torch.uint16, torch.uint32, torch.uint64)


def validate_batch(x: Any, y: Any, num_classes: int | None = None, where: str = "batch") -> None:
    """Raise :class:`DataError` unless ``(x, y)`` is a batch a classifier can train on.

    ``x``: a tensor with a batch dimension, of a float dtype or uint8 (which a batch
    transform turns into floats); ``y``: a 1-D integer tensor with one label per image, each
    in ``0..num_classes-1`` when ``num_classes`` is given.
    """
    if not isinstance(x, Tensor):
        raise DataError(
            f"{where}: the images are a {type(x).__name__}, not a tensor; the loader must "
            "yield (images, labels) pairs of tensors."
        )
    if not isinstance(y, Tensor):
        raise DataError(
            f"{where}: the labels are a {type(y).__name__}, not a tensor; the loader must "
            "yield (images, labels) pairs of tensors (e.g. smart_transfer.data.loader)."
        )
    if x.dim() < 2:
        raise DataError(
            f"{where}: images of shape {tuple(x.shape)} have no batch dimension; the loader "
            "must yield (batch, ...) tensors."
        )
    if x.dtype in _WIDE_UINTS or not (x.is_floating_point() or x.dtype == torch.uint8):
        raise DataError(
            f"{where}: images have dtype {x.dtype}; pass float images (or uint8 with a batch "
            "transform such as smart_transfer.data.transforms_for(model)); scale 16-bit "
            "images with x.float() / 65535."
        )
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise DataError(
            f"{where}: labels have dtype {y.dtype}; pass integer class indices "
            "(e.g. y.long(); for one-hot labels y.argmax(1))."
        )
    if y.dtype in _WIDE_UINTS:
        raise DataError(
            f"{where}: labels have dtype {y.dtype}; pass int64 class indices (y.long())."
        )
    if y.dim() != 1 or len(y) != len(x):
        raise DataError(
            f"{where}: {len(x)} images but labels of shape {tuple(y.shape)}; pass one class "
            "index per image, as a 1-D tensor."
        )
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise DataError(f"{where}: label {lo} is negative; pass class indices 0..K-1.")
        if num_classes is not None and hi >= num_classes:
            raise DataError(
                f"{where}: label {hi} is out of range for a model with {num_classes} outputs; "
                f"pass labels 0..{num_classes - 1} or give the model a head with more classes "
                "(smart_transfer.replace_head(model, K))."
            )


def checked_batches(
    batches: Iterable[Any], what: str = "batches"
) -> Iterator[tuple[Tensor, Tensor]]:
    """Iterate ``(x, y)`` pairs of ``batches``, each checked with :func:`validate_batch`."""
    if isinstance(batches, Tensor):
        raise DataError(
            f"{what} is a single tensor; pass a loader of (images, labels) pairs, e.g. "
            "smart_transfer.data.loader(dataset)."
        )
    try:
        iterator = iter(batches)
    except TypeError:
        raise DataError(
            f"{what} is a {type(batches).__name__}, not an iterable of (images, labels) batches."
        ) from None
    for index, batch in enumerate(iterator):
        where = f"{what} batch {index}"
        if isinstance(batch, Tensor) or not isinstance(batch, (tuple, list)) or len(batch) != 2:
            kind = (
                f"a bare tensor of shape {tuple(batch.shape)}"
                if isinstance(batch, Tensor)
                else f"a {type(batch).__name__}"
                + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
            )
            raise DataError(
                f"{where} is {kind}, not an (images, labels) pair; training needs labels: "
                "make the loader yield (x, y), e.g. smart_transfer.data.loader(dataset)."
            )
        x, y = batch
        validate_batch(x, y, where=where)
        yield x, y


def forward(
    model: nn.Module, x: Tensor, y: Tensor, where: str = "batch", labels_checked: bool = False
) -> Tensor:
    """``model(x)``, with shape mistakes and labels out of range as one :class:`DataError`.

    Whenever this raises, the model's buffers (BatchNorm running statistics and counts) are
    first put back to their values from before the batch, so that a failing batch changes
    nothing and the model keeps its last good state. ``labels_checked``: the caller already
    checked the labels against the model's outputs on the host, so the device is not asked
    for their range again (two host syncs per step on CUDA).
    """
    check_input(model, x, where)
    saved = [(b, b.detach().clone()) for b in model.buffers()] if model.training else []
    try:
        try:
            out = model(x)
        except FORWARD_ERRORS as exc:
            explained = (
                None if isinstance(exc, SmartTransferError) else forward_error(exc, x, where)
            )
            if explained is None:
                raise
            raise explained from exc
        if not isinstance(out, Tensor) or out.dim() != 2 or len(out) != len(y):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise DataError(
                f"{where}: the model returned {got} for {len(y)} images, not (batch, classes) "
                "logits; train a classifier (smart_transfer.replace_head) on (B, C, H, W) images."
            )
        if not labels_checked:
            validate_batch(x, y, num_classes=int(out.shape[1]), where=where)
    except BaseException:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
        raise
    return out


def check_loss(loss: Tensor, epoch: int, batch: int) -> None:
    """Raise :class:`TrainingError` when the loss is NaN or infinite (before backward/step).

    Called before the backward pass, so the failing batch never updates the weights: the
    model keeps the weights it had after the last finite step.
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(
            f"the training loss is {value} at epoch {epoch}, batch {batch} (counting from 0); "
            "stopped before that batch changed the weights; lower the learning rate, check the "
            "images for NaN/Inf values, or clip the gradients."
        )
