"""benchmarks/auto_tiebreak.py: auto's selection replayed on recorded tried rows keeps what
each tie rule keeps, reads losses from the records, and reports the kept rows' test accuracy."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "auto_tiebreak.py"


def _script():
    spec = importlib.util.spec_from_file_location("auto_tiebreak", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _own(strategy, seed, acc):
    return {"strategy": strategy, "seed": seed, "samples": 40, "test_accuracy": acc}


def _auto(seed, tried, test, variant=""):
    return {
        "strategy": "auto",
        "variant": variant,
        "seed": seed,
        "samples": 40,
        "test_accuracy": test,
        "chosen": {"selection": {"rule": "one-se", "prefer": "advice", "val_images": 40}},
        "tried": tried,
    }


def _grid(lr, loss):  # an older record: the loss only in the chosen rate's grid row
    return {"lr": lr, "lr_grid": [{"lr": 1e-4, "val_loss": 9.0}, {"lr": lr, "val_loss": loss}]}


TRIED = [
    {"strategy": "full-finetune", "val_accuracy": 0.7, "chosen": _grid(1e-3, 1.2)},
    {"strategy": "lp-ft", "val_accuracy": 0.7, "val_loss": 0.8, "chosen": {}},
    {
        "strategy": "linear-probe",
        "val_accuracy": 0.5,
        "cv_accuracy": 0.5,
        "cv_images": 50,
        "cv_folds": 5,
        "chosen": {},
    },
]


def test_the_replay_keeps_what_each_rule_keeps_and_reports_the_kept_rows(tmp_path, monkeypatch):
    mod = _script()
    assert mod.recorded_loss(TRIED[0]) == 1.2 and mod.recorded_loss(TRIED[1]) == 0.8
    a = _auto(0, TRIED, 0.61, variant="tie-order")
    assert mod.replay(a, "order") == "full-finetune"  # first in the order, within one SE
    assert mod.replay(a, "loss") == "lp-ft"  # the lower loss among the tied trained ones
    records = [a, _own("full-finetune", 0, 0.61), _own("lp-ft", 0, 0.66)]
    (row,) = mod.analyse(records)
    assert (row["order_test"], row["loss_test"], row["auto_tie"]) == (0.61, 0.66, "order")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    monkeypatch.setattr(mod, "FILES", ("p2-recipe",))
    (tmp_path / "p2-recipe.json").write_text(json.dumps(records))
    mod.main([])
    text = (tmp_path / "auto-tiebreak.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| 40 samples"))
    assert "| 61.0 ± 0.0 |" in line and "| 66.0 ± 0.0 |" in line and "+5.0" in line
    assert line.endswith("| 1 of 1 |")  # auto's own 0.61 is the row its rule (order) kept
    assert "over 1 paired runs +5.00 points on average; higher in 1, equal in 0, lower in 0" in text


def test_a_missing_trained_loss_is_not_guessed():
    mod = _script()
    tried = [dict(TRIED[0], chosen={"lr": 3e-4}), TRIED[1]]  # a fixed rate: no grid, no loss
    assert mod.replay(_auto(0, tried, 0.6), "loss") is None
    assert mod.replay(_auto(0, tried, 0.6), "order") == "full-finetune"
