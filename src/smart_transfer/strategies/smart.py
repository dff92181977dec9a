"""Smart freezing: profile D_new, take D_pre from source images or BatchNorm, compare, plan,
apply, train. ``random-mask`` trains the very same plan with its channels drawn at random."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..freeze import FreezePlan, plan_freeze
from ..measures import compare
from ..models.heads import find_head
from ..stats import ActivationProfile, profile, profile_from_batchnorm
from .base import Context, Outcome, Transformed
from .finetune import train_model, val_loss
from .selection import KeepBest

QUANTILES = (0.25, 0.5, 0.75)


def source_profile(
    ctx: Context, model: nn.Module, exclude: list[str], point: str = "output"
) -> ActivationProfile:
    """D_pre: the context's ``source`` (a profile, its file, a folder or loader of images) or,
    without one, the network's BatchNorm running statistics."""
    src = ctx.source
    if src is None or src == "batchnorm":
        if point != "output":
            raise ConfigError("a BatchNorm source describes conv outputs only; use point='output'")
        return profile_from_batchnorm(model, exclude=exclude)
    if isinstance(src, ActivationProfile):
        return src
    if isinstance(src, (str, Path)):
        path = Path(src)
        if path.is_file():
            return ActivationProfile.load(path)
        if path.is_dir():
            from ..data import image_folder, loader

            ds = image_folder(path)
            src = loader(ds, batch_size=ctx.recipe.batch_size)
        else:
            raise ConfigError(
                f"source {str(src)!r} is neither a saved profile nor a folder of images"
            )
    return profile(
        model,
        Transformed(src, ctx.eval_tf),
        exclude=exclude,
        point=point,
        progress=False,
        config=ctx.profile_stats,
    )


def similarity(ctx: Context, measure: str, point: str = "output") -> Any:
    """Compare D_pre with D_new on the pretrained backbone (cached per measure and point)."""
    key = ("similarity", measure, point)
    if key not in ctx.cache:
        model = ctx.fresh_model("profile")
        head_name, _ = find_head(model)
        pre = source_profile(ctx, model, [head_name], point)
        new = profile(
            model,
            Transformed(ctx.train_eval, ctx.eval_tf),
            exclude=[head_name],
            point=point,
            progress=False,
            config=ctx.profile_stats,
        )
        ctx.cache[("profiles", point)] = (pre, new)
        ctx.cache[key] = compare(pre, new, measure=measure)
    return ctx.cache[key]


def make_plan(
    ctx: Context, scope: str, measure: str, rule: dict[str, float], invert: bool, point: str
) -> FreezePlan:
    sim = similarity(ctx, measure, point)
    if invert:  # freeze the most *shifted* channels instead (an ablation)
        sim = type(sim)(
            **{
                **sim.__dict__,
                "scores": {k: 1 - v for k, v in sim.scores.items()},
                "layer_scores": {k: 1 - v for k, v in sim.layer_scores.items()},
            }
        )
    return plan_freeze(sim, scope=scope, **rule)  # type: ignore[arg-type]


def _rule(
    threshold: float | None, quantile: float | None, budget: float | None
) -> dict[str, float]:
    given = {
        k: v
        for k, v in {"threshold": threshold, "quantile": quantile, "budget": budget}.items()
        if v is not None
    }
    if len(given) > 1:
        raise ConfigError(
            f"give at most one of threshold=, quantile=, budget= (got {', '.join(given)})"
        )
    return given or {"quantile": 0.5}


def run_smart(
    ctx: Context,
    scope: str = "kernel",
    measure: str = "gaussian_kl",
    threshold: float | None = None,
    quantile: float | None = None,
    budget: float | None = None,
    select: str = "fixed",
    quantiles: Sequence[float] = QUANTILES,
    bn_stats: str = "adapt",
    point: str = "output",
    invert: bool = False,
    head_lr_mult: float | None = None,
    init: str = "pretrained",
    bn_prior: float = 0.0,
) -> Outcome:
    """Freeze the channels (``scope="kernel"``) or layers (``"layer"``) that behave alike on
    D_pre and D_new, train the rest. ``select="val"`` trains one model per value of
    ``quantiles`` and keeps the one with the lowest validation loss (as for the learning rate).
    ``init="probe"`` starts from a linear probe's head (as LP-FT does). ``bn_stats="adapt"`` is
    the default because it measured best (``benchmarks/NOTES.md``): frozen weights stay
    bit-identical, their BatchNorm statistics are re-estimated on the new data."""
    if select not in ("fixed", "val"):
        raise ConfigError(f"select must be 'fixed' or 'val', got {select!r}")
    if init not in ("pretrained", "probe"):
        raise ConfigError(f"init must be 'pretrained' or 'probe', got {init!r}")
    if init == "probe" and ctx.head == "mlp":
        raise ConfigError(
            "init='probe' starts from a linear probe's head; use it with head='linear'"
        )
    name = f"smart-{scope}"
    rules = (
        [_rule(threshold, quantile, budget)]
        if select == "fixed"
        else [{"quantile": float(q)} for q in quantiles]
    )
    keep: KeepBest[Outcome] = KeepBest("loss", what="quantiles")
    tried = []
    for rule in rules:
        tag = f"{name}/" + ",".join(f"{k}={v}" for k, v in rule.items())
        plan = make_plan(ctx, scope, measure, rule, invert, point)
        model = _start(ctx, tag, init)
        out = train_model(
            ctx,
            model,
            tag,
            plan=plan,
            bn_stats=bn_stats,
            head_lr_mult=head_lr_mult,
            bn_prior=bn_prior,
        )
        loss = val_loss(out)
        tried.append(
            {
                **rule,
                "val_accuracy": out.val_accuracy,
                "val_loss": loss,
                "frozen_fraction": plan.frozen_fraction,
            }
        )
        if keep.offer(out, out.val_accuracy, loss):
            out.chosen = {
                **out.chosen,
                "measure": measure,
                "scope": scope,
                "point": point,
                "bn_stats": bn_stats,
                "bn_prior": bn_prior,
                "invert": invert,
                "init": init,
                **rule,
            }
    best = keep.item
    best.tried = tried
    pre, new = ctx.cache[("profiles", point)]
    best.extra.update(profile_pre=pre, profile_new=new, measure=measure)
    return best


def _start(ctx: Context, tag: str, init: str) -> nn.Module:
    if init == "probe":
        from .probe import run_linear_probe

        return run_linear_probe(ctx, refit=False).model  # validation judges the fine-tuning
    return ctx.fresh_model(tag)


def run_random_mask(
    ctx: Context,
    plan: FreezePlan | str | Path | None = None,
    mask_seed: int | None = None,
    bn_stats: str = "adapt",
    head_lr_mult: float | None = None,
    bn_prior: float = 0.0,
    **smart_options: Any,
) -> Outcome:
    """The control: ``plan`` (default: the plan ``smart-kernel`` makes with ``smart_options``)
    with the same frozen count in every layer, channels drawn at random."""
    if plan is None:
        scope = smart_options.pop("scope", "kernel")
        measure = smart_options.pop("measure", "gaussian_kl")
        point = smart_options.pop("point", "output")
        rule = _rule(
            smart_options.pop("threshold", None),
            smart_options.pop("quantile", None),
            smart_options.pop("budget", None),
        )
        if smart_options:
            raise ConfigError(f"random-mask has no option {', '.join(map(repr, smart_options))}")
        plan = make_plan(ctx, scope, measure, rule, False, point)
    elif not isinstance(plan, FreezePlan):
        plan = FreezePlan.load(plan)
    seed = ctx.seed if mask_seed is None else int(mask_seed)
    rplan = plan.random_like(seed)
    model = ctx.fresh_model("random-mask")
    out = train_model(
        ctx,
        model,
        "random-mask",
        plan=rplan,
        bn_stats=bn_stats,
        head_lr_mult=head_lr_mult,
        bn_prior=bn_prior,
    )
    out.chosen = {
        **out.chosen,
        "mask_seed": seed,
        "of": plan.meta.get("selection"),
        "bn_stats": bn_stats,
        "bn_prior": bn_prior,
    }
    return out
