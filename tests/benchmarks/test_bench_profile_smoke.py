"""benchmarks/bench_profile.py --stats: the lighter statistics sets are timed in the same rounds
as the default profile and recorded beside it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_profile.py"


def test_bench_profile_records_each_statistics_set(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_profile_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(
        bench,
        "_models",
        lambda size, quick: {"smallvgg_bn": (lambda: bench.SmallVGG(batch_norm=True), size, 4)},
    )
    assert (
        bench.main(
            [
                "--no-s2",
                "--repeats",
                "2",
                "--size",
                "16",
                "--batch",
                "4",
                "--stats",
                "full,moments",
                "--tag",
                "t",
                "--note",
                "test",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "profile_t.json").read_text())
    assert res["note"] == "test" and res["stats_sets"]["moments"] == ["moments"]
    row = res["s1"]["smallvgg_bn"]
    light = row["by_stats"]["moments"]
    assert light["stats"] == ["moments"] and len(row["repeats"]) == 2
    ratios = sorted(r["by_stats"]["moments"]["ratio"] for r in row["repeats"])
    assert light["median_ratio"] == (ratios[0] + ratios[1]) / 2 and ratios[0] > 0
    assert "moments (moments)" in (tmp_path / "profile_t.md").read_text()
