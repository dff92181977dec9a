"""Which model a profile came from: its architecture and a fingerprint of its weights.

Profiles of D_pre and D_new are only comparable when both were taken from the same network
with the same weights. Each profile records ``meta["fingerprint"]`` (see
:func:`model_fingerprint`), and :func:`check_same_model` refuses two profiles whose records
differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from ..errors import IncompatibleError

# How ``weights`` is computed; fingerprints made another way (older versions: one blake2b over
# every tensor's bytes in turn) are not compared with it (see check_same_model).
WEIGHTS_HASH = "blake2b-per-tensor"


def _tensor_digest(p: torch.Tensor) -> bytes:
    data = p.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.blake2b(data.view(torch.uint8).numpy().data, digest_size=16).digest()


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """``{"class", "architecture", "weights", "weights_hash"}`` of ``model``.

    ``architecture`` hashes the class name and every parameter's name, shape and dtype;
    ``weights`` hashes the parameter values too (their exact bytes), so a retrained or freshly
    initialised copy of the same network gets the same architecture and other weights.
    Buffers (BatchNorm running statistics) are not part of it. Each tensor is hashed on its
    own, on as many threads as torch uses (hashlib releases the GIL), and ``weights`` hashes
    those digests in order: for ResNet-50's 100 MB, half the time of one hash over all (2
    threads).
    """
    arch = hashlib.blake2b(digest_size=8)
    arch.update(type(model).__name__.encode())
    params = []
    for name, p in model.named_parameters():
        arch.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        params.append(p)
    threads = max(1, min(torch.get_num_threads(), len(params)))
    with torch.no_grad():
        if threads == 1:
            digests = [_tensor_digest(p) for p in params]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                digests = list(pool.map(_tensor_digest, params))
    weights = hashlib.blake2b(b"".join(digests) + arch.digest(), digest_size=8)
    return {
        "class": type(model).__name__,
        "architecture": arch.hexdigest(),
        "weights": weights.hexdigest(),
        "weights_hash": WEIGHTS_HASH,
    }


def check_same_model(meta_pre: Mapping[str, Any], meta_new: Mapping[str, Any]) -> None:
    """Raise :class:`IncompatibleError` when two profiles' fingerprints name different models.

    Profiles without a fingerprint (made by hand or by an older version) are not checked, and
    the weights of two fingerprints made in different ways (``weights_hash``) are not compared.
    """
    a, b = meta_pre.get("fingerprint"), meta_new.get("fingerprint")
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return
    fix = (
        "profile D_pre and D_new with the same model (or pass check_model=False to compare anyway)"
    )
    if a.get("architecture") != b.get("architecture"):
        raise IncompatibleError(
            f"the profiles come from different networks (D_pre: {a.get('class')!r}, D_new: "
            f"{b.get('class')!r}, other layers or shapes); {fix}."
        )
    if a.get("weights_hash") != b.get("weights_hash"):
        return  # weights hashed two ways (a profile from an older version): not comparable
    if a.get("weights") != b.get("weights"):
        raise IncompatibleError(
            f"the profiles come from two {a.get('class')!r} networks with different weights "
            f"(fingerprints {a.get('weights')} and {b.get('weights')}), e.g. two randomly "
            f"initialised copies or a pretrained and a fine-tuned one; {fix}."
        )
