"""benchmarks/bench_breakdown.py with the smallest settings: SmallVGG, one tiny batch, one round."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from smart_transfer.stats import native, running

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_breakdown.py"


def test_one_round_writes_every_part_and_restores_the_timed_functions(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_breakdown", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # it puts benchmarks/ on sys.path for bench_profile
    before = (
        native.moments,
        native.sample_logs,
        running.RunningStats.update,
        running.RunningStats.to_layer_profile,
    )
    argv = [
        "--model",
        "smallvgg_bn_64px",
        "--batch",
        "4",
        "--batches",
        "1",
        "--repeats",
        "1",
        "--size",
        "32",
        "--out",
        str(tmp_path),
    ]
    assert mod.main(argv) == 0
    after = (
        native.moments,
        native.sample_logs,
        running.RunningStats.update,
        running.RunningStats.to_layer_profile,
    )
    assert after == before  # the timers are taken off again
    res = json.loads((tmp_path / "breakdown_smallvgg_bn_64px.json").read_text())
    secs = res["seconds"]
    assert set(secs) == {"forward", *mod.VARIANTS, *mod.TIMED, *mod.HOOKED}
    assert all(len(v) == 1 and v[0] >= 0 for v in secs.values())
    assert secs["update"][0] > 0 and secs["finish"][0] > 0
    # the kernels run inside update, so they cannot take longer than it
    assert secs["kernels"][0] <= secs["update"][0]
    md = (tmp_path / "breakdown_smallvgg_bn_64px.md").read_text()
    assert "| covariance (default - no covariance) |" in md
    assert "| forward with one per-channel sum of every value in each hook |" in md
    assert "the floor for any statistic of every value" in md
