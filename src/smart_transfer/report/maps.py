"""What the report computes with a model: kernel activation maps and Grad-CAM.

Both leave the model as they found it: every module's train/eval flag, its parameters'
``.grad`` and its hooks (the forward hook is removed on exit, also after an error).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, MissingDependencyError
from ..stats.hooks import eval_no_grad, forward_hooks


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def pick_layers(names: Sequence[str], k: int = 3) -> list[str]:
    """``k`` layers spread over the depth: first, last and evenly between (in order)."""
    if len(names) <= k:
        return list(names)
    idx = sorted({round(i * (len(names) - 1) / (k - 1)) for i in range(k)})
    return [names[i] for i in idx]


def extreme_kernels(scores: Tensor, *variances: Tensor | None) -> tuple[int, int]:
    """(most similar, least similar) channel of one layer's scores (NaN scores ignored).

    Given per-channel ``variances`` (of D_pre, D_new), channels that are constant on either
    side are passed over when others exist: a dead kernel is trivially "identical" on both
    data sets and says nothing about the layer.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ConfigError("a layer without channels has no kernels to show")
    ok = torch.isfinite(s)
    alive = ok.clone()
    for v in variances:
        if v is not None:
            v = torch.as_tensor(v, dtype=torch.float64).flatten()
            top = float(v.nan_to_num(0.0).max()) if v.numel() else 0.0
            alive &= v > 1e-6 * top
    if bool(alive.any()):
        ok = alive
    hi = torch.where(ok, s, torch.tensor(-math.inf, dtype=s.dtype))
    lo = torch.where(ok, s, torch.tensor(math.inf, dtype=s.dtype))
    return int(hi.argmax()), int(lo.argmin())


def resize_images(images: Tensor, size: int | Sequence[int] | None) -> Tensor:
    """Images ``(N, C, H, W)`` in [0, 1] at the size the network sees (for display)."""
    if size is None:
        return images
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(images.shape[-2:]) == hw:
        return images
    return F.interpolate(images, size=hw, mode="bilinear", align_corners=False, antialias=True)


def kernel_maps(
    model: nn.Module,
    module_name: str,
    inputs: Tensor,
    channels: Sequence[int],
) -> dict[int, Tensor]:
    """Activations ``(N, h, w)`` of ``channels`` of the output of ``module_name`` on ``inputs``.

    ``inputs`` are already transformed for the network. The model runs in eval mode without
    gradients; a forward hook copies the module's output.
    """
    modules = dict(model.named_modules())
    if module_name not in modules:
        raise ConfigError(
            f"{type(model).__name__} has no module {module_name!r}; the profiles were made "
            "for another model"
        )
    seen: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor):  # copied: a following in-place activation would change it
            seen.append(out.detach().to("cpu", torch.float32).clone())

    with eval_no_grad(model), forward_hooks([(modules[module_name], hook)]):
        model(inputs.to(model_device(model)))
    if not seen or seen[0].dim() != 4:
        shape = tuple(seen[0].shape) if seen else None
        raise ConfigError(
            f"module {module_name!r} gave output of shape {shape}; activation maps need a "
            "conv output (N, C, H, W)"
        )
    out = seen[0]
    return {int(c): out[:, int(c)] for c in channels}


def last_conv(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The last ``Conv2d`` registered in ``model`` (Grad-CAM's usual target layer)."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            found = (name, m)
    return found


@contextmanager
def _unchanged(model: nn.Module) -> Iterator[None]:
    """Restore train/eval flags and every parameter's ``.grad`` on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, g in grads:
            p.grad = g


def grad_cam_maps(
    model: nn.Module, inputs: Tensor, target_layer: nn.Module | None = None
) -> tuple[Tensor, Tensor]:
    """Grad-CAM of the predicted class: (maps ``(N, H, W)`` in [0, 1], predictions ``(N,)``).

    Uses the ``grad-cam`` package (``pip install "smart-transfer[cam]"``); the target layer
    defaults to the model's last conv. Gradients flow to the input too, so a model whose
    early layers are frozen still gets maps.
    """
    try:
        from pytorch_grad_cam import GradCAM  # type: ignore[import-untyped, unused-ignore]
        from pytorch_grad_cam.utils.model_targets import (  # type: ignore[import-untyped, unused-ignore]
            ClassifierOutputTarget,
        )
    except ImportError as e:
        raise MissingDependencyError(
            'Grad-CAM needs the grad-cam package; install it with pip install "smart-transfer[cam]"'
        ) from e
    if target_layer is None:
        found = last_conv(model)
        if found is None:
            raise ConfigError(f"{type(model).__name__} has no Conv2d for Grad-CAM to look at")
        target_layer = found[1]
    x = inputs.to(model_device(model))
    with _unchanged(model):
        model.eval()
        with torch.no_grad():
            pred = model(x).argmax(dim=1).cpu()
        # not GradCAM's context manager: its __exit__ prints and swallows IndexError
        cam = GradCAM(model=model, target_layers=[target_layer])
        cam.compute_input_gradient = True  # GradCAM's constructor does not pass it through
        try:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in pred])
        finally:
            cam.activations_and_grads.release()
    return torch.as_tensor(maps, dtype=torch.float32), pred
