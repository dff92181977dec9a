"""Gradient-descent strategies: head only, first k layers frozen, full fine-tuning, LP-FT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..freeze import FreezePlan, apply_plan
from ..layers import layer_param_map, select_layers
from ..models.heads import find_head
from ..training import channels_last_batch
from .base import Context, Outcome
from .optim import make_optimizer, param_groups


def train_model(
    ctx: Context, model: nn.Module, tag: str, plan: FreezePlan | None = None,
    head_lr_mult: float | None = None, layer_decay: float | None = None,
    bn_stats: str = "freeze", train_mode: Any = None, bn_prior: float = 0.0,
) -> Outcome:
    """Fine-tune ``model`` (with ``plan`` applied, if any) with the context's recipe.

    ``bn_stats``: ``"freeze"`` / ``"update"`` are :func:`apply_plan`'s policies for frozen
    channels (BatchNorm layers otherwise train as usual); ``"adapt"`` re-estimates every
    BatchNorm's running statistics on the training images first (AdaBN) and then keeps all
    BatchNorm layers in eval mode, so training and evaluation normalise alike; ``bn_prior``
    weights the source statistics in that estimate (see :func:`adapt_batchnorm`)."""
    handle = None
    if bn_stats == "adapt":
        adapt_batchnorm(model, ctx, prior=bn_prior)
        train_mode = _bn_eval_mode(train_mode)
    if plan is not None:
        handle = apply_plan(model, plan, bn_stats="update" if bn_stats == "adapt" else bn_stats)
    opt = make_optimizer(param_groups(model, ctx.recipe, head_lr_mult, layer_decay), ctx.recipe)
    if handle is not None:
        handle.attach(opt)
    try:
        result = ctx.fit(model, opt, tag, train_mode=train_mode)
    finally:
        if handle is not None:
            handle.remove()
    return Outcome(model=model, val_accuracy=result.best_val_accuracy, fit=result, plan=plan, log_tag=tag)


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, ctx: Context, prior: float = 0.0) -> None:
    """Replace every BatchNorm's running mean/var by those of the training images (AdaBN;
    PyTorch's cumulative average weights every batch alike).

    ``prior`` > 0 counts the source statistics as that many images (Schneider et al., 2020,
    "Improving robustness against common corruptions by covariate shift adaptation"): with
    ``n`` training images, mean and variance become ``w * source + (1 - w) * new`` with
    ``w = prior / (prior + n)``. From few images, plain AdaBN can shrink a channel's variance
    to almost nothing (a channel the new images barely excite); its eval-mode BatchNorm then
    multiplies every change of that channel's weights by ``1 / std`` and fine-tuning them
    diverges. The prior keeps every variance at least ``w`` times the source's."""
    if prior < 0:
        raise ConfigError(f"bn_prior must be >= 0 (the weight of the source statistics in images), got {prior!r}")
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    source = [None if b is None else (b[0].clone(), b[1].clone()) for b in map(_buffers, bns)]
    saved = [(m.momentum, m.training) for m in bns]
    was = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
        m.train()
    n = 0
    try:
        for x, _ in ctx.train_eval:
            model(channels_last_batch(ctx.eval_tf(x.to(ctx.device))))
            n += len(x)
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was)
    if prior > 0 and n > 0:
        w = prior / (prior + n)
        for m, src in zip(bns, source):
            now = _buffers(m)
            if src is not None and now is not None:
                now[0].mul_(1 - w).add_(src[0], alpha=w)
                now[1].mul_(1 - w).add_(src[1], alpha=w)


def _buffers(m: nn.Module) -> tuple[Tensor, Tensor] | None:
    """A BatchNorm's running mean and variance (the buffers themselves), or None without them."""
    mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    return (mean, var) if isinstance(mean, Tensor) and isinstance(var, Tensor) else None


def _bn_eval_mode(inner: Any) -> Any:
    def mode(m: nn.Module) -> None:
        if inner is not None:
            inner(m)
        else:
            m.train()
        for b in m.modules():
            if isinstance(b, _BN):
                b.eval()

    return mode


def run_head_only(ctx: Context) -> Outcome:
    """A new head trained by gradient descent; the backbone frozen, BatchNorm in eval mode."""
    model = ctx.fresh_model("head-only")
    _, head = find_head(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)

    def mode(m: nn.Module) -> None:
        m.eval()
        head.train()

    out = train_model(ctx, model, "head-only", train_mode=mode)
    out.extra["head_only"] = True
    return out


def layer_plan(model: nn.Module, layers: Sequence[str], meta: dict[str, Any]) -> FreezePlan:
    """A plan freezing whole layers (their weights, biases and following BatchNorm)."""
    pmap = layer_param_map(model, layers)
    masks = {p: torch.ones(shape[0], dtype=torch.bool) for params in pmap.values() for p, shape in params.items()}
    return FreezePlan.from_masks(model, masks, layers={k: list(v) for k, v in pmap.items()}, meta=meta)


def run_first_k_frozen(ctx: Context, k: int | None = None, fractions: Sequence[float] = (0.25, 0.5, 0.75)) -> Outcome:
    """Freeze the first ``k`` conv/linear layers (and their BatchNorm); ``k=None`` picks it on
    validation among ``fractions`` of the layers."""
    probe = ctx.make_model()
    head_name, _ = find_head(probe)
    names = [n for n in select_layers(probe) if n != head_name]
    if k is not None:
        if not isinstance(k, int) or not 0 <= k <= len(names):
            raise ConfigError(f"k must be an integer in [0, {len(names)}] for this backbone, got {k!r}")
        ks = [k]
    else:
        ks = sorted({max(1, round(f * len(names))) for f in fractions})
    best: Outcome | None = None
    tried = []
    for kk in ks:
        tag = f"first-k-frozen/k={kk}"
        model = ctx.fresh_model(tag)
        plan = layer_plan(model, names[:kk], {"selection": {"rule": "first_k", "k": kk}}) if kk else None
        out = train_model(ctx, model, tag, plan=plan)
        tried.append({"k": kk, "val_accuracy": out.val_accuracy})
        if best is None or out.val_accuracy > best.val_accuracy:
            best = out
            best.chosen = {"k": kk, "layers": len(names)}
    assert best is not None
    best.tried = tried
    return best


def run_full_finetune(ctx: Context, head_lr_mult: float | None = None, layer_decay: float | None = None) -> Outcome:
    """Everything trains: the head at ``lr * head_lr_mult`` (10 by default), optional
    layer-wise learning-rate decay for the rest."""
    model = ctx.fresh_model("full-finetune")
    out = train_model(ctx, model, "full-finetune", head_lr_mult=head_lr_mult, layer_decay=layer_decay)
    out.chosen = {"head_lr_mult": head_lr_mult or ctx.recipe.head_lr_mult, "layer_decay": layer_decay}
    return out


def run_lp_ft(ctx: Context, head_lr_mult: float = 1.0, C: Any = None) -> Outcome:
    """A linear probe first (C on validation), then everything fine-tuned from the probe's head
    (at the pretrained layers' learning rate by default, so the good head is not disturbed)."""
    from .probe import C_GRID, run_linear_probe

    probe = run_linear_probe(ctx, C=C if C is not None else C_GRID, refit=False)  # validation judges the fine-tuning
    out = train_model(ctx, probe.model, "lp-ft", head_lr_mult=head_lr_mult)
    out.chosen = {"probe_C": probe.chosen["C"], "probe_val_accuracy": probe.val_accuracy, "head_lr_mult": head_lr_mult}
    return out
