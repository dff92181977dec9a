"""Fashion-MNIST: find it on disk (yours, the cache, Debian's package) or download it.

Where the files are looked for, in order:

1. ``root``, when given (also its ``fashion-mnist/`` and torchvision's ``FashionMNIST/raw/``);
2. the user cache, ``cache_dir() / "fashion-mnist"``
   (see :func:`~smart_transfer.data.download.cache_dir`);
3. :data:`SYSTEM_DIRS`, by default Debian's ``/usr/share/datasets/fashion-mnist``
   (``sudo apt-get install dataset-fashion-mnist``);
4. with ``download=True``, the official location
   (or ``url`` / ``$SMART_TRANSFER_FASHION_MNIST_URL``), downloaded into the user cache with
   checksums and atomic writes.

A folder counts when it holds both files of the split, each either ``.gz`` or uncompressed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Union

import torch

from ..errors import ConfigError, DataError
from .download import cache_dir, download as _download
from .idx import read_idx
from .tensor_dataset import TensorImageDataset

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
URL_ENV = "SMART_TRANSFER_FASHION_MNIST_URL"
APT_PACKAGE = "dataset-fashion-mnist"

#: System folders searched after ``root`` and the user cache. To change it, reach this module
#: with ``importlib.import_module("smart_transfer.data.fashion_mnist")``: the attribute
#: ``smart_transfer.data.fashion_mnist`` is the loader function. ``search=`` is simpler.
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/fashion-mnist")]

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: name -> (MD5 of the official .gz file, MD5 of the decompressed idx file). The first
#: is the one the dataset publishes; the second also accepts mirrors that recompressed the
#: same data (Debian's package did: its .gz bytes differ, their content is identical).
CHECKSUMS: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ),
    "train-labels-idx1-ubyte": (
        "25c81989df183df01b3e8a0aad5dffbe",
        "9018921c3c673c538a1fc5bad174d6f9",
    ),
    "t10k-images-idx3-ubyte": (
        "bef4ecab320f06d8554ea6380940ec79",
        "8181f5470baa50b63fa0f6fddb340f0a",
    ),
    "t10k-labels-idx1-ubyte": (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "15d484375f8d13e6eb1aabb0c3f46965",
    ),
}

SIZES = {"train": 60000, "test": 10000}


class FashionMNIST(TensorImageDataset):
    """One split of Fashion-MNIST in memory: ``images`` (N, 28, 28) uint8, ``targets`` (N,) int64.

    ``ds[i]`` is ``(image (1, 28, 28) uint8, label int)``; ``source`` is the folder the files
    were read from.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        split: str,
        source: Path,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(images, targets, CLASSES, transform)
        self.split = split
        self.source = source

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, n={len(self)}, source={str(self.source)!r})"


def fashion_mnist(
    split: str = "train",
    root: PathLike | None = None,
    download: bool = True,
    *,
    url: str | None = None,
    search: Sequence[PathLike] | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FashionMNIST:
    """Load the ``"train"`` (60,000 images) or ``"test"`` (10,000) split of Fashion-MNIST.

    See the module docstring for where the files are looked for. ``search`` replaces the
    folders searched after ``root`` (the cache and :data:`SYSTEM_DIRS`); downloads still go
    to the user cache. ``url`` is the base URL holding the four ``.gz`` files (default
    ``$SMART_TRANSFER_FASHION_MNIST_URL`` or the official location). Downloaded files are
    checked against :data:`CHECKSUMS` before they are kept.
    """
    if split not in FILES:
        raise ConfigError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'.")
    candidates = _candidates(root, search)
    folder = next((d for d in candidates if _find(d, split) is not None), None)
    if folder is None:
        failure = None
        if download:
            try:
                folder = _download_split(split, url)
            except OSError as exc:  # unreachable server, DNS, timeout, HTTP error
                failure = exc
        if folder is None:
            raise DataError(_not_found_message(split, candidates, download, url, failure))
    images_path, labels_path = _find(folder, split)  # type: ignore[misc]
    images, labels = read_idx(images_path), read_idx(labels_path)
    _check_split(split, images, labels, images_path, labels_path)
    log.debug("Fashion-MNIST %s read from %s", split, folder)
    return FashionMNIST(images, labels.to(torch.int64), split, folder, transform)


def _candidates(root: PathLike | None, search: Sequence[PathLike] | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        r = Path(root).expanduser()
        dirs += [r, r / "fashion-mnist", r / "FashionMNIST" / "raw"]
    if search is None:
        dirs += [cache_dir() / "fashion-mnist", *SYSTEM_DIRS]
    else:
        dirs += [Path(d).expanduser() for d in search]
    return dirs


def _find(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for name in FILES[split]:
        path = next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _download_split(split: str, url: str | None) -> Path:
    base = url or os.environ.get(URL_ENV) or OFFICIAL_URL
    base = base if base.endswith("/") else base + "/"
    dest = cache_dir() / "fashion-mnist"
    for name in FILES[split]:
        target = dest / f"{name}.gz"
        if target.is_file():
            continue
        gz_md5, payload_md5 = CHECKSUMS[name]
        log.info("downloading %s%s.gz to %s", base, name, target)
        _download(f"{base}{name}.gz", target, md5=[gz_md5], payload_md5=[payload_md5])
    return dest


def _check_split(
    split: str, images: torch.Tensor, labels: torch.Tensor, images_path: Path, labels_path: Path
) -> None:
    n = SIZES[split]
    if images.dtype != torch.uint8 or tuple(images.shape) != (n, 28, 28):
        raise DataError(
            f"{images_path} holds {images.dtype} of shape {tuple(images.shape)}, not the "
            f"Fashion-MNIST {split} images (uint8, ({n}, 28, 28)); replace the file."
        )
    if tuple(labels.shape) != (n,) or (len(labels) and int(labels.max()) >= len(CLASSES)):
        raise DataError(
            f"{labels_path} holds shape {tuple(labels.shape)} with labels up to "
            f"{int(labels.max()) if len(labels) else None}, not {n} labels in 0..9; replace the "
            "file."
        )


def _not_found_message(
    split: str,
    looked: Sequence[Path],
    download: bool,
    url: str | None,
    failure: BaseException | None,
) -> str:
    names = " and ".join(f"{n}[.gz]" for n in FILES[split])
    places = ", ".join(str(p) for p in looked) or "(no folders)"
    if download:
        base = url or os.environ.get(URL_ENV) or OFFICIAL_URL
        what = f"downloading them from {base} failed ({failure})"
        fix = f"retry when online, or set ${URL_ENV} to a mirror"
    else:
        what = "download=False"
        fix = f"pass download=True to fetch them from {OFFICIAL_URL} into {cache_dir()}"
    return (
        f"Fashion-MNIST {split} files ({names}) were not found in {places}, and {what}; "
        f"install them with `sudo apt-get install {APT_PACKAGE}`, pass root= a folder "
        f"holding them, or {fix}."
    )
