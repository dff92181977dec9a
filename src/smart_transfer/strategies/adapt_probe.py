"""``smart-probe``: re-estimate the BatchNorm statistics of the shifted channels only, then a
linear probe. ``random-probe`` is its control.

No weight moves. The profiles say which channels already behave alike on D_pre and D_new
(the plan's *frozen* channels); those keep their source running statistics. Every other
channel gets the statistics of the new data (AdaBN, restricted to the shifted channels), so
that what follows it sees normalised inputs again. Then logistic regression on the pooled
features, exactly as ``linear-probe``. With ``quantile=1`` every channel keeps its source
statistics (the plain linear probe); with ``quantile=0`` every channel is re-estimated
(AdaBN on the whole network, then a probe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..freeze import FreezePlan, plan_freeze
from ..layers import following_norms
from ..models.heads import PENULTIMATE
from .base import Context, Outcome
from .finetune import adapt_batchnorm
from .probe import C_GRID, cv_design, fit_fixed, fit_logistic, layer_features, probe_model
from .selection import KeepBest
from .smart import similarity

PROBE_QUANTILES = (0.0, 0.5, 1.0)


def restore_source_statistics(
    model: nn.Module,
    source: dict[str, tuple[torch.Tensor, torch.Tensor]],
    plan: FreezePlan,
    norms: dict[str, str] | None = None,
) -> int:
    """Put back the source running mean/var of the plan's frozen channels; returns how many.

    ``norms``: :func:`following_norms` of the model, when the caller has it already."""
    norms = following_norms(model) if norms is None else norms
    modules = dict(model.named_modules())
    restored = 0
    for layer in plan.layers:
        bn_name = norms.get(layer)
        if bn_name is None or bn_name not in source:
            continue
        keep = plan.layer_mask(layer).to(modules[bn_name].running_mean.device)  # type: ignore[union-attr]
        mean, var = source[bn_name]
        bn = modules[bn_name]
        with torch.no_grad():
            bn.running_mean[keep] = mean.to(bn.running_mean)[keep]  # type: ignore[index, union-attr]
            bn.running_var[keep] = var.to(bn.running_var)[keep]  # type: ignore[index, union-attr]
        restored += int(keep.sum())
    return restored


def _bn_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        n: (m.running_mean.detach().clone(), m.running_var.detach().clone())  # type: ignore[union-attr]
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    }


def run_adapt_probe(
    ctx: Context,
    measure: str = "gaussian_kl",
    quantile: float | None = None,
    select: str = "val",
    quantiles: Sequence[float] = PROBE_QUANTILES,
    layer: str = PENULTIMATE,
    C: Sequence[float] | float = C_GRID,
    random: bool = False,
    mask_seed: int | None = None,
    refit: bool = True,
) -> Outcome:
    """Re-estimate the BatchNorm statistics of the channels the plan leaves trainable, probe.

    ``quantile``: keep the source statistics of this fraction of the most similar channels per
    layer; without it, ``select="val"`` tries every value of ``quantiles`` and keeps the best on
    validation. ``random=True``: the same count per layer, channels drawn at random (the control).
    ``refit``: the chosen probe fitted again on the training and validation samples.
    """
    if select not in ("fixed", "val"):
        raise ConfigError(f"select must be 'fixed' or 'val', got {select!r}")
    if quantile is not None:
        qs = [float(quantile)]
    elif select == "fixed":
        qs = [0.5]
    else:
        qs = [float(q) for q in quantiles]
    if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
        raise ConfigError(f"quantiles must lie in [0, 1], got {qs}")
    grid = [C] if isinstance(C, (int, float)) else list(C)
    name = "random-probe" if random else "smart-probe"
    # every fresh model starts from the same pretrained weights: one look at them serves all
    pretrained = ctx.make_model()
    source = _bn_statistics(pretrained)
    if not source:  # before any profiling
        raise ConfigError(
            f"{name} re-estimates BatchNorm statistics, and the model has no BatchNorm layer; "
            "use linear-probe"
        )
    norms = following_norms(pretrained)
    modules = dict(pretrained.named_modules())
    total = sum(int(modules[bn].running_mean.numel()) for bn in set(norms.values()))  # type: ignore[union-attr]
    del pretrained, modules
    sim = similarity(ctx, measure)
    keep: KeepBest[tuple[nn.Module, dict[str, Any], Any]] = KeepBest(what="quantiles")
    design: dict[str, Any] = {}
    tried = []
    for q in qs:
        plan = plan_freeze(sim, scope="kernel", quantile=q)
        if random:
            plan = plan.random_like(ctx.seed if mask_seed is None else int(mask_seed))
        model = ctx.fresh_model(f"{name}/quantile={q}")
        adapt_batchnorm(model, ctx)
        kept = restore_source_statistics(model, source, plan, norms)
        ftr, ytr = layer_features(model, [layer], ctx.train_eval, ctx.eval_tf)
        fva, yva = layer_features(model, [layer], ctx.val, ctx.eval_tf)
        linear, c, acc, _ = fit_logistic(ftr[layer], ytr, fva[layer], yva, grid, ctx.num_classes)
        counts = {"kept_source_channels": kept, "adapted_channels": total - kept}
        tried.append({"quantile": q, "C": c, "val_accuracy": acc, **counts})
        chosen = {
            "measure": measure,
            "quantile": q,
            "layer": layer,
            "C": c,
            "random": random,
            "refit": bool(refit),
            **counts,
        }
        if keep.offer((model, chosen, linear), acc):
            design = cv_design(ftr[layer], ytr, fva[layer], yva, c)
    (model, chosen, linear), acc = keep.item, keep.accuracy
    if refit:  # once, for the chosen quantile
        linear = fit_fixed(design, ctx.num_classes)
    out_model, kind = probe_model(model, layer, linear.to(ctx.device), ctx.num_classes)
    pre, new = ctx.cache[("profiles", "output")]
    # no weight is trained: the plan only said whose statistics to keep, so it is not applied
    return Outcome(
        model=out_model,
        val_accuracy=acc,
        chosen=chosen,
        tried=tried,
        model_kind=kind,
        extra={
            "head_only": True,
            "profile_pre": pre,
            "profile_new": new,
            "measure": measure,
            "probe_design": design,
        },
    )
