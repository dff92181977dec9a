"""The misclassified test images the report shows, picked and saved when a run is evaluated.

Why at evaluation: only then are the test images and the model's predictions at hand; the
report reads them back from ``test_samples.safetensors`` (tensors ``misclassified_images``,
``misclassified_labels``, ``misclassified_predictions``) without the data or the model.
Importing this module does not import matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_MISCLASSIFIED = 12  # images kept for the gallery
THUMBNAIL = 96  # side of the square the images are brought to when their sizes differ


def pick_misclassified(labels: Tensor, pred: Tensor, limit: int = MAX_MISCLASSIFIED) -> list[int]:
    """Positions of up to ``limit`` wrong predictions, taken in turn from each true class (so
    that one badly learned class does not fill the gallery), in test order within a class."""
    wrong = (pred != labels).nonzero().flatten().tolist()
    by_class: dict[int, list[int]] = {}
    for i in wrong:
        by_class.setdefault(int(labels[i]), []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    picks: list[int] = []
    while len(picks) < limit and any(queues):
        for q in queues:
            if q and len(picks) < limit:
                picks.append(q.pop(0))
    return picks


def thumbnails(images: list[Tensor], side: int = THUMBNAIL) -> Tensor:
    """Raw images as one float ``(N, C, H, W)`` batch in [0, 1]; images of different sizes or
    channel counts become RGB squares of ``side`` (short side resized, centre cropped)."""
    xs = [im.float() / 255.0 if im.dtype == torch.uint8 else im.float() for im in images]
    xs = [x.unsqueeze(0) if x.dim() == 2 else x for x in xs]
    if len({tuple(x.shape) for x in xs}) == 1:
        return torch.stack(xs).clamp(0, 1)
    out = []
    for x in xs:
        x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
        h, w = x.shape[-2:]
        scale = side / min(h, w)
        nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        top, left = (nh - side) // 2, (nw - side) // 2
        out.append(x[:, top : top + side, left : left + side])
    return torch.stack(out).clamp(0, 1)


def save_misclassified(path: Path, ds: Any, idx: Tensor, labels: Tensor, pred: Tensor) -> None:
    """Add the gallery's images, true classes and predictions to ``path`` (created if absent)."""
    from ..training import checkpoint as ckpt

    labels, pred = labels.cpu(), pred.cpu()
    picks = pick_misclassified(labels, pred)
    tensors = ckpt.load_weights(path) if path.is_file() else {}
    tensors = {k: v for k, v in tensors.items() if not k.startswith("misclassified_")}
    if picks:
        images = [torch.as_tensor(ds[int(idx[i])][0]) for i in picks]
        tensors["misclassified_images"] = thumbnails(images).contiguous()
        tensors["misclassified_labels"] = labels[picks].to(torch.int64).contiguous()
        tensors["misclassified_predictions"] = pred[picks].to(torch.int64).contiguous()
    else:  # none wrong: an empty gallery, which the report tells apart from "not recorded"
        tensors["misclassified_images"] = torch.zeros(0, 1, 1, 1)
        tensors["misclassified_labels"] = torch.zeros(0, dtype=torch.int64)
        tensors["misclassified_predictions"] = torch.zeros(0, dtype=torch.int64)
    ckpt.save_weights(path, tensors)
