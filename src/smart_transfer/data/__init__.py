"""Datasets, few-shot sampling and batch transforms for transfer learning.

Datasets return ``(image, label)``: a uint8 ``(C, H, W)`` tensor (``C = 1`` for gray) and an
``int``; each has ``.targets`` (1-D int64 tensor) and ``.classes`` (names).

* :func:`fashion_mnist` - Fashion-MNIST from disk, Debian's package or a checked download.
* :func:`image_folder` - images on disk, one subfolder per class; :func:`image_csv` - the
  images a CSV/TSV of ``path,label`` lists; both read mixed sizes at a network's evaluation
  geometry (:func:`eval_geometry`) and skip or name unreadable files (``on_error``).
* :func:`as_dataset` - any map-style dataset of ``(image, label)`` or dict items (Hugging Face
  style), or raw ``(x, y)`` batches, as a dataset with ``targets`` and ``classes``.
* :class:`Manifest` / :func:`draw_splits` - the test split held out first, then train/val; a
  run's record of its data by file (``manifest.json``).
* :func:`arrays` - numpy arrays, torch tensors or an ``.npz`` file.
* :func:`few_shot` - stratified ``per_class`` samples and a validation split from them.
* :func:`transforms_for` - the batch transform a network expects (resize, channels, normalise,
  training augmentation), run on whole batches on their device.
* :func:`loader` - ``(x, y)`` batches through such a transform.
"""

from __future__ import annotations

from .adapt import as_dataset
from .arrays import ArrayDataset, arrays
from .download import cache_dir
from .fashion_mnist import FashionMNIST, fashion_mnist
from .few_shot import few_shot
from .idx import read_idx, write_idx
from .image_folder import ImageFiles, ImageFolder, image_csv, image_folder
from .loader import Loader, collate, loader
from .manifest import Manifest, draw_splits
from .tensor_dataset import TensorImageDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, eval_geometry, transforms_for

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "BatchTransform",
    "FashionMNIST",
    "ImageFiles",
    "ImageFolder",
    "Loader",
    "Manifest",
    "TensorImageDataset",
    "arrays",
    "as_dataset",
    "cache_dir",
    "collate",
    "draw_splits",
    "eval_geometry",
    "fashion_mnist",
    "few_shot",
    "image_csv",
    "image_folder",
    "loader",
    "read_idx",
    "transforms_for",
    "write_idx",
]
