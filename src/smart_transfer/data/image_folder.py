"""Images on disk, one subfolder per class, decoded lazily with PIL.

Every format Pillow decodes is read (JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM/PBM...). Pixels
always come out as uint8: 8-bit files as they are, 16-bit files (PNG/TIFF gray ``I;16``)
scaled from 0..65535 to 0..255 with rounding, float files (TIFF mode ``F``) scaled from
[0, 1]; a float image outside [0, 1] or a 32-bit integer image, whose range is unknown, is
refused with :class:`DataError` (never clipped).
"""

from __future__ import annotations

import copy
import csv
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


SKIP_HINT = "pass --on-error skip (on_error='skip' from Python) to leave them out"


class ImageFiles(Dataset):
    """Labelled image files (a list of ``(path, label)``), decoded lazily with PIL.

    The base of :class:`ImageFolder` and of the datasets read from a CSV of ``path,label``
    (:func:`image_csv`) or from a run's manifest. ``ds[i]`` is ``(image, label)``: a uint8
    ``(C, H, W)`` tensor decoded on access (``C = 3`` for ``mode="RGB"``, 1 for ``"L"``, as
    stored for ``None``) and an ``int``. ``samples`` lists ``(path, label)``; ``targets`` is a
    1-D int64 tensor; ``classes`` the class names; ``root`` the folder paths are relative to.

    ``size`` (an int or ``(H, W)``) brings every image to a network's evaluation geometry as it
    is read (:func:`~smart_transfer.data.transforms.eval_geometry`: the short side resized to
    ``floor(size / crop_pct)``, aspect kept, and the centre cut out), so that photos of mixed
    sizes batch; the batch transform of ``transforms_for(model, size=size)`` then takes the
    final centre crop. ``size=None`` keeps each image's own size.

    ``skipped_files`` / ``skip_reasons`` say which files were left out and why (``unreadable``,
    ``missing``); ``empty_folders`` the classes left out for lack of images (``on_error="skip"``).
    """

    def __init__(
        self,
        samples: Sequence[tuple[PathLike, int]],
        classes: Sequence[str],
        root: PathLike,
        *,
        on_error: str = "raise",
        mode: str | None = "RGB",
        size: int | tuple[int, int] | None = None,
        crop_pct: float | None = None,
        interpolation: str = "bilinear",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        if mode not in _MODES:
            raise ConfigError(f"mode must be 'RGB', 'L' or None, got {mode!r}.")
        self.root = Path(root).expanduser()
        self.on_error = on_error
        self.mode = mode
        self.size = _as_size(size)
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.transform = transform
        self.classes = [str(c) for c in classes]
        self.samples = [(Path(p), int(label)) for p, label in samples]
        self.skip_reasons: dict[str, list[Path]] = {}
        self.empty_folders: list[str] = []
        self.ignored_files: list[Path] = []
        self.checked = False

    @property
    def targets(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    @property
    def skipped_files(self) -> list[Path]:
        """Every file left out (unreadable or missing)."""
        return [p for files in self.skip_reasons.values() for p in files]

    @property
    def skipped(self) -> int:
        """How many files were left out because they could not be read."""
        return len(self.skipped_files)

    @property
    def ignored(self) -> int:
        """How many files in the class folders were left out because of their suffix."""
        return len(self.ignored_files)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label."""
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def geometry(self) -> dict[str, Any] | None:
        """The evaluation geometry images are read with (None: their own size)."""
        if self.size is None:
            return None
        return {
            "size": list(self.size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }

    def with_geometry(
        self,
        size: int | tuple[int, int] | None,
        crop_pct: float | None = None,
        interpolation: str = "bilinear",
    ) -> ImageFiles:
        """A copy that reads images at this evaluation geometry (the files are not read again)."""
        out = copy.copy(self)
        out.size, out.crop_pct, out.interpolation = _as_size(size), crop_pct, interpolation
        return out

    def relative(self, path: PathLike) -> str:
        """``path`` relative to ``root`` (with ``/``), or absolute when it lies outside."""
        p = Path(path)
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p.resolve())

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = self.load(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def load(self, path: PathLike) -> torch.Tensor:
        """Decode one file into a uint8 ``(C, H, W)`` tensor with this dataset's mode and size.

        Raises :class:`DataError` naming the file when it cannot be decoded (also a truncated
        file) or its pixels cannot be brought to 8 bits without guessing (see the module
        docstring).
        """
        tensor = self._decode(path)
        if self.size is not None:
            from .transforms import eval_geometry

            tensor = eval_geometry(tensor, self.size, self.crop_pct, self.interpolation)
        return tensor

    def _decode(self, path: PathLike) -> torch.Tensor:
        Image = _pil()
        try:
            with Image.open(path) as img:
                img.load()  # decode everything now: a truncated file fails here, not later
                img = _to_8bit(Image, img, path)
                target = self.mode or _NATIVE.get(img.mode, img.mode)
                if img.mode != target:
                    img = img.convert(target)
                array = np.asarray(img)
        except DataError:
            raise
        except FileNotFoundError as exc:
            raise DataError(f"image {path} is missing; restore it, or {SKIP_HINT}.") from exc
        except _PIL_ERRORS as exc:
            raise DataError(
                f"image {path} could not be decoded on load ({type(exc).__name__}: {exc}); "
                f"replace or delete it, or {SKIP_HINT}."
            ) from exc
        if array.dtype != np.uint8:  # pragma: no cover - _to_8bit leaves only 8-bit modes
            raise DataError(
                f"image {path} has {array.dtype} pixels (PIL mode {img.mode}); convert it to "
                "8 bits per channel."
            )
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()

    def check(self) -> ImageFiles:
        """Decode every file once: with ``on_error="raise"`` the first unreadable one raises
        (naming it and ``--on-error skip``), with ``"skip"`` the unreadable ones are left out
        (``skip_reasons["unreadable"]``) and a class left without images is dropped."""
        if self.checked:
            return self
        kept, bad = [], []
        for path, label in self.samples:
            try:
                self._decode(path)  # a full decode: verify() misses truncated JPEG data
            except DataError:
                if self.on_error == "raise":
                    raise
                bad.append(path)
            else:
                kept.append((path, label))
        self.checked = True
        if bad:
            self.skip_reasons.setdefault("unreadable", []).extend(bad)
            shown = ", ".join(str(p) for p in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            warnings.warn(
                f"skipped {len(bad)} unreadable image file(s) under {self.root}: {shown}{more}",
                stacklevel=3,
            )
        self.samples = kept
        self._drop_empty_classes()
        return self

    def _drop_empty_classes(self) -> None:
        """Leave out the classes that have no image (``on_error="skip"``), relabelling the rest."""
        present = sorted({label for _, label in self.samples})
        if len(present) == len(self.classes):
            return
        empty = [c for i, c in enumerate(self.classes) if i not in set(present)]
        if self.on_error == "raise":
            raise DataError(
                f"class {empty[0]!r} of {self.root} has no readable image; add images, remove it, "
                f"or {SKIP_HINT}."
            )
        self.empty_folders += empty
        new = {old: i for i, old in enumerate(present)}
        self.classes = [self.classes[i] for i in present]
        self.samples = [(p, new[label]) for p, label in self.samples]
        if len(self.classes) < 2:
            raise DataError(
                f"{self.root} has {len(self.classes)} class(es) with readable images left "
                f"(left out: {', '.join(empty)}); a classifier needs at least two."
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, "
            f"classes={len(self.classes)}, mode={self.mode!r}, skipped={self.skipped}, "
            f"ignored={self.ignored})"
        )


class ImageFolder(ImageFiles):
    """A labelled image set with one subfolder of ``root`` per class (classes sorted by name).

    See :class:`ImageFiles` for the items and ``size``. With ``on_error="skip"`` the files
    that could not be decoded at construction (corrupt, truncated, or with pixels refused as
    described in the module docstring) are left out: ``skipped`` counts them,
    ``skipped_files`` lists them; class folders without images are left out too
    (``empty_folders``). Files with other suffixes are never read: ``ignored`` counts them,
    ``ignored_files`` lists them.
    """

    def __init__(
        self,
        root: PathLike,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        on_error: str = "raise",
        mode: str | None = "RGB",
        size: int | tuple[int, int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        crop_pct: float | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        if isinstance(extensions, str):
            extensions = (extensions,)
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        if not exts:
            raise ConfigError("extensions is empty; pass suffixes such as ('.jpg', '.png').")
        if not isinstance(root, (str, os.PathLike)):
            raise ConfigError(
                "root must be the path of a folder (str or os.PathLike), got "
                f"{type(root).__name__}."
            )
        root = Path(root).expanduser()
        classes, samples, ignored, empty = _scan(root, exts, skip_empty=on_error == "skip")
        super().__init__(
            samples,
            classes,
            root,
            on_error=on_error,
            mode=mode,
            size=size,
            crop_pct=crop_pct,
            interpolation=interpolation,
            transform=transform,
        )
        self.extensions = exts
        self.ignored_files = ignored
        self.empty_folders = empty
        if on_error == "skip":
            self.check()


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


def _check_root(root: Path) -> None:
    """Refuse a missing root (naming a built-in dataset it resembles) or a file."""
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


def _class_files(folder: str, exts: tuple[str, ...], ignored: list[Path]) -> list[Path]:
    """The images below one class folder (subfolders too, hidden ones left out, sorted); other
    files are appended to ``ignored``. Directory links are followed once each, except a link
    back into this class folder or its data folder (a loop such as ``a/loop -> ..``, or a
    link that would give this class another class's images): those are left out, appended
    to ``ignored`` and named in a warning."""
    files: list[Path] = []
    data_root = os.path.realpath(os.path.dirname(os.path.abspath(folder)))
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = _followed(dirpath, dirnames, seen, data_root, ignored)
        for n in sorted(filenames):
            if n.startswith("."):
                continue
            if os.path.splitext(n)[1].lower() in exts:
                files.append(Path(dirpath) / n)
            else:
                ignored.append(Path(dirpath) / n)
    return files


def _followed(
    dirpath: str, dirnames: list[str], seen: set[str], data_root: str, ignored: list[Path]
) -> list[str]:
    """The subfolders of ``dirpath`` to walk into: visible, each real folder once, and no
    directory link that leads back into the data folder."""
    keep = []
    for n in sorted(dirnames):
        if n.startswith("."):
            continue
        full = os.path.join(dirpath, n)
        real = os.path.realpath(full)
        inside = real == data_root or real.startswith(data_root + os.sep)
        if real in seen or (os.path.islink(full) and inside):
            ignored.append(Path(full))
            warnings.warn(
                f"left out the directory link {full} -> {real}: it leads back into the data "
                "folder (a loop, or another class's images)",
                stacklevel=2,
            )
            continue
        seen.add(real)
        keep.append(n)
    return keep


def _scan(
    root: Path, exts: tuple[str, ...], skip_empty: bool = False
) -> tuple[list[str], list[tuple[Path, int]], list[Path], list[str]]:
    _check_root(root)

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
    names: list[str] = []
    for d in class_dirs:
        files = _class_files(d.path, exts, ignored)
        if not files:
            empty.append(d.name)
            if skip_empty:
                continue
        samples += [(f, len(names)) for f in files]
        names.append(d.name)
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
    if empty and not skip_empty:
        raise DataError(
            f"class folder {root / empty[0]} has no images ({ext_list})"
            + (f", nor do {len(empty) - 1} other class folder(s)" if len(empty) > 1 else "")
            + f"{others}; add images to it, remove the folder, or {SKIP_HINT}."
        )
    if len(names) < 2:
        raise DataError(
            f"image folder {root} has a single class ({names[0]!r})"
            + (f" with images (empty: {', '.join(empty)})" if empty else "")
            + "; a classifier needs at least two class subfolders."
        )
    return names, samples, ignored, empty


def image_folder(
    root: PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    on_error: str = "raise",
    mode: str | None = "RGB",
    *,
    size: int | tuple[int, int] | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
) -> ImageFolder:
    """A dataset of the images under ``root``, one subfolder per class; see :class:`ImageFolder`.

    Files are found by their suffix (case-insensitive), also in nested folders below a class
    folder; hidden files and folders are ignored. With ``on_error="raise"`` (the default)
    files are only opened when read, and an unreadable one raises :class:`DataError` naming
    it then; with ``on_error="skip"`` every file is decoded once at
    construction and the unreadable ones (and class folders without images) are left out
    with a warning. ``size`` / ``crop_pct`` / ``interpolation``: the evaluation geometry each
    image is brought to as it is read, so that photos of mixed sizes batch (see
    :class:`ImageFiles`).
    """
    return ImageFolder(root, extensions, on_error, mode, size, transform, crop_pct, interpolation)


_PATH_HEADERS = ("path", "file", "filename", "filepath", "image", "img", "image_path")
_LABEL_HEADERS = ("label", "labels", "class", "category", "target")


def image_csv(
    path: PathLike,
    on_error: str = "raise",
    mode: str | None = "RGB",
    *,
    size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
) -> ImageFiles:
    """A dataset of the images a CSV (or TSV) file lists as ``path,label`` rows.

    Paths are relative to the file's folder (absolute paths are taken as they are); the
    header row is optional (recognised by a first cell such as ``path`` / ``file`` /
    ``image``, whose columns are then found by name). Tab-separated for ``.tsv`` / ``.tab``,
    else the delimiter is sniffed (comma, semicolon, tab). Labels are class names; the
    classes are their sorted unique values. A listed file that is missing or unreadable
    raises :class:`DataError` naming it and its row, or is left out with
    ``on_error="skip"`` (``skip_reasons``).
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    file = Path(path).expanduser()
    rows = _csv_rows(file)
    root = file.resolve().parent
    classes = sorted({label for _, label, _ in rows})
    if len(classes) < 2:
        raise DataError(
            f"{file} names {len(classes)} class(es) ({', '.join(classes) or 'none'}); a classifier "
            "needs at least two labels."
        )
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for rel, label, line in rows:
        p = Path(rel).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            if on_error == "raise":
                raise DataError(
                    f"{file} line {line} lists {p}, which does not exist; fix the row or "
                    f"{SKIP_HINT}."
                )
            missing.append(p)
            continue
        samples.append((p, index[label]))
    ds = ImageFiles(
        samples,
        classes,
        root,
        on_error=on_error,
        mode=mode,
        size=size,
        crop_pct=crop_pct,
        interpolation=interpolation,
    )
    ds.source = file.resolve()  # type: ignore[attr-defined]
    if missing:
        ds.skip_reasons["missing"] = missing
    if on_error == "skip":
        ds.check()
    return ds


def _csv_rows(file: Path) -> list[tuple[str, str, int]]:
    """``(path, label, line number)`` of every data row of a CSV/TSV file."""
    if not file.is_file():
        raise DataError(f"CSV file {file} does not exist; check the path.")
    text = file.read_text(encoding="utf-8-sig")
    if file.suffix.lower() in (".tsv", ".tab"):
        delimiter = "\t"
    else:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    table = [r for r in csv.reader(text.splitlines(), delimiter=delimiter)]
    numbered = [(i + 1, r) for i, r in enumerate(table) if any(c.strip() for c in r)]
    if not numbered:
        raise DataError(f"{file} has no rows; list one 'path,label' row per image.")
    pcol, lcol = 0, 1
    first = [c.strip().lower() for c in numbered[0][1]]
    if first and first[0] in _PATH_HEADERS + _LABEL_HEADERS:
        pcol = next((i for i, c in enumerate(first) if c in _PATH_HEADERS), 0)
        lcol = next((i for i, c in enumerate(first) if c in _LABEL_HEADERS), 1)
        numbered = numbered[1:]
    rows = []
    for line, r in numbered:
        if len(r) <= max(pcol, lcol) or not r[pcol].strip() or not r[lcol].strip():
            raise DataError(
                f"{file} line {line} is not a 'path,label' row ({delimiter.join(r)!r}); fix it."
            )
        rows.append((r[pcol].strip(), r[lcol].strip(), line))
    return rows
