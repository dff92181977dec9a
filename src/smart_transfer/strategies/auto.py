"""``auto``: train the advisor's candidates within a time budget, keep the best on validation.

With a few dozen validation images the differences between candidates are mostly noise, so by
default (``rule="one-se"``) the simplest candidate whose validation accuracy is within one
standard error of the best one's is kept (the one-standard-error rule of model selection;
simplest: fewest choices fitted to the data, in the order of ``SIMPLEST_FIRST``;
``prefer="advice"``: the earliest in the advisor's order of candidates instead).
``rule="best"`` keeps the highest validation accuracy (ties: the advisor's order)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..freeze import plan_freeze
from .advice import decide
from .base import Context, Outcome
from .registry import get_strategy
from .smart import similarity

SIMPLEST_FIRST = ("linear-probe", "multi-layer-probe", "linear-probe-best-layer", "smart-probe", "random-probe", "head-only",
                  "lp-ft", "first-k-frozen", "smart-layer", "smart-kernel", "random-mask", "full-finetune")


def advice_for(ctx: Context) -> Any:
    sim = similarity(ctx, "gaussian_kl")
    plan = plan_freeze(sim, quantile=0.5)
    return decide(ctx.samples_per_class, sim.layer_scores, sim.source, plan.frozen_fraction)


def _simplicity(name: str) -> int:
    return SIMPLEST_FIRST.index(name) if name in SIMPLEST_FIRST else len(SIMPLEST_FIRST)


def run_auto(ctx: Context, budget_s: float = 900.0, candidates: Sequence[str] | None = None,
             rule: str = "one-se", prefer: str = "simplest") -> Outcome:
    if rule not in ("one-se", "best"):
        raise ConfigError(f"rule must be 'one-se' or 'best', got {rule!r}")
    if prefer not in ("simplest", "advice"):
        raise ConfigError(f"prefer must be 'simplest' or 'advice', got {prefer!r}")
    advice = advice_for(ctx)
    names = list(candidates) if candidates else list(advice.candidates)
    start = time.perf_counter()
    best: Outcome | None = None
    results: list[tuple[str, Outcome]] = []
    tried: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        elapsed = time.perf_counter() - start
        if i > 0 and elapsed >= budget_s:
            tried.append({"strategy": name, "skipped": f"time budget of {budget_s:g} s used ({elapsed:.0f} s)"})
            continue
        t0 = time.perf_counter()
        options: dict[str, Any] = {}
        if name == "linear-probe" and advice.layer != "penultimate" and advice.strategy == name:
            options["layer"] = advice.layer
        out = get_strategy(name).run(ctx, **options)
        tried.append({"strategy": name, "val_accuracy": out.val_accuracy, "seconds": time.perf_counter() - t0,
                      "chosen": out.chosen})
        out.chosen = {"strategy": name, **out.chosen}
        results.append((name, out))
        if best is None or out.val_accuracy > best.val_accuracy:
            best = out
    assert best is not None
    if rule == "one-se":
        n = sum(len(y) for _, y in ctx.val)
        se = math.sqrt(best.val_accuracy * (1 - best.val_accuracy) / max(n, 1))
        within = [(name, o) for name, o in results if o.val_accuracy >= best.val_accuracy - se - 1e-12]
        rank = _simplicity if prefer == "simplest" else names.index
        best = min(within, key=lambda t: rank(t[0]))[1]
        best.chosen["selection"] = {"rule": "one-se", "prefer": prefer, "val_images": n,
                                    "standard_error": se}
    best.tried = tried
    best.extra["advice"] = advice
    return best
