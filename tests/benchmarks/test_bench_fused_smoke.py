"""benchmarks/bench_fused.py with the smallest settings: one shape, one repeat."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from smart_transfer.stats import native

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fused.py"


@pytest.mark.skipif(native.kernels() is None, reason="no C compiler for the kernels")
def test_one_shape_writes_both_formats_with_the_routing(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_fused", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.SHAPES = [(4, 8, 24, 24)]
    assert mod.main(["--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "fused.json").read_text())["rows"]
    assert [r["format"] for r in rows] == ["contiguous", "channels_last"]
    # both layouts go through the kernels by default
    assert [r["routed"] for r in rows] == [True, True]
    assert all(r["eager_ms"] > 0 and r["fused_ms"] > 0 for r in rows)
    assert "| (4, 8, 24, 24) | channels_last |" in (tmp_path / "fused.md").read_text()
