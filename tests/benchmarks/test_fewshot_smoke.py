"""benchmarks/fewshot.py at its smallest settings: records, tables, plot, and resumability."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import smart_transfer as st

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fewshot.py"
FIELDS = {
    "strategy",
    "seed",
    "samples",
    "per_class",
    "val_accuracy",
    "test_accuracy",
    "test_images",
    "chosen",
    "train_seconds",
    "frozen_fraction",
    "plan",
}


def _script():
    spec = importlib.util.spec_from_file_location("fewshot", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fmnist():
    try:
        st.data.fashion_mnist("test", download=False)
    except st.DataError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["p1", "p2"])
def test_tiny_run_writes_every_field_and_resumes(fmnist, tmp_path, monkeypatch, protocol):
    monkeypatch.setenv("SMART_TRANSFER_BENCH_CACHE", str(tmp_path / "cache"))
    fewshot = _script()
    args = [
        "--protocol",
        protocol,
        "--tiny",
        "--results",
        str(tmp_path / "res"),
        "--runs",
        str(tmp_path / "runs"),
        "--strategies",
        "linear-probe",
        "smart-kernel",
        "random-mask",
    ]
    assert fewshot.main(args) == 0
    path = tmp_path / "res" / f"{protocol}-tiny.json"
    records = json.loads(path.read_text())
    assert [r["strategy"] for r in records] == ["linear-probe", "smart-kernel", "random-mask"]
    for r in records:
        assert FIELDS <= set(r)
        assert (
            r["samples"] == r["train_samples"] + r["val_samples"] and 0 <= r["test_accuracy"] <= 1
        )
    smart, rand = records[1], records[2]
    assert rand["frozen_fraction"] == pytest.approx(
        smart["frozen_fraction"]
    )  # the very same plan, randomised
    md = path.with_suffix(".md").read_text()
    assert "| linear-probe |" in md or "| **linear-probe** |" in md
    assert fewshot.main(args) == 0  # every cell is done: nothing runs again
    assert json.loads(path.read_text()) == records
    # --tables-only rewrites the table from the records, with the summary row per strategy
    path.with_suffix(".md").unlink()
    assert fewshot.main([*args, "--tables-only"]) == 0
    assert json.loads(path.read_text()) == records
    summary = path.with_suffix(".md").read_text().split("### ")[0]
    acc = f"{100 * records[0]['test_accuracy']:.1f} ± 0.0 (1 seed)"
    assert f"| linear-probe | {acc} |" in summary or f"| linear-probe | **{acc}** |" in summary
    if protocol == "p2":
        assert path.with_suffix(".png").is_file()
        assert "source_test_accuracy" in records[0]


def test_strategy_options_parse_as_json_or_text():
    parsed = _script().parse_strategies(
        [
            "linear-probe",
            'smart-kernel:bn:bn_stats=freeze,quantile=0.3,invert=true,measure="ks"',
            "auto::rule=simplest",
        ]
    )
    assert parsed == [
        ("linear-probe", "", {}),
        (
            "smart-kernel",
            "bn",
            {"bn_stats": "freeze", "quantile": 0.3, "invert": True, "measure": "ks"},
        ),
        ("auto", "", {"rule": "simplest"}),
    ]
