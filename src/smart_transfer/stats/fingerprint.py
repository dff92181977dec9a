"""Which model a profile came from: its architecture and a fingerprint of its weights.

Profiles of D_pre and D_new are only comparable when both were taken from the same network
with the same weights. Each profile records ``meta["fingerprint"]`` (see
:func:`model_fingerprint`), and :func:`check_same_model` refuses two profiles whose records
differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import IncompatibleError


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """``{"class", "architecture", "weights"}`` of ``model``.

    ``architecture`` hashes the class name and every parameter's name, shape and dtype;
    ``weights`` hashes the parameter values too (their exact bytes), so a retrained or freshly
    initialised copy of the same network gets the same architecture and other weights.
    Buffers (BatchNorm running statistics) are not part of it.
    """
    arch = hashlib.blake2b(digest_size=8)
    weights = hashlib.blake2b(digest_size=8)
    arch.update(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            arch.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
            data = p.detach().to("cpu").contiguous().reshape(-1)
            weights.update(data.view(torch.uint8).numpy().tobytes())
    weights.update(arch.digest())
    return {
        "class": type(model).__name__,
        "architecture": arch.hexdigest(),
        "weights": weights.hexdigest(),
    }


def check_same_model(meta_pre: Mapping[str, Any], meta_new: Mapping[str, Any]) -> None:
    """Raise :class:`IncompatibleError` when two profiles' fingerprints name different models.

    Profiles without a fingerprint (made by hand or by an older version) are not checked.
    """
    a, b = meta_pre.get("fingerprint"), meta_new.get("fingerprint")
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return
    fix = "profile D_pre and D_new with the same model (or pass check_model=False to compare anyway)"
    if a.get("architecture") != b.get("architecture"):
        raise IncompatibleError(
            f"the profiles come from different networks (D_pre: {a.get('class')!r}, D_new: "
            f"{b.get('class')!r}, other layers or shapes); {fix}."
        )
    if a.get("weights") != b.get("weights"):
        raise IncompatibleError(
            f"the profiles come from two {a.get('class')!r} networks with different weights "
            f"(fingerprints {a.get('weights')} and {b.get('weights')}), e.g. two randomly "
            f"initialised copies or a pretrained and a fine-tuned one; {fix}."
        )
