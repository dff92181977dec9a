"""benchmarks/bench_kernels_ab.py against the committed kernels: both libraries load, give the
same sums and counts, and the table has a row per shape."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_kernels_ab.py"


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not _in_git_checkout(), reason="needs the git history of a checkout")
def test_against_head_gives_the_same_results(tmp_path):
    from smart_transfer.stats import native

    if native.kernels() is None:
        pytest.skip("no C compiler: the fused statistics are not built")
    spec = importlib.util.spec_from_file_location("bench_kernels_ab", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.SHAPES = [(4, 40, 9), (4, 8, 300), (4, 50, 1)]
    out = tmp_path / "ab.md"
    assert (
        bench.main(
            [
                "--against",
                "HEAD",
                "--rounds",
                "2",
                "--calls",
                "1",
                "--out",
                str(out),
                "--models",
                "smallvgg_bn_64px",
                "--model-rounds",
                "1",
            ]
        )
        == 0
    )
    rows = json.loads(out.with_suffix(".json").read_text())["kernels"]
    assert [r["shape"] for r in rows] == [[4, 40, 9], [4, 8, 300], [4, 50, 1]]
    assert all(r["same_results"] and r["baseline_ns"] > 0 and r["new_ns"] > 0 for r in rows)
    assert out.read_text().count("| yes |") == 3
    (model,) = json.loads(out.with_suffix(".json").read_text())["models"]
    assert model["model"] == "smallvgg_bn_64px"
    assert model["forward_s"] > 0 and model["baseline_s"] > 0 and model["new_s"] > 0
    assert "| smallvgg_bn_64px |" in out.read_text()
