"""benchmarks/bench_original.py at its smallest settings, and its re-implementation of the
original algorithm checked against a direct computation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_original.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_original", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_original_freezes_the_kernels_at_or_above_the_median_p_value():
    """Per kernel: a normal fit of the logs, 200 draws from each fit, Welch's t-test on the
    draws; frozen where the p-value is at or above the layer's median."""
    from scipy import stats

    bench = _script()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3)).eval()
    pre = [torch.randn(4, 3, 8, 8)]
    new = [torch.randn(4, 3, 8, 8) * 2 + 0.5]
    frozen = bench.original(model, pre, new)
    assert list(frozen) == ["0"]
    with torch.no_grad():
        a = np.abs(model(pre[0]).numpy() + 1e-4).astype(np.float64)
        b = np.abs(model(new[0]).numpy() + 1e-4).astype(np.float64)

    def fit(v):  # the original's normal fit of the logs: the logs below -4 set to the mode's bin
        logs = np.log(v)
        counts, edges = np.histogram(logs, bins=100)
        mode_edge = edges[10:][np.argmax(counts[10:])]
        logs = np.where(logs < -4, mode_edge, logs)
        return logs.mean(), logs.std()

    rng = np.random.default_rng(0)
    p = []
    for k in range(6):
        (mp, sp), (mn, sn) = fit(a[:, k].ravel()), fit(b[:, k].ravel())
        draw_p, draw_n = rng.normal(mp, sp, 200), rng.normal(mn, sn, 200)
        p.append(stats.ttest_ind(draw_p, draw_n, equal_var=False).pvalue)
    p = np.array(p)
    np.testing.assert_array_equal(frozen["0"], p >= np.median(p))
    assert frozen["0"].sum() == 3


@pytest.mark.slow
def test_tiny_run_writes_the_table(tmp_path):
    bench = _script()
    res = tmp_path / "res"
    assert (
        bench.main(
            [
                "--images",
                "16",
                "--also",
                "8",
                "--batch",
                "8",
                "--repeats",
                "1",
                "--results",
                str(res),
            ]
        )
        == 0
    )
    data = json.loads((res / "original.json").read_text())
    assert [r["images"] for r in data["rows"]] == [8, 16]
    for row in data["rows"]:
        assert row["original_s"] > 0 and row["smart_s"] > 0 and row["forward_s"] > 0
        assert row["speedup"] == pytest.approx(row["original_s"] / row["smart_s"])
    assert {r["what"] for r in data["repeats"]} == {"original", "smart", "forward"}
    assert "2 x 16" in (res / "original.md").read_text()
