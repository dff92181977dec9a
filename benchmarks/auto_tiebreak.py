"""auto's tie-break replayed on the recorded runs: which candidate ``tie="order"`` (the rule
before) and ``tie="loss"`` (the default now) keep on each recorded ``auto`` run, and the test
accuracy each kept candidate got as its own row of the same record file (the same training:
seed, split, options and recipe; a check below says whether auto's own test accuracy equals it).

    python benchmarks/auto_tiebreak.py            # writes benchmarks/results/auto-tiebreak.md

The replay runs the library's own selection (``smart_transfer.strategies.auto``'s) on stand-in
outcomes that carry each tried candidate's recorded validation accuracy, cross-validation
accuracy (probes) and validation loss of its kept weights (trained candidates), so the rule is
not a copy. The loss tie-break was chosen on P2's seeds 0-2; seeds 3 and 4 are held out.
Test accuracies are read only to report, never to choose.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from fewshot import mean_std as fmt  # noqa: E402  (beside this script: the tables' own format)

FILES = ("p2-recipe", "p1-recipe", "p1-lite1-quick-recipe", "p1-lite2-quick-recipe")


def recorded_loss(entry: dict[str, Any]) -> float | None:
    """A tried candidate's validation loss: recorded (since the tie-break), else the loss of
    its chosen rate in its learning-rate grid; None for a probe or an unknown loss."""
    if "val_loss" in entry:
        return float(entry["val_loss"])
    chosen = entry.get("chosen", {})
    for row in chosen.get("lr_grid") or []:
        if row["lr"] == chosen.get("lr"):
            return float(row["val_loss"])
    return None


def replay(auto_record: dict[str, Any], tie: str) -> str | None:
    """The candidate auto's selection keeps with ``tie`` on the record's tried rows, or None
    when it would need a trained candidate's loss that the record does not hold."""
    from torch import nn

    from smart_transfer.strategies import auto
    from smart_transfer.strategies.base import Outcome
    from smart_transfer.training.loop import FitResult

    selection = auto_record["chosen"]["selection"]
    tried = [t for t in auto_record["tried"] if "val_accuracy" in t]
    results: list[tuple[str, Outcome]] = []
    unknown = False
    for t in tried:
        trained = "cv_accuracy" not in t and t["strategy"] not in auto.CLOSED_FORM
        loss = recorded_loss(t) if trained else None
        unknown |= trained and loss is None
        fit = None
        if trained:
            fit = FitResult(
                best_epoch=1,
                best_val_accuracy=t["val_accuracy"],
                best_val_loss=float("nan") if loss is None else loss,
            )
        results.append((t["strategy"], Outcome(nn.Identity(), t["val_accuracy"], fit=fit)))
    rank = auto.ranking(selection["prefer"], [t["strategy"] for t in auto_record["tried"]])
    kept, _ = auto._select(
        results, tried, selection["rule"], selection["prefer"], rank, selection["val_images"], tie
    )
    name = next(nm for nm, o in results if o is kept)
    if unknown and tie == "loss" and kept.fit is not None:
        return None  # a trained candidate's loss is missing: the replay cannot tell
    return name


def analyse(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per auto record (the newest rule's runs first, then the older variant's)."""
    own = {
        (r["strategy"], r["seed"], r["samples"], r.get("source_net", "")): r["test_accuracy"]
        for r in records
        if not r.get("variant")
    }
    rows, seen = [], set()
    autos = [r for r in records if r["strategy"] == "auto"]
    autos.sort(key=lambda r: bool(r.get("variant")))  # the runs under tie="loss" first
    for a in autos:
        where = (a["seed"], a["samples"], a.get("source_net", ""))
        if where in seen:
            continue
        seen.add(where)
        row: dict[str, Any] = {
            "seed": a["seed"],
            "column": (a.get("source_net", ""), a["samples"]),
            "auto_tie": a["chosen"]["selection"].get("tie", "order"),
            "auto_test": a["test_accuracy"],
        }
        for tie in ("order", "loss"):
            name = replay(a, tie)
            row[tie] = name
            row[f"{tie}_test"] = None if name is None else own.get((name, *where))
        rows.append(row)
    return rows


def section(name: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"## {name}", ""]
    lines += [
        "| column | seeds | tie=order keeps | test % | tie=loss keeps | test % | loss - order "
        "(paired) | auto's own test equals the kept row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    columns = sorted({r["column"] for r in rows})
    totals = []
    for held_out in (False, True):
        for col in columns:
            rs = [
                r
                for r in rows
                if r["column"] == col
                and (r["seed"] >= 3) == held_out
                and r["order_test"] is not None
                and r["loss_test"] is not None
            ]
            if not rs:
                continue
            seeds = ",".join(str(r["seed"]) for r in rs)
            diffs = [r["loss_test"] - r["order_test"] for r in rs]
            totals += [(held_out, d) for d in diffs]
            checks = [
                r["auto_test"] == r[f"{r['auto_tie']}_test"] for r in rs if r["auto_tie"] in r
            ]
            label = f"{col[0] + ', ' if col[0] else ''}{col[1]} samples"
            lines.append(
                f"| {label} | {seeds}{' (held out)' if held_out else ''} | "
                f"{', '.join(r['order'] for r in rs)} | {fmt([r['order_test'] for r in rs])} | "
                f"{', '.join(r['loss'] for r in rs)} | {fmt([r['loss_test'] for r in rs])} | "
                f"{100 * statistics.fmean(diffs):+.1f} | {sum(checks)} of {len(checks)} |"
            )
    lines.append("")
    for held_out, label in ((False, "seeds 0-2"), (True, "held-out seeds 3-4")):
        ds = [d for h, d in totals if h == held_out]
        if ds:
            lines.append(
                f"- {label}: tie=loss minus tie=order over {len(ds)} paired runs "
                f"{100 * statistics.fmean(ds):+.2f} points on average; higher in "
                f"{sum(d > 0 for d in ds)}, equal in {sum(d == 0 for d in ds)}, lower in "
                f"{sum(d < 0 for d in ds)}"
            )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    out = RESULTS / "auto-tiebreak.md"
    lines = [
        "# auto's tie-break replayed on the recorded runs",
        "",
        "Each auto run's tried candidates (validation accuracy; cross-validation accuracy for "
        "the probes; validation loss of the kept weights for the trained ones) replayed through "
        'the library\'s selection with `tie="order"` (the rule before) and `tie="loss"` (the '
        "default now); the test accuracy is that of the kept candidate's own row (same seed, "
        "split and recipe). Seeds 0-2: the tie-break was chosen on P2's; seeds 3 and 4: held "
        "out. The last column checks the replay: auto's own test accuracy against the row of "
        "the candidate its rule kept. Rows a replay cannot tell (a trained candidate's loss "
        "not recorded, or its own row not run) are left out.",
        "",
        "Command: `python benchmarks/auto_tiebreak.py`",
        "",
    ]
    for name in FILES:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        rows = analyse(json.loads(path.read_text()))
        if rows:
            lines += section(name, rows)
    out.write_text("\n".join(lines))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
