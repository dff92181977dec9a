"""Labelled images from numpy arrays, torch tensors or an ``.npz`` file.

Layout of ``images``:

* 3 dimensions: ``(N, H, W)``, gray.
* 4 dimensions: ``(N, C, H, W)`` or ``(N, H, W, C)``. With ``layout="auto"`` a dimension
  counts as channels when its size is 1, 3 or 4. When exactly one of dimension 1 and
  dimension 3 looks like channels, that one is. When both do (e.g. ``(N, 3, 4, 3)``),
  the container decides: numpy arrays are taken as channel-last (PIL, matplotlib and
  Keras store images so), torch tensors as channel-first (torch's convention). Pass
  ``layout="NCHW"`` or ``"NHWC"`` to say it explicitly.

Pixel values: uint8 as they are; other integer types must lie in 0..255 and become uint8;
floating types must lie in [0, 1] and stay floating (float32). The batch transforms of
:func:`~smart_transfer.data.transforms_for` accept both.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .tensor_dataset import TensorImageDataset

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]

_KEY_PAIRS = (("images", "labels"), ("x", "y"))
_MAX_LABEL = 2**62
_CHANNEL_SIZES = (1, 3, 4)


class ArrayDataset(TensorImageDataset):
    """Images from arrays, stored as ``(N, H, W)`` (gray) or ``(N, C, H, W)``; see
    :func:`arrays`."""


def arrays(
    images: ArrayLike | PathLike,
    labels: ArrayLike | None = None,
    classes: Sequence[str] | None = None,
    *,
    layout: str = "auto",
) -> ArrayDataset:
    """A dataset of ``(image, label)`` from in-memory arrays or an ``.npz`` file.

    ``images``: numpy array or torch tensor (see the module docstring for the layouts), or
    the path of an ``.npz`` file with keys ``images``/``labels`` or ``x``/``y`` (any case;
    an optional ``classes`` key names the classes). ``labels``: one per image, integers
    ``0..K-1`` or any sortable values (strings...), which are then mapped to ``0..K-1`` in
    sorted order and become the class names. ``classes``: names for labels ``0..K-1``;
    default ``"0"``, ``"1"``... Integer labels with gaps and no ``classes`` (e.g. ``[3, 7,
    1000000]``) are mapped to ``0..K-1`` in sorted order, named by their values, with a
    warning; memory never depends on the largest label.

    The data is converted once to a contiguous tensor (uint8 when possible) and not copied
    again per item.
    """
    if layout not in ("auto", "NCHW", "NHWC"):
        raise ConfigError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}.")
    if isinstance(images, (str, os.PathLike)):
        if labels is not None:
            raise ConfigError(
                "pass either an .npz path (which holds the labels) or images and labels, not both."
            )
        images, labels, npz_classes = _load_npz(Path(images))
        classes = classes if classes is not None else npz_classes
    elif labels is None:
        raise ConfigError("labels are missing; pass one label per image: arrays(images, labels).")

    from_numpy = not isinstance(images, torch.Tensor)
    x = _as_tensor(images, "images")
    x = _to_layout(x, layout, from_numpy)
    x = _to_pixels(x)
    targets, label_names = _as_targets(labels, len(x))
    if classes is None and label_names is None:
        targets, label_names = _dense_labels(targets)
    if classes is None:
        classes = label_names or []
    elif label_names is not None and list(classes) != label_names:
        raise ConfigError(
            "labels are not integers, so the class names come from them; drop classes= or "
            "pass integer labels."
        )
    classes = [str(c) for c in classes]
    if len(targets) and int(targets.max()) >= len(classes):
        raise DataError(
            f"label {int(targets.max())} is out of range for {len(classes)} class names; "
            "pass one name per class in classes=."
        )
    return ArrayDataset(x, targets, classes)


def _dense_labels(y: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Integer labels as ``0..K-1`` and the names of the K classes.

    Labels that already are ``0..K-1`` (every value present) keep their values and are named
    ``"0"``..``"K-1"``. Others (gaps: ``[3, 7, 1000000]``) are mapped to ``0..K-1`` in sorted
    order and named by their original values, with a warning, so that memory and the class
    count depend on the number of distinct labels, never on the largest one.
    """
    if not len(y):
        return y, []
    values, inverse = torch.unique(y, sorted=True, return_inverse=True)
    k = len(values)
    if int(values[-1]) == k - 1:  # values are sorted, non-negative and distinct
        return y, [str(i) for i in range(k)]
    shown = ", ".join(str(int(v)) for v in values[:5]) + (" ..." if k > 5 else "")
    warnings.warn(
        f"labels take {k} distinct values ({shown}), not 0..{k - 1}; they are mapped to "
        f"0..{k - 1} in sorted order and the class names keep the original values (pass "
        "classes= with one name per index to keep the indices as they are).",
        stacklevel=3,
    )
    return inverse.to(torch.int64), [str(int(v)) for v in values]


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist; check the path.")
    # the file is opened here, not by np.load, so that it is closed even when parsing fails
    with open(path, "rb") as f:
        try:
            npz = np.load(f, allow_pickle=False)
            if not hasattr(npz, "files"):
                raise DataError(
                    f"{path} holds a single array, not an .npz archive; save images and labels "
                    "with np.savez(path, images=..., labels=...)."
                )
            keys = {k.lower(): k for k in npz.files}
            for img_key, lbl_key in _KEY_PAIRS:
                if img_key in keys and lbl_key in keys:
                    images, labels = npz[keys[img_key]], npz[keys[lbl_key]]
                    names = npz[keys["classes"]] if "classes" in keys else None
                    return images, labels, None if names is None else [str(c) for c in names]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"{path} is not a readable .npz file ({exc}); save it with np.savez."
            ) from exc
    raise DataError(
        f"{path} has keys {sorted(npz.files)}, but images and labels must be stored under 'images' "
        "and 'labels' (or 'x' and 'y'); save it with np.savez(path, images=..., labels=...)."
    )


def _as_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{what} could not be turned into an array ({exc}); pass a numpy array."
        ) from exc
    if arr.dtype.kind not in "biuf":
        raise DataError(
            f"{what} have dtype {arr.dtype} (ragged, object or text); pass a numeric array of one "
            "shape."
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(arr))


def _to_layout(x: torch.Tensor, layout: str, from_numpy: bool) -> torch.Tensor:
    if x.dim() >= 1 and x.shape[0] == 0:
        raise DataError("images are empty (0 images); pass at least one image per class.")
    if x.dim() == 3:
        if layout != "auto":
            raise DataError(
                f"images of shape {tuple(x.shape)} have no channel dimension, so layout="
                f"{layout!r} does not apply; pass layout='auto' for (N, H, W) gray images."
            )
        return x
    if x.dim() != 4:
        raise DataError(
            f"images have shape {tuple(x.shape)}; pass (N, H, W), (N, H, W, C) or (N, C, H, W)."
        )
    if layout == "auto":
        first, last = x.shape[1] in _CHANNEL_SIZES, x.shape[3] in _CHANNEL_SIZES
        if first and last:
            layout = "NHWC" if from_numpy else "NCHW"
        elif first or last:
            layout = "NCHW" if first else "NHWC"
        else:
            raise DataError(
                f"images of shape {tuple(x.shape)} have no channel dimension of size 1, 3 or 4; "
                "pass layout='NCHW' or 'NHWC' to say which one holds the channels."
            )
    return x.permute(0, 3, 1, 2).contiguous() if layout == "NHWC" else x.contiguous()


def _to_pixels(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool:
        return x.to(torch.uint8) * 255
    if x.is_floating_point():
        if x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.to(torch.float32)  # bfloat16 and friends
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise DataError(
                f"float images must lie in [0, 1], these span [{float(x.min()):g}, "
                f"{float(x.max()):g}]; divide by 255 or pass uint8 pixels."
            )
        return x.to(torch.float32)
    if x.dtype.is_complex:
        raise DataError(f"images have complex dtype {x.dtype}; pass real pixel values.")
    if x.numel():
        a = x.numpy()  # numpy: torch lacks min/max for uint16/32/64
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            wide = (
                " (for 16-bit images pass images / 65535 as float32, or images // 257)"
                if hi <= 65535 and lo >= 0
                else ""
            )
            raise DataError(
                f"integer images must lie in 0..255, these {x.dtype} images span [{lo}, {hi}]; "
                f"rescale them to 0..255 or to floats in [0, 1]{wide}."
            )
    return x.to(torch.uint8)


def _as_targets(labels: Any, n: int) -> tuple[torch.Tensor, list[str] | None]:
    arr = None if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr is not None and arr.dtype.kind in "USO":  # names: classes are the sorted unique values
        if arr.ndim != 1:
            raise DataError(f"labels must be 1-D, got shape {arr.shape}; pass one label per image.")
        try:
            names, inverse = np.unique(arr, return_inverse=True)
        except TypeError as exc:
            raise DataError(
                f"labels mix types that cannot be sorted ({exc}); pass one type."
            ) from exc
        y, label_names = torch.from_numpy(inverse.astype(np.int64)), [str(s) for s in names]
    else:
        label_names = None
        if arr is not None and arr.dtype.kind == "u" and arr.size and int(arr.max()) > _MAX_LABEL:
            raise DataError(
                f"label {int(arr.max())} is too large for a class index; pass class indices "
                "0..K-1 or the class names as strings."
            )
        y = _as_tensor(labels, "labels")
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            raise DataError(
                f"labels must be 1-D class indices, got shape {tuple(y.shape)}; for one-hot "
                "labels pass labels.argmax(1)."
            )
        if y.is_floating_point():
            if not torch.equal(y, y.round()):
                raise DataError("labels are fractional; pass integer class indices.")
            y = y.to(torch.int64)
        if y.dtype == torch.bool or y.dtype.is_complex:
            raise DataError(f"labels have dtype {y.dtype}; pass integer class indices.")
        if y.dtype in (torch.uint16, torch.uint32, torch.uint64):
            y = torch.from_numpy(y.numpy().astype(np.int64))
        y = y.to(torch.int64)
        if len(y) and int(y.min()) < 0:
            raise DataError(
                f"labels must be >= 0, found {int(y.min())}; pass class indices 0..K-1."
            )
    if len(y) != n:
        raise DataError(f"there are {n} images but {len(y)} labels; pass one label per image.")
    return y, label_names
