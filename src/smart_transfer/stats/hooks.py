"""Context managers that let profiling look at a model without changing it.

``forward_hooks`` registers forward hooks and removes every one of them on exit, also when the
loader or the forward raises, so no hook keeps firing during later training.
``eval_no_grad`` puts the model in eval mode without gradients and restores each module's
own train/eval flag afterwards (a model may have been deliberately mixed, e.g. frozen
BatchNorm layers in eval inside a training model).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

HookFn = Callable[[nn.Module, Any, Any], Any]


@contextmanager
def forward_hooks(
    hooks: Mapping[nn.Module, HookFn] | list[tuple[nn.Module, HookFn]],
) -> Iterator[list[RemovableHandle]]:
    """Register ``module.register_forward_hook(fn)`` for each pair; remove them all on exit."""
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    handles: list[RemovableHandle] = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield handles
    finally:
        for h in handles:
            h.remove()


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` under ``torch.no_grad()``; every module's previous mode comes back on exit.

    Eval mode is what keeps BatchNorm from updating its running statistics while profiling.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes:
            m.training = training
