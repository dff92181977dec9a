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
    # every learning-rate grid is also scored on test images after the run (for the count of
    # how often validation picked the test split's best rate): one test accuracy per rate
    for r in records[1:]:
        rates = [row["lr"] for row in r["chosen"]["lr_grid"]]
        grid = r["grid_on_test"]
        assert grid is not None and [row["lr"] for row in grid["rows"]] == sorted(rates)
        assert all(0 <= row["test_accuracy"] <= 1 for row in grid["rows"])
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


def test_grid_checkpoints_groups_each_rate_whatever_epoch_kept_it(tmp_path):
    fewshot = _script()
    ck = tmp_path / "checkpoints"
    layout = {  # each rate stopped at its own step: the epoch folders differ
        "full-finetune/lr=0.0001/epoch-000090": 1,
        "full-finetune/lr=0.0003/epoch-000125": 1,
        "full-finetune/lr=0.001/epoch-000160": 1,
        "fine-tune/lr=0.0001/head/epoch-000060": 1,
        "fine-tune/lr=0.0003/head/epoch-000060": 1,
        "fine-tune/lr=0.0001/all/epoch-000030": 1,
        "fine-tune/lr=0.0001/all/epoch-000240": 1,  # a later epoch folder of the same rate
        "fine-tune/lr=0.0003/all/epoch-000240": 1,
        "head-only/epoch-000010": 1,  # no grid
    }
    for folder in layout:
        (ck / folder).mkdir(parents=True)
        (ck / folder / "best.safetensors").write_bytes(b"")
    groups = fewshot.grid_checkpoints(tmp_path)
    assert groups == {
        "full-finetune": {
            1e-4: ck / "full-finetune/lr=0.0001/epoch-000090/best.safetensors",
            3e-4: ck / "full-finetune/lr=0.0003/epoch-000125/best.safetensors",
            1e-3: ck / "full-finetune/lr=0.001/epoch-000160/best.safetensors",
        },
        "fine-tune/head": {
            1e-4: ck / "fine-tune/lr=0.0001/head/epoch-000060/best.safetensors",
            3e-4: ck / "fine-tune/lr=0.0003/head/epoch-000060/best.safetensors",
        },
        "fine-tune/all": {
            1e-4: ck / "fine-tune/lr=0.0001/all/epoch-000240/best.safetensors",
            3e-4: ck / "fine-tune/lr=0.0003/all/epoch-000240/best.safetensors",
        },
    }
