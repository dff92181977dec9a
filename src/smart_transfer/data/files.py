"""Unlabelled images: files, folders (flat or nested) and glob patterns, decoded one at a time.

Prediction reads images nobody has sorted into class folders, so this module finds image
files by suffix wherever they are and decodes each one exactly as :class:`ImageFolder` does
(the same 8-bit conversion and colour mode), so that a photo gives the same pixels whether
it was read for training or for prediction.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .image_folder import _NATIVE, _PIL_ERRORS, IMAGE_EXTENSIONS, _pil, _to_8bit

_GLOB_CHARS = ("*", "?", "[")


def is_image_file(
    path: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> bool:
    """Whether ``path`` has one of the image suffixes (case-insensitive) and is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def pil_to_tensor(img: Any, name: str = "the image", mode: str | None = "RGB") -> torch.Tensor:
    """A decoded PIL image as a uint8 ``(C, H, W)`` tensor, converted as :class:`ImageFolder` does.

    Raises :class:`DataError` naming ``name`` when its pixels cannot be brought to 8 bits
    without guessing (32-bit integer images, float images outside [0, 1]).
    """
    Image = _pil()
    img = _to_8bit(Image, img, name)
    target = mode or _NATIVE.get(img.mode, img.mode)
    if img.mode != target:
        img = img.convert(target)
    tensor = torch.from_numpy(np.asarray(img).copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike[str], mode: str | None = "RGB") -> torch.Tensor:
    """Decode the file at ``path`` into a uint8 ``(C, H, W)`` tensor (``C = 3`` for ``"RGB"``).

    The whole file is decoded now, so a truncated file fails here; any failure is a
    :class:`DataError` naming the file.
    """
    Image = _pil()
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_tensor(img, str(path), mode)
    except DataError:
        raise
    except _PIL_ERRORS as exc:
        raise DataError(f"image {path} could not be decoded ({type(exc).__name__}: {exc})") from exc


def images_in_folder(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Every image file below ``folder`` (subfolders too), hidden files and folders left out,
    sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        found += [Path(dirpath) / n for n in sorted(filenames) if is_image_file(n, extensions)]
    return found


def find_images(
    spec: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """The image files ``spec`` names: a file, a folder (searched recursively) or a glob pattern.

    A file named directly is taken whatever its suffix (decoding will tell whether it is an
    image); a folder or a pattern contributes only files with an image suffix. Raises
    :class:`DataError` when the path does not exist, the pattern matches nothing, or a folder
    holds no image.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = images_in_folder(path, extensions)
        if not found:
            raise DataError(
                f"folder {text} holds no images ({', '.join(extensions)}); put the images to "
                "classify in it or name the files themselves."
            )
        return found
    if any(ch in text for ch in _GLOB_CHARS):
        matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
        if not matches:
            raise DataError(
                f"no file matches the pattern {text!r}; check the folder and the suffix."
            )
        found = []
        for m in map(Path, matches):
            if m.is_dir():
                found += images_in_folder(m, extensions)
            elif is_image_file(m, extensions):
                found.append(m)
        if not found:
            raise DataError(
                f"the pattern {text!r} matches {len(matches)} path(s) but no image "
                f"({', '.join(extensions)}); check the suffix."
            )
        return found
    raise DataError(f"no image, folder or pattern at {text!r}; check the path.")
