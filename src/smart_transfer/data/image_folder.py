"""Images on disk, one subfolder per class, decoded lazily with PIL.

Every format Pillow decodes is read (JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM/PBM...). Pixels
always come out as uint8: 8-bit files as they are, 16-bit files (PNG/TIFF gray ``I;16``)
scaled from 0..65535 to 0..255 with rounding, float files (TIFF mode ``F``) scaled from
[0, 1]; a float image outside [0, 1] or a 32-bit integer image, whose range is unknown, is
refused with :class:`DataError` (never clipped).
"""

from __future__ import annotations

import difflib
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, MissingDependencyError

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
_MODES = ("RGB", "L", None)
# with mode=None, modes whose raw values are not RGB / gray intensities still get converted
_NATIVE = {
    "1": "L",
    "P": "RGB",
    "PA": "RGBA",
    "LA": "L",
    "La": "L",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Dataset names that a mistyped --data might have meant, for the "does not exist" message.
DATASET_NAMES = ("fashion-mnist",)


# what PIL raises for files it cannot identify, parse or check (struct.error: cut headers)
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow ships with the vision extra
        raise MissingDependencyError(
            "reading image folders needs Pillow; install it with `pip install pillow`."
        ) from exc
    return Image


class ImageFolder(Dataset):
    """A labelled image set with one subfolder of ``root`` per class (classes sorted by name).

    ``ds[i]`` is ``(image, label)``: a uint8 ``(C, H, W)`` tensor decoded from the file on
    access (``C = 3`` for ``mode="RGB"``, 1 for ``"L"``, as stored for ``None``) and an
    ``int``. ``samples`` lists ``(path, label)``; ``targets`` is a 1-D int64 tensor;
    ``classes`` the folder names. With ``on_error="skip"`` the files that could not be decoded
    at construction (corrupt, truncated, or with pixels refused as described in the module
    docstring) are left out: ``skipped`` counts them, ``skipped_files`` lists them. Files
    with other suffixes are never read: ``ignored`` counts them, ``ignored_files`` lists them.
    ``size`` (an int or ``(H, W)``) resizes every image on load, so that a batch of images of
    different sizes can be stacked.
    """

    def __init__(
        self,
        root: PathLike,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        on_error: str = "raise",
        mode: str | None = "RGB",
        size: int | tuple[int, int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        if mode not in _MODES:
            raise ConfigError(f"mode must be 'RGB', 'L' or None, got {mode!r}.")
        if isinstance(extensions, str):
            extensions = (extensions,)
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        if not exts:
            raise ConfigError("extensions is empty; pass suffixes such as ('.jpg', '.png').")
        if not isinstance(root, (str, os.PathLike)):
            raise ConfigError(
                f"root must be the path of a folder (str or os.PathLike), got {type(root).__name__}."
            )
        self.root = Path(root).expanduser()
        self.extensions = exts
        self.on_error = on_error
        self.mode = mode
        self.size = _as_size(size)
        self.transform = transform
        self.classes, self.samples, self.ignored_files = _scan(self.root, exts)
        self.skipped_files: list[Path] = []
        if on_error == "skip":
            self._drop_unreadable()
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    @property
    def skipped(self) -> int:
        """How many files were left out because PIL could not read them."""
        return len(self.skipped_files)

    @property
    def ignored(self) -> int:
        """How many files in the class folders were left out because of their suffix."""
        return len(self.ignored_files)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label."""
        return {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = self.load(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def load(self, path: PathLike) -> torch.Tensor:
        """Decode one file into a uint8 ``(C, H, W)`` tensor with this folder's mode and size.

        Raises :class:`DataError` naming the file when it cannot be decoded (also a truncated
        file) or its pixels cannot be brought to 8 bits without guessing (see the module
        docstring).
        """
        Image = _pil()
        try:
            with Image.open(path) as img:
                img.load()  # decode everything now: a truncated file fails here, not later
                img = _to_8bit(Image, img, path)
                target = self.mode or _NATIVE.get(img.mode, img.mode)
                if img.mode != target:
                    img = img.convert(target)
                if self.size is not None and img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = np.asarray(img)
        except DataError:
            raise
        except _PIL_ERRORS as exc:
            raise DataError(
                f"image {path} could not be decoded on load ({type(exc).__name__}: {exc}); "
                "replace or delete it, or build the dataset with on_error='skip' to leave "
                "unreadable files out."
            ) from exc
        if array.dtype != np.uint8:  # pragma: no cover - _to_8bit leaves only 8-bit modes
            raise DataError(
                f"image {path} has {array.dtype} pixels (PIL mode {img.mode}); convert it to "
                "8 bits per channel."
            )
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()

    def _drop_unreadable(self) -> None:
        kept = []
        for path, label in self.samples:
            try:
                self.load(path)  # a full decode: verify() misses truncated JPEG data
            except DataError:
                self.skipped_files.append(path)
            else:
                kept.append((path, label))
        if self.skipped_files:
            shown = ", ".join(str(p) for p in self.skipped_files[:3])
            more = f" and {self.skipped - 3} more" if self.skipped > 3 else ""
            warnings.warn(
                f"skipped {self.skipped} unreadable image file(s) under {self.root}: {shown}{more}",
                stacklevel=3,
            )
        present = {label for _, label in kept}
        empty = [c for i, c in enumerate(self.classes) if i not in present]
        if empty:
            raise DataError(
                f"class folder {self.root / empty[0]} has no readable image left after skipping "
                "unreadable files; add images to it or remove the folder."
            )
        self.samples = kept

    def __repr__(self) -> str:
        return (
            f"ImageFolder(root={str(self.root)!r}, n={len(self)}, classes={len(self.classes)}, "
            f"mode={self.mode!r}, skipped={self.skipped}, ignored={self.ignored})"
        )


def _to_8bit(Image: Any, img: Any, path: PathLike) -> Any:
    """``img`` with 8-bit pixels: 16-bit and float pixels scaled from their full range.

    Pillow's own conversion of these modes clips (16-bit) or truncates (float) to 0..255, which
    turns most 16-bit images white and [0, 1] float images black, so they are scaled here.
    """
    mode = img.mode
    if mode in _UINT16_MODES or (mode == "I" and img.format == "PNG"):
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):  # pragma: no cover - PNG is 16-bit
            raise DataError(f"image {path} has 16-bit pixels outside 0..65535; re-save it.")
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    if mode == "I":
        raise DataError(
            f"image {path} has 32-bit integer pixels (PIL mode I), whose range is unknown, so "
            "they cannot be scaled to 8 bits without guessing; save it as 8- or 16-bit."
        )
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise DataError(
                f"image {path} has float pixels spanning [{np.nanmin(a):g}, {np.nanmax(a):g}]; "
                "float images must lie in [0, 1] to be read as intensities (they are never "
                "clipped); rescale the file to [0, 1] or save it as 8- or 16-bit."
            )
        return Image.fromarray(np.rint(a * 255).astype(np.uint8), "L")
    return img


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ConfigError(f"size must be a positive int or (height, width), got {size!r}.")
    return (pair[0], pair[1])


def _scan(
    root: Path, exts: tuple[str, ...]
) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    if not root.exists():
        key = "".join(ch for ch in root.name.lower() if ch.isalnum())
        known = {"".join(ch for ch in n if ch.isalnum()): n for n in DATASET_NAMES}
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
        hint = f"; did you mean the dataset {known[close[0]]!r}?" if close else "; check the path."
        raise DataError(f"image folder {root} does not exist{hint}")
    if not root.is_dir():
        raise DataError(
            f"{root} is a file, not a folder; pass the folder that holds one subfolder per class."
        )

    def visible(entry: os.DirEntry) -> bool:
        return not entry.name.startswith(".")

    def is_image(entry: os.DirEntry) -> bool:
        return entry.is_file() and os.path.splitext(entry.name)[1].lower() in exts

    with os.scandir(root) as it:
        entries = sorted((e for e in it if visible(e)), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir()]
    if not class_dirs:
        loose = any(is_image(e) for e in entries)
        hint = (
            "it holds images directly; move each class's images into its own subfolder"
            if loose
            else "put each class's images in its own subfolder"
        )
        raise DataError(f"image folder {root} has no class subfolders; {hint}.")

    samples: list[tuple[Path, int]] = []
    ignored: list[Path] = []
    empty: list[str] = []
    for label, d in enumerate(class_dirs):
        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(d.path, followlinks=True):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for n in sorted(filenames):
                if n.startswith("."):
                    continue
                if os.path.splitext(n)[1].lower() in exts:
                    files.append(Path(dirpath) / n)
                else:
                    ignored.append(Path(dirpath) / n)
        if not files:
            empty.append(d.name)
        samples += [(f, label) for f in files]
    names = [d.name for d in class_dirs]
    ext_list = ", ".join(exts)
    others = (
        f" ({len(ignored)} other file(s) were left out by their suffix, e.g. {ignored[0].name})"
        if ignored
        else ""
    )
    if not samples:
        raise DataError(
            f"no images ({ext_list}) found in the class subfolders of {root}{others}; add "
            "images or pass extensions= with the suffixes your files use."
        )
    if empty:
        raise DataError(
            f"class folder {root / empty[0]} has no images ({ext_list})"
            + (f", nor do {len(empty) - 1} other class folder(s)" if len(empty) > 1 else "")
            + f"{others}; add images to it or remove the folder."
        )
    if len(class_dirs) < 2:
        raise DataError(
            f"image folder {root} has a single class ({names[0]!r}); a classifier needs at "
            "least two class subfolders."
        )
    return names, samples, ignored


def image_folder(
    root: PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    on_error: str = "raise",
    mode: str | None = "RGB",
    *,
    size: int | tuple[int, int] | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ImageFolder:
    """A dataset of the images under ``root``, one subfolder per class; see :class:`ImageFolder`.

    Files are found by their suffix (case-insensitive), also in nested folders below a class
    folder; hidden files and folders are ignored. With ``on_error="raise"`` (the default)
    files are only opened when read, and an unreadable one raises :class:`DataError` naming
    it then; with ``on_error="skip"`` every file is decoded once at
    construction and the unreadable ones are left out with a warning.
    """
    return ImageFolder(root, extensions, on_error, mode, size, transform)
