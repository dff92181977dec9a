"""Datasets named on the command line: ``fashion-mnist``, a folder of class subfolders, an
``.npz``, or a CSV/TSV of ``path,label``."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any

from ..errors import DataError

FASHION = ("fashion-mnist", "fashion_mnist", "fmnist")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")


def is_fashion(spec: Any) -> bool:
    """The dataset name, as written (a near miss gets a 'did you mean' from :func:`open_data`)."""
    return str(spec) in FASHION


def describe(spec: Any) -> str:
    """How a summary names the data: 'fashion-mnist' or the absolute path."""
    return "fashion-mnist" if is_fashion(spec) else str(Path(str(spec)).expanduser().resolve())


def open_data(
    spec: str,
    split: str = "train",
    size: Any = None,
    *,
    on_error: str = "raise",
    check: bool = False,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
) -> Any:
    """The dataset ``spec`` names. ``split`` matters for Fashion-MNIST only (``train``/``test``);
    ``size`` / ``crop_pct`` / ``interpolation``: the evaluation geometry a folder's or CSV's
    images are read with (None: their own size). ``on_error``: ``raise`` or ``skip`` unreadable
    files (and empty class folders); ``check=True`` decodes every file now, so that a corrupt
    one is reported (raise) or left out (skip) before any work."""
    from . import arrays, fashion_mnist, image_folder
    from .image_folder import image_csv

    if is_fashion(spec):
        return fashion_mnist(split)
    path = Path(str(spec)).expanduser()
    ds: Any
    opts = {"size": size, "crop_pct": crop_pct, "interpolation": interpolation}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what is left out is said by the summary
        if path.is_dir():
            ds = image_folder(path, on_error=on_error, **opts)
        elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
            ds = image_csv(path, on_error=on_error, **opts)
        elif path.is_file() and path.suffix.lower() == ".npz":
            return arrays(path)
        else:
            ds = None
        if ds is not None:
            return ds.check() if check else ds
    if difflib.get_close_matches(str(spec).lower(), FASHION, n=1, cutoff=0.6):
        raise DataError(f"unknown data {spec!r}; did you mean the dataset 'fashion-mnist'?")
    if path.exists():
        raise DataError(
            f"{spec!r} is neither a folder of class subfolders, a CSV/TSV of path,label "
            "nor an .npz file"
        )
    raise DataError(
        f"no data at {spec!r}: it does not exist (check the path); pass 'fashion-mnist', a folder "
        "with one subfolder of images per class, a CSV of path,label rows, or an .npz file with "
        "images and labels"
    )
