"""The step recipe's tables beside the previous recipe's, from the records of fewshot.py.

    python benchmarks/recipe_tables.py            # writes benchmarks/results/recipe-comparison.md

Each cell: test accuracy %, mean ± std over seeds 0 1 2 ("new" under the step recipe, "old"
under the previous one: at most 15 epochs = 75 optimizer steps on P1, lr 1e-3); a cell with fewer
of them says how many (the records hold seeds 3 4 for some rows; their own tables give those).
"(same)": the old rows equal the new ones (the probes, which train nothing by gradient and so do
not depend on the recipe).
The best new mean of each column is bold; "auto - best" is auto's distance to it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def order() -> list[str]:
    """The library's table order of the strategies (``smart_transfer.list_strategies()``)."""
    import smart_transfer as st

    return list(st.list_strategies())


def load(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else []


SEEDS = (0, 1, 2)  # the protocols' seeds; the extra seeds of some rows would skew a comparison


def cells(records: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[int, float]]:
    """(source network, samples, strategy) -> {seed: test accuracy %} over :data:`SEEDS`
    (variants left out)."""
    out: dict[tuple[str, int, str], dict[int, float]] = {}
    for r in records:
        if r.get("variant") or r["seed"] not in SEEDS:
            continue
        key = (r.get("source_net", ""), r["samples"], r["strategy"])
        out.setdefault(key, {})[r["seed"]] = 100 * r["test_accuracy"]
    return out


def fmt(values: list[float], n_expected: int = 3) -> str:
    if not values:
        return ""
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    note = (
        ""
        if len(values) == n_expected
        else f" ({len(values)} seed{'s' if len(values) > 1 else ''})"
    )
    return f"{m:.1f} ± {s:.1f}{note}"


def section(
    title: str, new: list[dict], old: list[dict], columns: list[tuple[str, int, str]]
) -> list[str]:
    """One table: a row per strategy, per column "new" and (for trained rows) "old"."""
    cn, co = cells(new), cells(old)
    names = [n for n in order() if any((net, s, n) in cn for net, s, _ in columns)]
    best = {}
    for net, s, _ in columns:
        means = [statistics.fmean(cn[(net, s, n)].values()) for n in names if (net, s, n) in cn]
        best[(net, s)] = max(means, default=float("nan"))
    head = "| strategy | " + " | ".join(f"{label}: new | old" for _, _, label in columns) + " |"
    lines = [f"### {title}", "", head, "|---|" + "---|---|" * len(columns)]
    for n in names:
        row = [n]
        for net, s, _ in columns:
            v = list(cn.get((net, s, n), {}).values())
            text = fmt(v)
            if v and statistics.fmean(v) == best[(net, s)]:
                text = f"**{text}**"
            seeds = set(cn.get((net, s, n), {}))
            before = [a for seed, a in co.get((net, s, n), {}).items() if seed in seeds]
            same = before and fmt(before) == fmt(v)
            row += [text, "(same)" if same else fmt(before, len(seeds) or 3)]
        lines.append("| " + " | ".join(row) + " |")
    gap = ["auto - best"]
    for net, s, _ in columns:
        v = list(cn.get((net, s, "auto"), {}).values())
        gap += [f"{statistics.fmean(v) - best[(net, s)]:+.1f}" if v else "", ""]
    lines += ["| " + " | ".join(gap) + " |", ""]
    return lines


def main() -> int:
    lines = [__doc__.split("\n\n", 2)[2].strip() if __doc__ else "", ""]
    lines[0] = "# The step recipe beside the previous one\n\n" + lines[0]
    p1_new, p1_old = load("p1-recipe"), load("p1")
    lines += section(
        "P1: EfficientNet-Lite0 -> Fashion-MNIST, 20 per class, 96 px, 10,000 test images",
        p1_new,
        p1_old,
        [("", 200, "200 samples")],
    )
    for b in (1, 2):
        recs = load(f"p1-lite{b}-quick-recipe")
        if recs:
            lines += section(
                f"P1 with EfficientNet-Lite{b} (96 px, the 2,000-image quick test subset, "
                "lr 3e-4 fixed; no old rows)",
                recs,
                [],
                [("", 200, "200 samples")],
            )
    p2_new, p2_old = load("p2-recipe"), load("p2")
    for net in ("small_vgg_bn", "small_vgg_nobn"):
        sizes = sorted({r["samples"] for r in p2_new if r.get("source_net") == net})
        if sizes:
            lines += section(
                f"P2: {net} (5,000 test images)", p2_new, p2_old, [(net, s, f"{s}") for s in sizes]
            )
    out = RESULTS / "recipe-comparison.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
