"""Any labelled image data a user holds, as a dataset of ``(uint8 image, int label)`` with names.

:func:`as_dataset` takes what :func:`smart_transfer.train` and :func:`smart_transfer.evaluate`
accept: a dataset of this package; any map-style dataset whose items are ``(image, label)``
pairs or dicts with image/label keys (the Hugging Face ``datasets`` style: ``"image"`` /
``"img"`` and ``"label"`` / ``"labels"``); or raw ``(x, y)`` batches, which go through the
checks of :func:`~smart_transfer.data.arrays` (float images in [0, 1], integer labels, labels
with gaps remapped, never a class list as long as the largest label).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

IMAGE_KEYS = ("image", "img", "pixel_values", "images")
LABEL_KEYS = ("label", "labels", "target", "fine_label")


class DictDataset(Dataset):
    """A map-style dataset of dict items (Hugging Face ``datasets`` style) as ``(image, label)``.

    Images may be PIL images, numpy arrays ``(H, W)`` / ``(H, W, C)`` or tensors ``(C, H, W)``;
    PIL images are converted to RGB (gray to three channels: ``mode``), arrays to uint8 tensors.
    ``classes`` come from ``ds.features[label_key].names`` when there are such, else
    ``ds.classes``, else the label values (remapped to ``0..K-1`` when they have gaps).
    ``geometry`` (see :meth:`with_geometry`) brings mixed-size images to one size.
    """

    def __init__(self, ds: Any, image_key: str, label_key: str, mode: str | None = "RGB") -> None:
        self.ds = ds
        self.image_key, self.label_key, self.mode = image_key, label_key, mode
        raw = _column(ds, label_key)
        y = _int_labels(raw)
        names = _feature_names(ds, label_key) or _names_attr(ds)
        self._map: dict[int, int] | None = None
        if names is None:
            y, names, self._map = dense(y)
        self.targets = y
        self.classes = [str(c) for c in names]
        self.size: Any = None
        self.crop_pct: float | None = None
        self.interpolation = "bilinear"
        if len(y) and int(y.max()) >= len(self.classes):
            raise DataError(
                f"label {int(y.max())} has no class name: the dataset names "
                f"{len(self.classes)} classes; pass labels 0..{len(self.classes) - 1}."
            )

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.ds[int(index)]
        image = to_image_tensor(item[self.image_key], self.mode)
        if self.size is not None:
            from .transforms import eval_geometry

            image = eval_geometry(image, self.size, self.crop_pct, self.interpolation)
        return image, int(self.targets[index])

    def with_geometry(
        self, size: Any, crop_pct: float | None = None, interpolation: str = "bilinear"
    ) -> DictDataset:
        import copy

        out = copy.copy(self)
        out.size, out.crop_pct, out.interpolation = size, crop_pct, interpolation
        return out


class Relabelled(Dataset):
    """``ds`` with its labels mapped to ``0..K-1`` (``mapping``: old label -> new)."""

    def __init__(
        self, ds: Any, targets: torch.Tensor, classes: Sequence[str], mapping: dict[int, int]
    ) -> None:
        self.ds, self.targets, self.classes, self.mapping = ds, targets, list(classes), mapping

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.ds[index][:2]
        return image, self.mapping[int(label)]

    def __getattr__(self, name: str) -> Any:
        # what a summary reads (what was left out, and where) comes from the wrapped dataset
        if name in ("skip_reasons", "empty_folders", "ignored_files", "relative", "root"):
            return getattr(self.__dict__["ds"], name)
        raise AttributeError(name)


def as_dataset(data: Any, what: str = "data", classes: Sequence[str] | None = None) -> Dataset:
    """``data`` as a map-style dataset with ``targets`` and ``classes`` (see the module docstring).

    ``classes``: the class names raw ``(x, y)`` batches' labels index (evaluation of a trained
    model); without them the labels are checked and remapped as :func:`arrays` does.
    """
    if (
        isinstance(data, Dataset)
        and isinstance(getattr(data, "targets", None), torch.Tensor)
        and getattr(data, "classes", None)
    ):
        return data  # this package's datasets: labels checked, classes named
    if isinstance(data, Dataset) or _is_map_style(data):
        item = _first(data, what)
        if isinstance(item, dict):
            image_key = next((k for k in IMAGE_KEYS if k in item), None)
            label_key = next((k for k in LABEL_KEYS if k in item), None)
            if image_key is None or label_key is None:
                raise DataError(
                    f"{what} items are dicts with keys {sorted(item)}; they need an image key "
                    f"({'/'.join(IMAGE_KEYS)}) and a label key ({'/'.join(LABEL_KEYS)})."
                )
            return DictDataset(data, image_key, label_key)
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise DataError(
                f"{what} items are {type(item).__name__}; each must be an (image, label) pair "
                "or a dict with 'image' and 'label' keys."
            )
        if _is_batch(item):  # a list of (x, y) batches
            return _from_batches(data, what, classes)
        return _with_names(data, what)
    if isinstance(data, (list, tuple)) and data:
        first = data[0]
        if isinstance(first, (tuple, list)) and len(first) >= 2 and not _is_batch(first):
            return _with_names(data, what)  # a list of (image, label) items
    if data is None or isinstance(data, (bytes, torch.Tensor, np.ndarray)):
        raise DataError(
            f"{what} must be a dataset, (dataset, indices), a path or an iterable of "
            f"(images, labels) batches, got {type(data).__name__}."
        )
    return _from_batches(data, what, classes)


def _from_batches(data: Any, what: str, classes: Sequence[str] | None) -> Dataset:
    from .arrays import arrays

    xs, ys = [], []
    try:
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise DataError(
                    f"{what} yielded a {type(batch).__name__}; batches must be (images, labels) "
                    "pairs."
                )
            xs.append(
                torch.as_tensor(
                    np.asarray(batch[0]) if not isinstance(batch[0], torch.Tensor) else batch[0]
                )
            )
            ys.append(
                torch.as_tensor(
                    np.asarray(batch[1]) if not isinstance(batch[1], torch.Tensor) else batch[1]
                ).flatten()
            )
    except TypeError:
        raise DataError(f"{what} is not iterable ({type(data).__name__}).") from None
    if not xs:
        raise DataError(f"{what} yielded no batches.")
    try:
        x, y = torch.cat(xs), torch.cat(ys)
    except RuntimeError as exc:
        raise DataError(
            f"{what}'s batches do not fit together ({str(exc).splitlines()[0]}); pass "
            "batches of one image size and dtype."
        ) from None
    return arrays(x, y, classes=classes)


def _with_names(ds: Any, what: str) -> Dataset:
    """A dataset of ``(image, label)`` pairs with ``classes``: its own, or from its labels."""
    names = _names_attr(ds)
    t = getattr(ds, "targets", None)
    y = _int_labels(t if t is not None else [ds[i][1] for i in range(len(ds))])
    if names is not None:
        if len(y) and int(y.max()) >= len(names):
            raise DataError(
                f"{what} has label {int(y.max())} but names {len(names)} classes; "
                "pass one name per class."
            )
        if t is None or not isinstance(t, torch.Tensor):
            return Relabelled(ds, y, names, {i: i for i in range(len(names))})
        return cast(Dataset, ds)
    y2, names, mapping = dense(y)
    return Relabelled(ds, y2, names, mapping or {i: i for i in range(len(names))})


def dense(y: torch.Tensor) -> tuple[torch.Tensor, list[str], dict[int, int] | None]:
    """Labels as ``0..K-1`` and names: kept when they already are, else mapped in sorted order
    (named by their values, with a warning); memory never depends on the largest label."""
    if not len(y):
        return y, [], None
    values, inverse = torch.unique(y, sorted=True, return_inverse=True)
    k = len(values)
    if int(values[-1]) == k - 1:
        return y, [str(i) for i in range(k)], None
    shown = ", ".join(str(int(v)) for v in values[:5]) + (" ..." if k > 5 else "")
    warnings.warn(
        f"labels take {k} distinct values ({shown}), not 0..{k - 1}; they are mapped to "
        f"0..{k - 1} in sorted order and the class names keep the original values.",
        stacklevel=3,
    )
    return (
        inverse.to(torch.int64),
        [str(int(v)) for v in values],
        {int(v): i for i, v in enumerate(values)},
    )


def to_image_tensor(image: Any, mode: str | None = "RGB") -> torch.Tensor:
    """A PIL image, numpy array or tensor as a ``(C, H, W)`` tensor (uint8 for PIL / integers)."""
    if hasattr(image, "getbands") and hasattr(image, "convert"):  # PIL
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        a = torch.from_numpy(np.array(image, copy=True))
        return a.unsqueeze(0) if a.dim() == 2 else a.permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        return image.unsqueeze(0) if image.dim() == 2 else image
    if isinstance(image, (np.ndarray, list)):
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(image)))
        if t.dim() == 2:
            return t.unsqueeze(0)
        return (
            t.permute(2, 0, 1).contiguous()
            if t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3)
            else t
        )
    raise DataError(
        f"images must be PIL images, numpy arrays or tensors, got {type(image).__name__}."
    )


def _int_labels(labels: Any) -> torch.Tensor:
    """Labels as a 1-D int64 tensor: integers >= 0; integral floats are taken, fractions refused."""
    t = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    t = t.flatten() if t.dim() > 1 and t.numel() == len(t) else t
    if t.dim() != 1:
        raise DataError(f"labels must be one class index per image, got shape {tuple(t.shape)}.")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise DataError("labels are fractional; pass integer class indices (or class names).")
    elif t.dtype == torch.bool or t.dtype.is_complex:
        raise DataError(f"labels have dtype {t.dtype}; pass integer class indices.")
    t = t.to(torch.int64)
    if len(t) and int(t.min()) < 0:
        raise DataError(f"labels must be >= 0, found {int(t.min())}; pass class indices 0..K-1.")
    return t


def _column(ds: Any, key: str) -> Any:
    if hasattr(ds, "column_names") and key in getattr(ds, "column_names", ()):
        return ds[key]  # Hugging Face: the whole column, without decoding images
    return [ds[i][key] for i in range(len(ds))]


def _feature_names(ds: Any, key: str) -> list[str] | None:
    feats = getattr(ds, "features", None)
    try:
        names = feats[key].names if feats is not None else None
    except (KeyError, TypeError, AttributeError):
        names = None
    return [str(n) for n in names] if names else None


def _names_attr(ds: Any) -> list[str] | None:
    names = getattr(ds, "classes", None)
    return [str(c) for c in names] if names else None


def _is_map_style(obj: Any) -> bool:
    return (
        hasattr(obj, "__len__")
        and hasattr(obj, "__getitem__")
        and not isinstance(obj, (str, bytes, dict, torch.Tensor, np.ndarray, tuple, list))
    )


def _is_batch(item: Any) -> bool:
    label = item[1]
    return bool(np.ndim(label.detach().cpu() if isinstance(label, torch.Tensor) else label) >= 1)


def _first(ds: Any, what: str) -> Any:
    try:
        n = len(ds)
    except TypeError:
        raise DataError(f"{what} has no length; pass a map-style dataset.") from None
    if n == 0:
        raise DataError(f"{what} is empty; pass at least one image per class.")
    return ds[0]
