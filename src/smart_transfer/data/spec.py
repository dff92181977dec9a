"""Datasets named on the command line: ``fashion-mnist``, a folder of class subfolders, an ``.npz``."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..errors import DataError

FASHION = ("fashion-mnist", "fashion_mnist", "fmnist")


def is_fashion(spec: str) -> bool:
    return str(spec).lower() in FASHION


def open_data(spec: str, split: str = "train", size: int | None = None) -> Any:
    """The dataset ``spec`` names. ``split`` matters for Fashion-MNIST only (``train``/``test``);
    ``size`` resizes the images of a folder as they are read (None: their own size)."""
    from . import arrays, fashion_mnist, image_folder

    if is_fashion(spec):
        return fashion_mnist(split)
    path = Path(spec).expanduser()
    if path.is_dir():
        return image_folder(path, size=size)
    if path.is_file() and path.suffix.lower() == ".npz":
        return arrays(path)
    if difflib.get_close_matches(str(spec).lower(), FASHION, n=1, cutoff=0.6):
        raise DataError(f"unknown data {spec!r}; did you mean 'fashion-mnist'?")
    if path.exists():
        raise DataError(f"{spec!r} is neither a folder of class subfolders nor an .npz file")
    raise DataError(
        f"no data at {spec!r}: pass 'fashion-mnist', a folder with one subfolder of images per "
        "class, or an .npz file with images and labels"
    )
