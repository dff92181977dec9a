"""``auto``: train the advisor's candidates within a time budget, keep the best on validation.

With a few dozen validation images the differences between candidates are mostly noise, so by
default (``rule="one-se"``) the earliest candidate in the advisor's order (``prefer="advice"``,
the order in which the benchmarks ranked them for the data's quadrant) whose validation accuracy
is within one standard error of the best one's is kept (the one-standard-error rule of model
selection). ``prefer="simplest"`` ranks by fewest choices fitted to the data instead (the order
of ``SIMPLEST_FIRST``: probes first); under the step recipe it kept probes 5-8 points below the
fine-tuned rows on P2, so it is no longer the default. ``rule="best"`` keeps the highest
validation accuracy (ties: the advisor's order).

Among the candidates the rule lets through, validation accuracy on a few dozen images often
ties (on P2's 10 validation images the three fine-tuning candidates all scored 0.7 on seed 0),
so by default (``tie="loss"``) when the candidate the order keeps is a trained one, the trained
candidate with the lowest validation loss among those let through is kept instead: the rule the
learning-rate grid already uses. Probes keep their place in the order (their scores are not
losses of the same kind); ``tie="order"`` is the rule before this one.

Closed-form candidates (the probes) cost seconds to fit, so with ``cv=5`` (default) they are
first compared among themselves by stratified 5-fold cross-validation over every labelled
sample, training and validation together (their configuration, layer(s) and ``C``, as chosen
on the validation split, held fixed): five times as many predictions as the validation split
gives. The same rule keeps one of them, with the standard error of that larger count; it then
stands for the probes against the trained candidates, compared on the validation split as
before."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from ..freeze import plan_freeze
from .advice import SIMILAR, SMALL_PER_CLASS, decide
from .base import Context, Outcome
from .finetune import val_loss
from .probe import SHARE_FEATURES, cv_accuracy
from .registry import get_strategy
from .smart import similarity

CLOSED_FORM = frozenset(
    {"linear-probe", "multi-layer-probe", "linear-probe-best-layer", "smart-probe", "random-probe"}
)
# the probes that read the pretrained network's features (the BatchNorm-adapting probes read
# their own, adapted network's)
SHARED_FEATURES = frozenset({"linear-probe", "multi-layer-probe", "linear-probe-best-layer"})
SIMPLEST_FIRST = (
    "linear-probe",
    "multi-layer-probe",
    "linear-probe-best-layer",
    "smart-probe",
    "random-probe",
    "head-only",
    "lp-ft",
    "first-k-frozen",
    "smart-layer",
    "smart-kernel",
    "random-mask",
    "full-finetune",
)


def advice_for(
    ctx: Context, small_per_class: float | None = None, similar: float | None = None
) -> Any:
    """The advice for the context's training images (the one implementation: ``auto`` and
    :func:`smart_transfer.advise` both call it): their ``gaussian_kl`` similarity to D_pre, what
    a quantile-0.5 plan would freeze, and the samples per class, read by :func:`decide`."""
    sim = similarity(ctx, "gaussian_kl")
    plan = plan_freeze(sim, quantile=0.5)
    return decide(
        ctx.samples_per_class,
        sim.layer_scores,
        sim.source,
        plan.frozen_fraction,
        small_per_class=SMALL_PER_CLASS if small_per_class is None else small_per_class,
        similar=SIMILAR if similar is None else similar,
    )


def _simplicity(name: str) -> int:
    return SIMPLEST_FIRST.index(name) if name in SIMPLEST_FIRST else len(SIMPLEST_FIRST)


def trained_loss(out: Outcome) -> float | None:
    """A trained candidate's validation loss of its kept weights (:func:`val_loss`); None for
    a closed-form one or a loss that is not finite."""
    loss = val_loss(out)
    return loss if out.fit is not None and math.isfinite(loss) else None


def ranking(prefer: str, names: Sequence[str]) -> Callable[[str], int]:
    """The order ``prefer`` ranks candidates in: simplest first, or the order of ``names`` (the
    advisor's)."""
    return _simplicity if prefer == "simplest" else list(names).index


def _keep(
    results: list[tuple[str, Outcome, float]],
    n: int,
    rule: str,
    rank: Callable[[str], int],
    tie: str = "order",
) -> tuple[str, Outcome, float, float]:
    """The candidate ``rule`` keeps among ``(name, outcome, score)`` scored on ``n`` images, and
    the standard error it used: of those within one standard error of the best score, the
    earliest by ``rank`` (``best``: of those equal to it, the earliest tried); with
    ``tie="loss"``, when that one is trained, the trained one with the lowest validation loss
    (equal losses: the earlier)."""
    top = max(s for _, _, s in results)
    se = math.sqrt(top * (1 - top) / max(n, 1)) if rule == "one-se" else 0.0
    if rule != "one-se":  # best: ties go to the earliest tried
        order = [r[0] for r in results]
        rank = order.index
    within = [r for r in results if r[2] >= top - se - 1e-12]
    name, out, score = min(within, key=lambda r: rank(r[0]))
    if tie == "loss" and trained_loss(out) is not None:
        losses = [(trained_loss(r[1]), rank(r[0]), r) for r in within]
        name, out, score = min((x for x in losses if x[0] is not None), key=lambda x: x[:2])[2]
    return name, out, score, se


def _select(
    results: list[tuple[str, Outcome]],
    tried: list[dict[str, Any]],
    rule: str,
    prefer: str,
    rank: Callable[[str], int],
    n_val: int,
    tie: str = "order",
) -> tuple[Outcome, dict[str, Any]]:
    """The candidate ``rule`` keeps: the probes ranked among themselves by cross-validation
    (when they have it), their representative against the trained candidates on validation."""
    scored = {t["strategy"]: t for t in tried if "val_accuracy" in t}
    probes = [
        (nm, o, scored[nm]["cv_accuracy"]) for nm, o in results if "cv_accuracy" in scored[nm]
    ]
    selection: dict[str, Any] = {"rule": rule, "prefer": prefer, "tie": tie, "val_images": n_val}
    pool = [(nm, o, o.val_accuracy) for nm, o in results]
    if probes:
        n_cv = scored[probes[0][0]]["cv_images"]
        pname, _pout, pscore, pse = _keep(probes, n_cv, rule, rank)
        selection["cv"] = {
            "folds": scored[pname]["cv_folds"],
            "images": n_cv,
            "kept": pname,
            "cv_accuracy": pscore,
            "standard_error": pse,
        }
        pool = [
            (nm, o, o.val_accuracy)
            for nm, o in results
            if nm == pname or "cv_accuracy" not in scored[nm]
        ]
    _name, best, _score, se = _keep(pool, n_val, rule, rank, tie)
    if rule == "one-se":
        selection["standard_error"] = se
    return best, selection


def _unbeatable(
    name: str,
    results: list[tuple[str, Outcome]],
    tried: list[dict[str, Any]],
    rule: str,
    rank: Callable[[str], int],
    n_val: int,
    tie: str,
) -> str | None:
    """Why ``name`` need not be trained, or None: the candidate kept so far scores 1.0 on
    validation, and ``rule`` keeps it over any later candidate that only equals it (one-SE:
    the simpler; best: the earlier; ``tie="loss"``: only when the kept one is a probe, since a
    trained one could lose the tie on loss). Skipping then changes nothing but the time spent."""
    if not results or name in CLOSED_FORM:
        return None
    best, _ = _select(results, tried, rule, "simplest", rank, n_val, tie)
    kept = next(nm for nm, o in results if o is best)
    if best.val_accuracy < 1.0 or (rule == "one-se" and rank(name) < rank(kept)):
        return None
    if tie == "loss" and trained_loss(best) is not None:
        return None
    return f"cannot be kept: {kept} already scores 1.000 on validation"


def run_auto(
    ctx: Context,
    budget_s: float = 900.0,
    candidates: Sequence[str] | None = None,
    rule: str = "one-se",
    prefer: str = "advice",
    cv: int = 5,
    tie: str = "loss",
) -> Outcome:
    if rule not in ("one-se", "best"):
        raise ConfigError(f"rule must be 'one-se' or 'best', got {rule!r}")
    if prefer not in ("simplest", "advice"):
        raise ConfigError(f"prefer must be 'simplest' or 'advice', got {prefer!r}")
    if tie not in ("loss", "order"):
        raise ConfigError(f"tie must be 'loss' or 'order', got {tie!r}")
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 0 or cv == 1:
        raise ConfigError(f"cv must be 0 (off) or a number of folds >= 2, got {cv!r}")
    advice = advice_for(ctx)
    names = list(candidates) if candidates else list(advice.candidates)
    start = time.perf_counter()
    results: list[tuple[str, Outcome]] = []
    tried: list[dict[str, Any]] = []
    if len(SHARED_FEATURES.intersection(names)) > 1:
        ctx.cache[SHARE_FEATURES] = True
    rank = ranking(prefer, names)
    n_val = sum(len(y) for _, y in ctx.val)
    for i, name in enumerate(names):
        elapsed = time.perf_counter() - start
        if i > 0 and elapsed >= budget_s:
            tried.append(
                {
                    "strategy": name,
                    "skipped": f"time budget of {budget_s:g} s used ({elapsed:.0f} s)",
                }
            )
            continue
        unbeatable = _unbeatable(name, results, tried, rule, rank, n_val, tie)
        if unbeatable is not None:
            tried.append({"strategy": name, "skipped": unbeatable})
            continue
        t0 = time.perf_counter()
        options: dict[str, Any] = {}
        if name == "linear-probe" and advice.layer != "penultimate" and advice.strategy == name:
            options["layer"] = advice.layer
        out = get_strategy(name).run(ctx, **options)
        entry = {
            "strategy": name,
            "val_accuracy": out.val_accuracy,
            "seconds": time.perf_counter() - t0,
            "chosen": out.chosen,
        }
        if (loss := trained_loss(out)) is not None:
            entry["val_loss"] = loss
        design = out.extra.pop("probe_design", None)
        if cv and design is not None:
            acc, entry["cv_folds"] = cv_accuracy(design, cv, ctx.seed)
            if entry["cv_folds"]:
                entry.update(cv_accuracy=acc, cv_images=len(design["y"]))
        tried.append(entry)
        out.chosen = {"strategy": name, **out.chosen}
        results.append((name, out))
    best, selection = _select(results, tried, rule, prefer, rank, n_val, tie)
    best.chosen["selection"] = selection
    best.tried = tried
    best.extra["advice"] = advice
    return best
