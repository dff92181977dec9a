"""A Gaussian profile of the pretraining data, read from BatchNorm running statistics.

A BatchNorm that directly follows a conv/linear layer has tracked the mean and variance of
that layer's output channels over the pretraining data (``running_mean`` / ``running_var``).
That is a per-channel Gaussian profile of D_pre at the same point ``st.profile`` measures
by default (the layer's output), without any source images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ProfileError
from ..layers import following_norms, layer_param_map, num_out_channels, select_layers
from .fingerprint import model_fingerprint
from .profile import ActivationProfile, LayerProfile
from .profiler import layer_kind


def profile_from_batchnorm(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    *,
    types: Sequence[type[nn.Module]] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> ActivationProfile:
    """Profile (``source="batchnorm"``) of every selected layer that feeds a BatchNorm.

    Each layer gets ``mean = running_mean`` and ``var = running_var`` (float64) of its
    BatchNorm, keyed by the layer's own name as :func:`profile` does, and ``count = NaN``
    (the number of pretraining values is unknown); other statistics are None. Note that
    PyTorch tracks the *unbiased* variance of each training batch, which for the batch sizes
    used in pretraining equals the population variance to a few parts in a million.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = select_layers(model, layers, types, exclude)
    modules = dict(model.named_modules())
    norms = following_norms(model)
    chosen = []
    for name in names:
        bn = modules.get(norms.get(name, ""))
        if (
            bn is not None
            and getattr(bn, "running_mean", None) is not None
            and getattr(bn, "running_var", None) is not None
        ):
            chosen.append((name, norms[name], bn))
    if not chosen:
        what = (
            "selected layers"
            if layers is not None or types is not None or exclude is not None
            else "layers"
        )
        raise ConfigError(
            f"no {what} of {type(model).__name__} feed a BatchNorm with running statistics, so "
            "there is no source profile to read; pass source images to st.profile(model, loader) "
            "instead"
        )
    for _, bn_name, bn in chosen:
        for buf in ("running_mean", "running_var"):
            value = getattr(bn, buf)
            bad = ~torch.isfinite(value)
            if buf == "running_var":  # a variance below zero is as damaged as a NaN
                bad |= value < 0
            if bool(bad.any()):
                ch = int(bad.nonzero()[0, 0])
                raise ProfileError(
                    f"the BatchNorm buffer {bn_name}.{buf} holds {float(value[ch])} at channel "
                    f"{ch} ({int(bad.sum())} bad value(s)); the pretrained statistics are damaged, "
                    "so reload the weights or profile source images with st.profile(model, loader)"
                )
    params = layer_param_map(model, [c[0] for c in chosen])
    out: dict[str, LayerProfile] = {}
    tracked = {}
    for name, _bn_name, bn in chosen:
        c = num_out_channels(modules[name])
        out[name] = LayerProfile(
            name=name,
            kind=layer_kind(modules[name]),
            num_channels=c,
            params=params[name],
            count=torch.full((c,), float("nan"), dtype=torch.float64),
            mean=bn.running_mean.detach().to("cpu", torch.float64).clone(),
            var=bn.running_var.detach().to("cpu", torch.float64).clone(),
        )
        nbt = getattr(bn, "num_batches_tracked", None)
        tracked[name] = None if nbt is None else int(nbt)
    meta = {
        "point": "output",
        "norms": {name: bn_name for name, bn_name, _ in chosen},
        "num_batches_tracked": tracked,
        "model": type(model).__name__,
        "fingerprint": model_fingerprint(model),
    }
    return ActivationProfile(layers=out, source="batchnorm", num_samples=0, meta=meta)
