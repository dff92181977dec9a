"""``auto``: train the advisor's candidates within a time budget, keep the best on validation."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..freeze import plan_freeze
from .advice import decide
from .base import Context, Outcome
from .registry import get_strategy
from .smart import similarity


def advice_for(ctx: Context) -> Any:
    sim = similarity(ctx, "gaussian_kl")
    plan = plan_freeze(sim, quantile=0.5)
    return decide(ctx.samples_per_class, sim.layer_scores, sim.source, plan.frozen_fraction)


def run_auto(ctx: Context, budget_s: float = 900.0, candidates: Sequence[str] | None = None) -> Outcome:
    advice = advice_for(ctx)
    names = list(candidates) if candidates else list(advice.candidates)
    start = time.perf_counter()
    best: Outcome | None = None
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
        if best is None or out.val_accuracy > best.val_accuracy:
            best = out
            best.chosen = {"strategy": name, **out.chosen}
    assert best is not None
    best.tried = tried
    best.extra["advice"] = advice
    return best
