"""Optimizers and parameter groups shared by the fine-tuning strategies.

Two conventions of timm and fastai: weight decay never applies to biases and normalisation
layers (decaying a BatchNorm scale towards 0 switches a channel off instead of regularising it);
and layer-wise learning-rate decay works on *blocks* (timm's ``param_groups_layer_decay``), not
on single tensors: the stem is block 0, every residual/VGG block one more, the head block
``n_blocks``, and block ``b`` learns at ``lr * decay ** (n_blocks - b)``. Per tensor, the
149 tensors of EfficientNet-Lite0 gave its first layers ``0.75 ** 149 = 1e-18`` of the rate.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ConfigError
from ..models.heads import head_root
from .base import Recipe

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_INDEX = re.compile(
    r"^(.*?\.\d+)(\.|$)"
)  # the name up to its first numeric part: "_blocks.3", "features.4"


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: every bias, every parameter of a
    normalisation layer, every other 1-D (or scalar) parameter."""
    norm_params = {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in model.named_modules()
        if isinstance(mod, _NORMS)
        for p_name, _ in mod.named_parameters(recurse=False)
    }
    return {
        name
        for name, p in model.named_parameters()
        if name in norm_params or p.ndim <= 1 or name.endswith(".bias")
    }


def block_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """``({parameter name: block id}, n_blocks)``: the blocks from the input to the output.

    A block is the name up to its first numeric part (``_blocks.3``, ``features.4``,
    ``layer1.0``) or, for names without one, the top-level module (``_conv_stem``); a
    normalisation layer joins the block before it (a conv and its BatchNorm are one block).
    The head (``head_root``: all of an MLP head) is block ``n_blocks``, after every other block."""
    head_name, _ = head_root(model)
    norms = {name for name, m in model.named_modules() if isinstance(m, _NORMS)}
    ids: dict[str, int] = {}
    keys: dict[str, int] = {}
    current = -1
    for name, _ in model.named_parameters():
        if name == head_name or name.startswith(head_name + "."):
            continue
        owner = name.rpartition(".")[0]
        if owner in norms and current >= 0:
            ids[name] = current
            continue
        m = _INDEX.match(name)
        key = m.group(1) if m else name.split(".")[0]
        if key not in keys:
            keys[key] = current = len(keys)
        ids[name] = keys[key]
    n_blocks = len(keys)
    for name, _ in model.named_parameters():
        if name == head_name or name.startswith(head_name + "."):
            ids[name] = n_blocks
    return ids, n_blocks


def param_groups(
    model: nn.Module,
    recipe: Recipe,
    head_lr_mult: float | None = None,
    layer_decay: float | None = None,
    lr: float | None = None,
) -> list[dict]:
    """Trainable parameters in optimizer groups, each with its ``lr`` and ``weight_decay``.

    The head learns at ``lr * head_lr_mult``; the rest at ``lr`` or, with ``layer_decay`` d,
    block ``b`` of ``n_blocks`` at ``lr * d ** (n_blocks - b)`` (see :func:`block_ids`; the
    head's own factor stays 1, times ``head_lr_mult``). Biases and normalisation parameters
    get weight decay 0, the rest the recipe's. ``lr`` overrides the recipe's rate (a grid
    candidate). Every group records its ``block`` and ``lr_scale``."""
    base = recipe.lr if lr is None else lr
    mult = recipe.head_lr_mult if head_lr_mult is None else head_lr_mult
    if layer_decay is not None and not (
        isinstance(layer_decay, (int, float)) and 0 < layer_decay <= 1
    ):
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    ids, n_blocks = block_ids(model)
    skip = no_weight_decay(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        block = ids[name]
        is_head = block == n_blocks
        if layer_decay is None:
            block = n_blocks if is_head else 0  # one group for the body, one for the head
            scale = 1.0
        else:
            scale = float(layer_decay) ** (n_blocks - block)
        decay = name not in skip
        key = (block, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": base * scale * (mult if is_head else 1.0),
                "weight_decay": recipe.weight_decay if decay else 0.0,
                "block": block,
                "lr_scale": scale,
                "names": [],
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    return [groups[k] for k in sorted(groups)]


def make_optimizer(groups: list[dict], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
        )
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}; use 'adamw' or 'sgd'")
