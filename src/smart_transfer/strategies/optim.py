"""Optimizers and parameter groups shared by the fine-tuning strategies."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models.heads import find_head
from .base import Recipe


def param_groups(
    model: nn.Module, recipe: Recipe, head_lr_mult: float | None = None, layer_decay: float | None = None
) -> list[dict]:
    """Trainable parameters in groups: the head at ``lr * head_lr_mult``; the rest at ``lr``,
    or with ``layer_decay`` d, the i-th of L parameter tensors (input to output) at
    ``lr * d ** (L - i)`` (layer-wise learning-rate decay)."""
    head_name, _ = find_head(model)
    mult = recipe.head_lr_mult if head_lr_mult is None else head_lr_mult
    head: list[nn.Parameter] = []
    body: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (head if name == head_name or name.startswith(head_name + ".") else body).append(p)
    groups: list[dict] = []
    if layer_decay is None:
        if body:
            groups.append({"params": body, "lr": recipe.lr})
    else:
        if not 0 < layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
        n = len(body)
        groups += [{"params": [p], "lr": recipe.lr * layer_decay ** (n - i)} for i, p in enumerate(body)]
    if head:
        groups.append({"params": head, "lr": recipe.lr * mult})
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    return groups


def make_optimizer(groups: list[dict], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
        )
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}; use 'adamw' or 'sgd'")
