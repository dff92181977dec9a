"""The built-in strategies, in the order tables list them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .base import Context
from .finetune import run_fine_tune, run_first_k_frozen, run_full_finetune, run_head_only, run_lp_ft
from .probe import run_best_layer, run_linear_probe
from .registry import StrategyInfo, get_strategy, register
from .smart import run_random_mask, run_smart

HEAD_OPTION = {
    "head": "the new head: 'linear' (default) or 'mlp' (seed 001's: BatchNorm1d, Linear to "
    "2x, ReLU, BatchNorm1d, Dropout 0.5, Linear)"
}
CLASSIFIER_OPTION = {
    "classifier": "'logistic' (default; softmax, multinomial logistic regression) or 'svm' "
    "(seed 002's linear SVM: hinge loss, scikit-learn LinearSVC, one-vs-rest)"
}
_SMART_OPTIONS = {
    "measure": "similarity measure (default gaussian_kl; see list_measures())",
    "quantile": "freeze this fraction of the most similar channels per layer (default 0.5)",
    "threshold": "instead: freeze channels with similarity >= threshold",
    "budget": "instead: freeze network-wide until this fraction stays trainable",
    "select": "'fixed' (default) or 'val': choose the quantile on validation among `quantiles`",
    "quantiles": "candidates for select='val' (default 0.25, 0.5, 0.75)",
    "bn_stats": "BatchNorm: 'adapt' (default; AdaBN: every running statistic re-estimated on the "
    "training images, then BatchNorm kept in eval mode, so training and evaluation "
    "normalise alike), 'freeze' (frozen channels keep their source statistics) or "
    "'update' (they follow the new data)",
    "bn_prior": "with bn_stats='adapt': the source statistics count as this many images in the "
    "re-estimate (Schneider et al. 2020; default 0, plain AdaBN)",
    "point": "where activations are profiled: 'output' (default), 'norm' or 'act' (needs source "
    "images)",
    "invert": "freeze the most shifted channels instead (an ablation; default False)",
    "init": "'pretrained' (default) or 'probe': start from a linear probe's head, as LP-FT does",
    "head_lr_mult": "learning-rate multiplier of the new head (default: the recipe's, 10)",
    **HEAD_OPTION,
}


def _smart(scope: str) -> Any:
    def run(ctx: Context, **options: Any) -> Any:
        return run_smart(ctx, scope=scope, **options)

    return run


def _auto(ctx: Context, **options: Any) -> Any:
    from .auto import run_auto

    return run_auto(ctx, **options)


register(
    StrategyInfo(
        "linear-probe",
        "a linear classifier (logistic regression) on frozen features",
        "nothing",
        {
            "layer": "layer whose pooled output feeds the classifier (default penultimate)",
            "C": "inverse L2 strength, or a list chosen on validation (default 0.001 ... 10)",
            "refit": "after choosing on validation, fit the probe again on the training and "
            "validation samples together (default True)",
            **CLASSIFIER_OPTION,
        },
        run_linear_probe,
    )
)
register(
    StrategyInfo(
        "linear-probe-best-layer",
        "a linear classifier on the frozen features of the layer that scores best on validation",
        "nothing",
        {
            "layers": "candidate layers (default: 8 evenly spaced + penultimate)",
            "concat": "also try the best `concat` layers' features side by side (default 1: off)",
            "C": "as for linear-probe",
            "refit": "as for linear-probe",
            **CLASSIFIER_OPTION,
        },
        run_best_layer,
    )
)
register(
    StrategyInfo(
        "head-only",
        "a new head by gradient descent; backbone frozen, BatchNorm in eval",
        "nothing",
        {**HEAD_OPTION},
        run_head_only,
    )
)
register(
    StrategyInfo(
        "first-k-frozen",
        "everything after the first k conv/linear layers",
        "nothing",
        {
            "k": "layers to freeze (default: chosen on validation)",
            "fractions": "candidate fractions of the layers when k is not given (0.25, 0.5, 0.75)",
            **HEAD_OPTION,
        },
        run_first_k_frozen,
    )
)
register(
    StrategyInfo(
        "full-finetune",
        "everything; the head at 10x the learning rate",
        "nothing",
        {
            "head_lr_mult": "head learning-rate multiplier (default 10)",
            "layer_decay": "layer-wise learning-rate decay by block: block b of n learns at lr * "
            "decay ** (n - b), the head's block n at lr (times head_lr_mult); in (0, 1] (default "
            "off)",
            **HEAD_OPTION,
        },
        run_full_finetune,
    )
)
register(
    StrategyInfo(
        "fine-tune",
        "fastai's gradual unfreezing: the head first (backbone frozen), then everything at "
        "discriminative rates",
        "nothing",
        {
            "head_fraction": "share of the step budget that trains the head alone (default 0.2)",
            "lr_mult": "after unfreezing, the first block learns this many times slower than the "
            "head, the blocks between geometrically (default 100, fastai's slice(lr/100, lr))",
            "head_lr_mult": "head learning-rate multiplier while the backbone is frozen (default: "
            "the recipe's, 10); half of it after unfreezing",
            **HEAD_OPTION,
        },
        run_fine_tune,
    )
)
register(
    StrategyInfo(
        "lp-ft",
        "a linear probe, then everything fine-tuned from the probe's head",
        "nothing",
        {
            "head_lr_mult": "head learning-rate multiplier during fine-tuning (default 1)",
            "C": "as for linear-probe",
        },
        run_lp_ft,
    )
)
register(
    StrategyInfo(
        "smart-kernel",
        "every channel except those whose activations already match D_pre",
        "D_pre: source images or a saved profile (default: BatchNorm statistics)",
        _SMART_OPTIONS,
        _smart("kernel"),
    )
)
register(
    StrategyInfo(
        "smart-layer",
        "every layer except those whose activations already match D_pre",
        "as smart-kernel",
        _SMART_OPTIONS,
        _smart("layer"),
    )
)
register(
    StrategyInfo(
        "random-mask",
        "the control: smart-kernel's frozen count per layer, channels at random",
        "as smart-kernel",
        {
            "plan": "the plan to randomise (a FreezePlan or plan.json; default: "
            "smart-kernel's plan with the same options)",
            "mask_seed": "seed of the random channels (default: the run's seed)",
            **{
                k: _SMART_OPTIONS[k]
                for k in (
                    "measure",
                    "quantile",
                    "threshold",
                    "budget",
                    "bn_stats",
                    "bn_prior",
                    "head_lr_mult",
                    "head",
                )
            },
        },
        run_random_mask,
    )
)
_PROBE_OPTIONS = {
    "measure": "similarity measure (default gaussian_kl; see list_measures())",
    "quantile": "keep the source BatchNorm statistics of this fraction of the most similar "
    "channels per layer, re-estimate the rest on the training images (default: chosen on "
    "validation)",
    "select": "'val' (default): choose the quantile on validation among `quantiles`; 'fixed': 0.5",
    "quantiles": "candidates for select='val' (default 0, 0.5, 1: AdaBN everywhere, half, nowhere)",
    "layer": "layer whose pooled output feeds the classifier (default penultimate)",
    "C": "as for linear-probe",
    "refit": "as for linear-probe",
}


def _smart_probe(ctx: Context, **options: Any) -> Any:
    from .adapt_probe import run_adapt_probe

    return run_adapt_probe(ctx, **options)


def _random_probe(ctx: Context, **options: Any) -> Any:
    from .adapt_probe import run_adapt_probe

    return run_adapt_probe(ctx, random=True, **options)


register(
    StrategyInfo(
        "smart-probe",
        "nothing by gradient: the BatchNorm statistics of the shifted channels are "
        "re-estimated on the new data, the similar ones keep the source's; then a linear probe",
        "as smart-kernel; a network with BatchNorm",
        _PROBE_OPTIONS,
        _smart_probe,
    )
)
register(
    StrategyInfo(
        "random-probe",
        "the control of smart-probe: the same count of channels per layer re-estimated, "
        "drawn at random",
        "as smart-probe",
        {**_PROBE_OPTIONS, "mask_seed": "seed of the random channels (default: the run's seed)"},
        _random_probe,
    )
)
_MULTI_OPTIONS = {
    "layers": "layers whose pooled outputs are concatenated (default: the candidates of "
    "linear-probe-best-layer, 8 evenly spaced + penultimate)",
    "C": "as for linear-probe",
    "refit": "as for linear-probe",
}
_SELECT_OPTIONS = {
    **_MULTI_OPTIONS,
    "measure": "channel-level similarity measure ranking the channels (default gaussian_kl)",
    "fraction": "keep this fraction of the channels of every layer (default: chosen on validation)",
    "fractions": "candidates when fraction is not given (default 0.125, 0.25, 0.5)",
    "direction": "'similar' (keep the channels closest to D_pre), 'shifted' (the farthest) or "
    "'val' (default: chosen on validation)",
}


def _multi(select: str) -> Any:
    def run(ctx: Context, **options: Any) -> Any:
        from .multi_probe import run_multi_probe

        return run_multi_probe(ctx, select=select, **options)

    return run


register(
    StrategyInfo(
        "multi-layer-probe",
        "a linear classifier on the frozen, pooled features of many layers side by side",
        "nothing",
        _MULTI_OPTIONS,
        _multi("none"),
    )
)
register(
    StrategyInfo(
        "smart-multi-probe",
        "a linear classifier on the features of many layers, keeping per layer the "
        "channels whose activations are most similar to (or most shifted from) D_pre",
        "as smart-kernel",
        _SELECT_OPTIONS,
        _multi("smart"),
    )
)
register(
    StrategyInfo(
        "random-multi-probe",
        "the control of smart-multi-probe: its count of channels per layer, drawn at random",
        "as smart-kernel",
        {**_SELECT_OPTIONS, "mask_seed": "seed of the random channels (default: the run's seed)"},
        _multi("random"),
    )
)
register(
    StrategyInfo(
        "auto",
        "whatever the advisor's best candidates train; the best on validation is kept",
        "nothing",
        {
            "budget_s": "time budget in seconds for the candidates (default 900)",
            "candidates": "strategies to try (default: the advisor's)",
            "rule": "'one-se' (default): the preferred candidate within one standard error of "
            "the best validation accuracy; 'best': the highest validation accuracy",
            "prefer": "for 'one-se': 'advice' (default: the earliest of the advisor's "
            "candidates, in the order the benchmarks ranked them) or 'simplest' (probes first)",
            "cv": "folds of the stratified cross-validation over every labelled sample that ranks "
            "the closed-form candidates (probes) among themselves (default 5; 0: the "
            "validation split only)",
            "tie": "'loss' (default): when the rule keeps a trained candidate, the trained one "
            "with the lowest validation loss among those it lets through; 'order': the rule's "
            "own order",
        },
        _auto,
    )
)

# The functions whose keyword parameters give each strategy's option defaults (the first wins);
# StrategyInfo.options_type is built from them and the help strings above.
_PARAMS = {
    "linear-probe": (".probe:run_linear_probe",),
    "linear-probe-best-layer": (".probe:run_best_layer",),
    "head-only": (".finetune:run_head_only",),
    "first-k-frozen": (".finetune:run_first_k_frozen",),
    "full-finetune": (".finetune:run_full_finetune",),
    "fine-tune": (".finetune:run_fine_tune",),
    "lp-ft": (".finetune:run_lp_ft",),
    "smart-kernel": (".smart:run_smart",),
    "smart-layer": (".smart:run_smart",),
    "random-mask": (".smart:run_random_mask", ".smart:run_smart"),
    "smart-probe": (".adapt_probe:run_adapt_probe",),
    "random-probe": (".adapt_probe:run_adapt_probe",),
    "multi-layer-probe": (".multi_probe:run_multi_probe",),
    "smart-multi-probe": (".multi_probe:run_multi_probe",),
    "random-multi-probe": (".multi_probe:run_multi_probe",),
    "auto": (".auto:run_auto",),
}
for _name, _refs in _PARAMS.items():
    register(replace(get_strategy(_name), params=_refs))
