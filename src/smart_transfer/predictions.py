"""Class names and probabilities for new images: :func:`predict` and :class:`Predictions`.

A trained run is only useful once it can label photos nobody has sorted. :func:`predict`
takes whatever a user has at hand (files, a flat or nested folder, a glob pattern, a PIL
image, a tensor or batch of them, a dataset or loader whose labels are ignored), sends every
image through the run's own evaluation preprocessing one at a time (photos come in all
sizes), and batches the results through the network. Files are decoded as training decoded
them, so a photo gets the same pixels either way.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

import numpy as np
import torch
from torch import Tensor, nn

from ._atomic import PathLike, atomic_open
from ._device import resolve_device
from ._paths import _resolved, check_outputs
from .data.files import find_images, pil_to_tensor, read_image
from .errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from .api import TrainResult

# one image to predict: where it came from (None: in memory) and how to get its pixels
_Source = tuple[Optional[str], Callable[[], Any]]
_IMAGE_KEYS = ("image", "img", "pixel_values")
TABLE_ROWS = 20  # rows of the printed table before "... N more"


class UnreadableImage(DataError):
    """A file could not be decoded; ``path`` names it, ``reason`` says why (one sentence)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{reason}; replace or delete it, or pass on_error='skip' to leave unreadable files out"
        )
        self.path = path
        self.reason = reason


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class Predictions:
    """What a run predicts for a list of images, in the order they were given.

    ``probs[i]`` is the softmax over ``classes`` for image ``i``, read from ``paths[i]``
    (``None`` for an image passed in memory). Files that could not be read with
    ``on_error='skip'`` are not rows; ``skipped`` lists them as ``(path, reason)``.
    ``top_k`` is how many classes :meth:`to_csv` and the printed table show per image.
    """

    classes: list[str]  # the run's class names (config.json "class_names")
    probs: Tensor  # (N, K) float32 on the CPU, rows sum to 1
    paths: list[str | None]  # one per row
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out
    top_k: int = 3

    @property
    def indices(self) -> Tensor:
        """The predicted class of each image as an index into ``classes`` (ties: lowest index)."""
        return self._order()[:, 0] if len(self) else torch.zeros(0, dtype=torch.int64)

    @property
    def labels(self) -> list[str]:
        """The predicted class name of each image."""
        return [self.classes[i] for i in self.indices.tolist()]

    def top(self, k: int | None = None) -> list[list[tuple[str, float]]]:
        """The ``k`` (default ``top_k``) most probable classes of each image, best first,
        as ``(class name, probability)`` pairs; ``k`` is capped at the number of classes."""
        k = self._k(k)
        order = self._order()[:, :k]
        p = self.probs.gather(1, order) if len(self) else self.probs[:, :k]
        return [
            [(self.classes[c], float(q)) for c, q in zip(oi.tolist(), pi.tolist())]
            for oi, pi in zip(order, p)
        ]

    def to_csv(self, path: PathLike, top_k: int | None = None) -> Path:
        """Write one row per image: ``path, predicted_class, probability`` then
        ``top1_class, top1_probability, ...`` for ``top_k`` classes; written atomically,
        and never over one of the images predicted. Returns the path written."""
        inputs = {f"image {p}": p for p in self.paths if p is not None}
        out = check_outputs({"path": path}, inputs)["path"]
        k = self._k(top_k)
        header = ["path", "predicted_class", "probability"]
        for j in range(1, k + 1):
            header += [f"top{j}_class", f"top{j}_probability"]
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(header)
        for p, top in zip(self.paths, self.top(k)):
            row = ["" if p is None else p, top[0][0], f"{top[0][1]:.6f}"]
            for name, q in top:
                row += [name, f"{q:.6f}"]
            writer.writerow(row)
        with atomic_open(out, "wb") as f:
            f.write(buf.getvalue().encode("utf-8"))
        return out

    def table(self, max_rows: int = TABLE_ROWS, more: str = "see to_csv()") -> str:
        """An aligned table of the first ``max_rows`` images: path, predicted class,
        probability and the top classes; a last line counts the rows left out."""
        k = self._k(None)
        head = ["path", "predicted", "probability"] + ([f"top {k}"] if k > 1 else [])
        rows = []
        for i, (p, top) in enumerate(zip(self.paths[:max_rows], self.top(k)[:max_rows])):
            row = [_short(p) if p is not None else f"[{i}]", top[0][0], f"{top[0][1]:.3f}"]
            if k > 1:
                row.append(", ".join(f"{n} {q:.3f}" for n, q in top))
            rows.append(row)
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        if len(self) > max_rows:
            lines.append(f"... {len(self) - max_rows} more, {more}")
        if self.skipped:
            lines.append(_skipped_line(self.skipped))
        return "\n".join(lines)

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"Predictions(n={len(self)}, classes={len(self.classes)}, skipped={len(self.skipped)}, "
            f"top_k={self.top_k})"
        )

    def _order(self) -> Tensor:
        # a stable sort: among equal probabilities the lower class index comes first, as argmax
        return self.probs.sort(dim=1, descending=True, stable=True).indices

    def _k(self, k: int | None) -> int:
        k = self.top_k if k is None else k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {k!r}")
        return min(k, len(self.classes))


def _short(path: str, width: int = 48) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3) :]


def _skipped_line(skipped: Sequence[tuple[str, str]]) -> str:
    shown = ", ".join(p for p, _ in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f"skipped {len(skipped)} unreadable file(s): {shown}{more}"


# --------------------------------------------------------------------------- inputs


def resolve_images(specs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files that ``specs`` (files, folders, glob patterns) name, in order, each once."""
    seen: set[Path] = set()
    out: list[Path] = []
    for spec in specs:
        for p in find_images(spec):
            key = _resolved(p)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def check_out_of_data(
    out: PathLike, specs: Sequence[str | os.PathLike[str]], option: str = "--out"
) -> None:
    """Refuse an output file inside a folder given as images to predict (a data folder)."""
    here = _resolved(Path(out))
    for spec in specs:
        folder = Path(os.fspath(spec)).expanduser()
        if folder.is_dir() and _resolved(folder) in here.parents:
            raise ConfigError(
                f"{option}={str(out)!r} lies inside the image folder {str(spec)!r}, which is input "
                f"data; pass {option} a path outside it"
            )


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "getbands")


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _sources(data: Any) -> Iterable[_Source]:
    """What to predict, as ``(path or None, load)`` pairs; paths are listed now (so a wrong
    path fails before any work), pixels are read only when the image's turn comes."""
    from torch.utils.data import Dataset

    if _is_pathlike(data) or (
        isinstance(data, (list, tuple)) and data and all(map(_is_pathlike, data))
    ):
        files = resolve_images([data] if _is_pathlike(data) else list(data))
        return [(str(p), partial(read_image, p)) for p in files]
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Dataset):
        return _dataset_sources(
            data[0], torch.as_tensor(data[1], dtype=torch.int64).flatten().tolist()
        )
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return _dataset_sources(data, range(len(data)))  # type: ignore[arg-type]
    if isinstance(data, (list, tuple)) and not data:
        raise DataError(
            "data is an empty list; pass image paths, a folder, a glob, images or a tensor"
        )
    if data is None or isinstance(data, (bytes, dict)):
        raise DataError(
            f"cannot predict on {type(data).__name__}; pass image paths, a folder, a glob "
            "pattern, a PIL image, a (C, H, W) tensor or an (N, C, H, W) batch"
        )
    if _is_pil(data) or isinstance(data, (Tensor, np.ndarray)):
        return list(_element(data))
    try:
        return _iterate(iter(data))
    except TypeError:
        raise DataError(
            f"cannot predict on {type(data).__name__}; pass image paths, a folder, a glob "
            "pattern, a PIL image, a (C, H, W) tensor or an (N, C, H, W) batch"
        ) from None


def _iterate(items: Iterator[Any]) -> Iterator[_Source]:
    for item in items:
        yield from _element(item)


def _element(item: Any) -> Iterator[_Source]:
    """One element of a list or one batch of a loader: a path, an image, a batch, or ``(x, y)``."""
    if _is_pathlike(item):
        for p in find_images(item):
            yield str(p), partial(read_image, p)
    elif _is_pil(item):
        yield None, partial(pil_to_tensor, item, "the PIL image")
    elif isinstance(item, (Tensor, np.ndarray)):
        x = torch.as_tensor(item)
        if x.dim() == 4:
            for i in range(x.shape[0]):
                yield None, partial(_const, x[i])
        elif x.dim() in (2, 3):
            yield None, partial(_const, x)
        else:
            raise DataError(
                f"a tensor of images must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}"
            )
    elif isinstance(item, (tuple, list)) and item:
        yield from _element(item[0])  # (images, labels): labels are ignored
    elif isinstance(item, dict) and any(k in item for k in _IMAGE_KEYS):
        yield from _element(next(item[k] for k in _IMAGE_KEYS if k in item))
    else:
        raise DataError(
            f"cannot read an image from a {type(item).__name__}; items must be paths, PIL "
            "images, tensors or (image, label) pairs"
        )


def _const(x: Any) -> Any:
    return x


def _dataset_sources(ds: Any, indices: Sequence[int]) -> list[_Source]:
    samples = getattr(ds, "samples", None)  # ImageFolder: (path, label) per item
    named = isinstance(samples, list) and len(samples) == len(ds)

    def load(i: int) -> Any:
        item = ds[i]
        if isinstance(item, dict):
            item = next((item[k] for k in _IMAGE_KEYS if k in item), None)
        elif isinstance(item, (tuple, list)):
            item = item[0]
        if item is None:
            raise DataError(f"item {i} of the dataset has no image (keys {', '.join(_IMAGE_KEYS)})")
        return pil_to_tensor(item, f"item {i}") if _is_pil(item) else item

    paths = [str(samples[i][0]) if named else None for i in indices]  # type: ignore[index]
    return [(p, partial(load, i)) for p, i in zip(paths, indices)]


def _check_image(x: Any, channels: int, name: str) -> Tensor:
    """``x`` as a (C, H, W) uint8 or [0, 1] float tensor the run's transform can take."""
    if not isinstance(x, (Tensor, np.ndarray)):
        raise DataError(
            f"{name} is a {type(x).__name__}, not an image; pass a PIL image or a tensor"
        )
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise DataError(f"{name} has shape {tuple(x.shape)}; an image is (C, H, W)")
    c = int(x.shape[0])
    if c not in (1, 3, channels) and not (c == 4 and channels == 3):
        hint = (
            "; it looks like (H, W, C): use x.permute(2, 0, 1)" if x.shape[-1] in (1, 3, 4) else ""
        )
        want = "1 (gray) or 3 (RGB)" if channels in (1, 3) else f"1 or {channels}"
        raise DataError(
            f"{name} has {c} channels (shape {tuple(x.shape)}) but the network takes {want}{hint}"
        )
    if x.dtype == torch.uint8:
        return cast(Tensor, x)
    if not x.is_floating_point():
        raise DataError(f"{name} has {x.dtype} pixels; pass uint8 (0..255) or floats in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise DataError(
            f"{name} has float pixels in [{lo:g}, {hi:g}]; pass floats in [0, 1] or uint8 "
            "0..255, not normalised (the run's own mean and std are applied)"
        )
    return cast(Tensor, x)


# --------------------------------------------------------------------------- predict


def predict(
    run_or_result: TrainResult | PathLike,
    data: Any,
    *,
    top_k: int = 3,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    on_error: str = "raise",
) -> Predictions:
    """Predict the class of every image in ``data`` with a trained run.

    ``run_or_result``: a run folder (the ``out`` of :func:`~smart_transfer.train`) or a
    :class:`~smart_transfer.TrainResult`. ``data``: an image file, a list of them, a folder
    (flat, or nested: every image below it), a glob pattern (``"photos/*.jpg"``, ``**``
    recursive), a PIL image, a ``(C, H, W)`` tensor or an ``(N, C, H, W)`` batch (uint8
    0..255 or float 0..1), or a dataset / loader of ``(image, label)`` whose labels are
    ignored. Each image goes through the run's evaluation transform on its own, so images of
    any size mix; then ``batch_size`` of them at a time through the network in eval mode.
    ``on_error='skip'`` leaves unreadable files out (listed in ``Predictions.skipped``);
    ``'raise'`` stops at the first one, naming it. ``device``: ``'auto'`` (CUDA, MPS, CPU)
    or a device name; the model is moved back where it was afterwards.
    """
    from .api import TrainResult

    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    dev = resolve_device(device, "device")
    sources = _sources(data)  # wrong paths fail here, before the model is loaded
    result = (
        run_or_result if isinstance(run_or_result, TrainResult) else TrainResult.load(run_or_result)
    )
    k = int(result.config["num_classes"])
    classes = [str(c) for c in (result.config.get("class_names") or range(k))]
    if len(classes) != k:
        classes = [str(i) for i in range(k)]
    tf = result.transform()
    if isinstance(tf, nn.Module):
        tf.eval()  # no augmentation, whatever mode it was handed over in
    probs, paths, skipped = _run(result.model, tf, sources, batch_size, dev, on_error)
    if not paths:
        raise DataError(
            f"none of the {len(skipped)} file(s) could be read; {_skipped_line(skipped)}"
        )
    return Predictions(classes=classes, probs=probs, paths=paths, skipped=skipped, top_k=top_k)


def _run(
    model: nn.Module,
    tf: Any,
    sources: Iterable[_Source],
    batch_size: int,
    dev: torch.device,
    on_error: str,
) -> tuple[Tensor, list[str | None], list[tuple[str, str]]]:
    """Load, check and transform each image, then batches of them through ``model`` on ``dev``."""
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else dev
    was_training = model.training
    channels = int(getattr(tf, "channels", 3))
    outs: list[Tensor] = []
    paths: list[str | None] = []
    skipped: list[tuple[str, str]] = []
    chunk: list[Tensor] = []
    model.to(dev).eval()
    try:
        with torch.no_grad():
            for n, (path, load) in enumerate(sources):
                try:
                    raw = load()
                except DataError as exc:
                    if path is None:
                        raise
                    if on_error == "raise":
                        raise UnreadableImage(path, str(exc)) from None
                    skipped.append((path, str(exc)))
                    continue
                x = _check_image(raw, channels, f"image {path}" if path else f"image {n}")
                chunk.append(tf(x[None].to(dev)))
                paths.append(path)
                if len(chunk) == batch_size:
                    outs.append(_forward(model, chunk))
                    chunk = []
            if chunk:
                outs.append(_forward(model, chunk))
    finally:
        model.to(home)
        model.train(was_training)
    if not outs:
        if not skipped:
            raise DataError("no images to predict; pass image paths, a folder, a glob or a tensor")
        return torch.zeros(0, 0), paths, skipped
    return torch.cat(outs).softmax(1), paths, skipped


def _forward(model: nn.Module, xs: list[Tensor]) -> Tensor:
    """Logits (float32, CPU) of transformed (1, C, H, W) images, those of one shape batched."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(tuple(x.shape), []).append(i)
    rows: list[Tensor] = [torch.empty(0)] * len(xs)
    for idx in groups.values():
        logits = model(torch.cat([xs[i] for i in idx])).float().cpu()
        for j, i in enumerate(idx):
            rows[i] = logits[j]
    return torch.stack(rows)


__all__ = ["Predictions", "UnreadableImage", "check_out_of_data", "predict", "resolve_images"]
