"""Turn whatever a loader yields into the tensor the model takes.

Loaders yield a tensor, an ``(inputs, targets, ...)`` tuple/list, or a dict (Hugging Face
style). Profiling needs only the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

# Keys under which dict batches commonly carry the images, tried in this order.
INPUT_KEYS = ("image", "images", "pixel_values", "x", "input", "inputs")


def batch_input(batch: Any, index: int | None = None) -> Tensor:
    """The model input of one batch: the tensor itself, element 0 of a tuple/list, or a dict entry.

    ``index`` (the batch's position in the loader) only makes error messages precise.
    """
    where = "batch" if index is None else f"batch {index}"
    x = batch
    if isinstance(x, Mapping):
        key = next((k for k in INPUT_KEYS if k in x), None)
        if key is None:
            keys = ", ".join(repr(k) for k in list(x)[:10])
            raise DataError(
                f"{where} is a dict with keys [{keys}] but none of {', '.join(INPUT_KEYS)}; "
                "put the images under one of those keys or make the loader yield tensors"
            )
        x = x[key]
    elif isinstance(x, (tuple, list)):
        if len(x) == 0:
            raise DataError(
                f"{where} is an empty {type(batch).__name__}; the loader must yield (images, ...)"
            )
        x = x[0]
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
