"""What a loader yields, taken apart once for the whole package.

Loaders yield a tensor (inputs only), an ``(inputs, labels, ...)`` tuple or list, or a dict in
the Hugging Face style (``{"pixel_values": x, "labels": y}``, ``{"inputs": x, "labels": y}``).
Profiling needs the inputs (:func:`batch_input`); training and evaluation need both
(:func:`batch_pair`). Both read the same key lists, so a batch that one accepts the other
accepts too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

# Keys under which dict batches commonly carry the images / the labels, tried in this order.
INPUT_KEYS = ("image", "images", "img", "pixel_values", "x", "input", "inputs")
LABEL_KEYS = ("label", "labels", "target", "targets", "fine_label", "y")

_PAIR_FIX = "wrap the images with their labels, e.g. smart_transfer.data.loader(dataset, indices)"


def _where(index: int | None) -> str:
    return "batch" if index is None else f"batch {index}"


def _key(batch: Mapping[str, Any], keys: tuple[str, ...], what: str, where: str) -> Any:
    """``batch[k]`` for the first of ``keys`` present; one :class:`DataError` naming the keys."""
    key = next((k for k in keys if k in batch), None)
    if key is None:
        found = ", ".join(repr(k) for k in list(batch)[:10])
        raise DataError(
            f"{where} is a dict with keys [{found}] but none of {', '.join(keys)}; put the "
            f"{what} under one of those keys"
        )
    return batch[key]


def _raw_input(batch: Any, where: str) -> Any:
    """The inputs of one batch, as the loader gave them (not converted or checked)."""
    if isinstance(batch, Mapping):
        return _key(batch, INPUT_KEYS, "images", where)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise DataError(
                f"{where} is an empty {type(batch).__name__}; the loader must yield (images, ...)"
            )
        return batch[0]
    return batch


def batch_input(batch: Any, index: int | None = None) -> Tensor:
    """The model input of one batch: the tensor itself, element 0 of a tuple/list, or a dict entry
    (a numpy array becomes a tensor). ``index`` (the batch's position) makes errors precise."""
    where = _where(index)
    x = _raw_input(batch, where)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise DataError(
            f"{where} holds a {type(x).__name__} where the input tensor should be; a loader must "
            "yield tensors, (images, labels) tuples, or dicts with an 'image'/'pixel_values' key"
        )
    if x.ndim == 0:
        raise DataError(
            f"{where} is a 0-d tensor; expected a batch of inputs (batch, channels, ...)"
        )
    return x


def batch_pair(batch: Any, where: str = "batch", labelled: bool = True) -> tuple[Any, Any]:
    """``(inputs, labels)`` of one batch: a pair (or longer tuple/list) or a dict with an input
    key and a label key. The values are returned as they are; the training loop checks their
    types, shapes and ranges (:func:`smart_transfer.training.checks.validate_batch`).

    ``labelled=False`` (prediction): a bare tensor, a 1-tuple or a dict without a label key
    is a batch of inputs, returned with ``None`` for its labels."""
    if isinstance(batch, Mapping):
        if not labelled and not any(k in batch for k in LABEL_KEYS):
            return _raw_input(batch, where), None
        return _raw_input(batch, where), _key(batch, LABEL_KEYS, "labels", where)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if not labelled:
        return _raw_input(batch, where), None
    raise DataError(
        f"{where}: a training or validation batch must be an (images, labels) pair, got "
        f"{type(batch).__name__}; {_PAIR_FIX}"
    )
