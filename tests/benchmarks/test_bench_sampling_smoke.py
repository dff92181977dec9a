"""benchmarks/bench_sampling.py at its smallest settings: exact statistics agree with
themselves on every channel, a sampled setting on at most all of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import smart_transfer as st

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sampling.py"


@pytest.mark.slow
def test_bench_sampling_writes_its_agreement_and_speed(tmp_path):
    try:
        st.data.fashion_mnist("train", download=False)
        st.load_backbone("efficientnet_lite0")
    except (st.DataError, st.MissingDependencyError) as e:
        pytest.skip(f"needs Fashion-MNIST and the EfficientNet-Lite0 weights ({e})")
    exact = json.dumps(
        {"sample_per_batch": None, "hist_sample_per_batch": None, "cov_sample_per_batch": None}
    )
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--variant",
            "exact",
            exact,
            "--variant",
            "default",
            "{}",
            "--seeds",
            "0",
            "--images",
            "64",
            "--rounds",
            "1",
            "--measures",
            "js",
            "gaussian_kl",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads((tmp_path / "sampling.json").read_text())
    same = res["variants"]["exact"]["agreement"]["0"]
    assert {m: v["network"] for m, v in same.items()} == {"js": 100.0, "gaussian_kl": 100.0}
    assert all(v["worst_layer"] == 100.0 for v in same.values())
    sampled = res["variants"]["default"]["agreement"]["0"]
    for v in sampled.values():
        assert 0.0 <= v["worst_layer"] <= v["layer_mean"] <= 100.0 and 0 < v["network"] <= 100.0
    assert set(res["speed"]) == {"forward", "exact", "default"}
    assert res["speed"]["forward"]["ratio"] == 1.0
    md = (tmp_path / "sampling.md").read_text()
    assert "| exact | 100.00 (100) | 100.00 (100) |" in md


def test_bench_sampling_rejects_settings_that_are_not_an_object(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--variant", "bad", "[1, 2]", "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "must be a JSON object" in out.stderr
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--variant", "bad", "{hist: 1}", "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "sampling.json").exists()
