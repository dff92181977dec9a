"""Stratified few-shot sampling with a validation split carved from the drawn samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError


def few_shot(
    targets: Any,
    per_class: int | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``per_class`` samples of every class, then split them into train and validation.

    ``targets``: 1-D integer labels (tensor, array, list) or a dataset with ``.targets``
    (whose ``.classes`` then name the classes in error messages, as ``classes=`` does).
    ``per_class=None`` takes every sample. Of the samples drawn for a class,
    ``round(per_class * val_fraction)`` go to validation, but at least one when
    ``val_fraction > 0`` and the class has two or more drawn samples, and never all of them.

    Returns ``(train_idx, val_idx)``: sorted int64 tensors of positions in ``targets``,
    disjoint. The draw depends only on ``targets`` and ``seed``: the same arguments give the
    same indices, and the samples drawn with a smaller ``per_class`` are a subset of those
    drawn with a larger one (same seed). The test split is not touched here: keep it apart.

    Raises :class:`DataError` naming the first class with fewer than ``per_class`` samples,
    and when ``val_fraction > 0`` but no class has two samples to split (an empty
    validation set, which model selection cannot use).
    """
    if classes is None:
        classes = getattr(targets, "classes", None)
    y = _labels(getattr(targets, "targets", targets))
    if per_class is not None and (
        isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1
    ):
        raise ConfigError(f"per_class must be a positive integer or None, got {per_class!r}.")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ConfigError(
            f"val_fraction must be in [0, 1), got {val_fraction!r}; use 0 for no validation split."
        )

    # one stable sort groups the positions of each class; randperm per class then draws
    order = torch.argsort(y, stable=True)
    labels, counts = torch.unique_consecutive(y[order], return_counts=True)
    if per_class is not None:
        short = (counts < per_class).nonzero()
        if len(short):
            i = int(short[0])
            label = int(labels[i])
            name = f" ({classes[label]!r})" if classes is not None and label < len(classes) else ""
            raise DataError(
                f"class {label}{name} has only {int(counts[i])} samples, fewer than per_class="
                f"{per_class}; lower per_class to {int(counts.min())} or less."
            )

    gen = torch.Generator().manual_seed(int(seed))
    train: list[torch.Tensor] = []
    val: list[torch.Tensor] = []
    for members in torch.split(order, counts.tolist()):
        perm = torch.randperm(len(members), generator=gen)
        drawn = members[perm[: per_class if per_class is not None else len(members)]]
        n_val = _n_val(len(drawn), val_fraction)
        val.append(drawn[:n_val])
        train.append(drawn[n_val:])
    val_idx = torch.cat(val).sort().values
    if val_fraction > 0 and len(val_idx) == 0:
        raise DataError(
            f"val_fraction={val_fraction} leaves no validation sample: every class has a single "
            f"drawn sample (per_class={per_class}); use per_class >= 2, or val_fraction=0 and "
            "a validation set of your own."
        )
    return torch.cat(train).sort().values, val_idx


def _n_val(n: int, fraction: float) -> int:
    if fraction == 0 or n < 2:
        return 0
    return min(max(math.floor(n * fraction + 0.5), 1), n - 1)


def _labels(targets: Any) -> torch.Tensor:
    if isinstance(targets, torch.Tensor):
        y = targets.detach().cpu()
    else:
        arr = np.asarray(targets)
        if arr.dtype.kind not in "biuf":
            raise DataError(f"targets have dtype {arr.dtype}; pass integer class labels.")
        y = torch.from_numpy(np.ascontiguousarray(arr))
    if y.dim() != 1:
        raise DataError(f"targets must be 1-D class labels, got shape {tuple(y.shape)}.")
    if len(y) == 0:
        raise DataError("targets are empty; pass the labels of a non-empty dataset.")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise DataError("targets are fractional; pass integer class labels.")
    elif y.dtype == torch.bool or y.dtype.is_complex:
        raise DataError(f"targets have dtype {y.dtype}; pass integer class labels.")
    return y.to(torch.int64)
