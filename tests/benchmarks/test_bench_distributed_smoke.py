"""benchmarks/bench_distributed.py (S4) at its smallest settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_distributed.py"


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_tiny_run_matches_one_process_and_writes_the_table(tmp_path):
    res = tmp_path / "res"
    # a process of its own: the gloo workers import the script as a module
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--images",
            "24",
            "--batch",
            "8",
            "--size",
            "16",
            "--repeats",
            "1",
            "--results",
            str(res),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    data = json.loads((res / "distributed.json").read_text())
    assert [r["setting"] for r in data["rows"]] == [
        "1 process, 1 thread",
        "1 process, 2 threads",
        "2 gloo processes, 1 thread each",
    ]
    assert data["rows"][0]["speedup"] == pytest.approx(1.0)
    # the merged shards give the one-process statistics (float64 merge: rounding only)
    assert data["max_relative_difference"] < 1e-9
    assert "gloo" in (res / "distributed.md").read_text()
