"""compare_strategies / compare-strategies: the same splits for every strategy, tested once, a
table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import smart_transfer as st
from smart_transfer.cli import main
from smart_transfer.comparison import StrategyTable, _Data, split_for_seed
from smart_transfer.data.tensor_dataset import TensorImageDataset
from smart_transfer.errors import ConfigError, DataError, UnknownNameError

CLASSES = ["ant", "bee", "cow"]
N_PER_CLASS = 10


def _dataset(n: int = N_PER_CLASS, seed: int = 0) -> TensorImageDataset:
    """Colour images whose class is the brighter channel (learnable, not trivially)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(CLASSES)).repeat_interleave(n)
    x = torch.rand(len(y), 3, 20, 20, generator=g) * 0.7
    x[torch.arange(len(y)), y] += 0.3
    return TensorImageDataset((x.clamp(0, 1) * 255).to(torch.uint8), y, list(CLASSES))


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[StrategyTable, Path, Any]:
    out = tmp_path_factory.mktemp("cmp")
    lines: list[str] = []
    table = st.compare_strategies(
        "small_vgg",
        _dataset(),
        strategies=["linear-probe", "random-mask", "smart-kernel"],
        seeds=[0, 1],
        per_class=6,
        size=16,
        epochs=1,
        out=out,
        device="cpu",
        advise=False,
        report="smart-kernel",
        progress=False,
        log=lines.append,
    )
    return table, out, lines


def _config(out: Path, seed: int, name: str) -> dict[str, Any]:
    return json.loads((out / f"seed-{seed}" / name / "config.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.slow  # six small_vgg runs and a report: about 20 s on two busy cores
def test_every_strategy_trains_on_the_same_split_per_seed(
    compared: tuple[StrategyTable, Path, Any],
) -> None:
    _, out, _ = compared
    y = _dataset().targets
    for seed in (0, 1):
        splits = [
            _config(out, seed, n)["data"] for n in ("linear-probe", "random-mask", "smart-kernel")
        ]
        assert all(
            s == splits[0] for s in splits[1:]
        )  # the same train / val / test for each strategy
        tr, va, te = (set(splits[0][k]) for k in ("train_indices", "val_indices", "test_indices"))
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert len(tr) + len(va) == 6 * len(CLASSES)
        # the test split is held out first: round(10 * 0.2) = 2 images of every class
        assert np.bincount(y[sorted(te)].numpy(), minlength=3).tolist() == [2, 2, 2]
        tested = json.loads((out / f"seed-{seed}" / "linear-probe" / "metrics.json").read_text())
        assert tested["test_images"] == len(te)
    assert _config(out, 0, "linear-probe")["data"] != _config(out, 1, "linear-probe")["data"]


@pytest.mark.slow  # six small_vgg runs and a report: about 20 s on two busy cores
def test_table_is_the_mean_and_std_of_the_runs(compared: tuple[StrategyTable, Path, Any]) -> None:
    table, out, _ = compared
    assert [r["strategy"] for r in table.rows] == ["linear-probe", "random-mask", "smart-kernel"]
    for row in table.rows:
        name = row["strategy"]
        tests = [
            json.loads((out / f"seed-{s}" / name / "metrics.json").read_text())["accuracy"]
            for s in (0, 1)
        ]
        vals = [
            json.loads((out / f"seed-{s}" / name / "result.json").read_text())["val_accuracy"]
            for s in (0, 1)
        ]
        assert row["test_accuracy"] == pytest.approx(np.mean(tests))
        assert row["test_std"] == pytest.approx(np.std(tests, ddof=1))
        assert row["val_accuracy"] == pytest.approx(np.mean(vals))
        assert row["val_std"] == pytest.approx(np.std(vals, ddof=1))
        assert row["seeds"] == 2
    # random-mask freezes smart-kernel's count per layer of the same seed: its own plan
    for seed in (0, 1):
        rm = _config(out, seed, "random-mask")
        assert rm["options"]["plan"] == str(out / f"seed-{seed}" / "smart-kernel" / "plan.json")
        assert rm["frozen_fraction"] == pytest.approx(
            _config(out, seed, "smart-kernel")["frozen_fraction"]
        )


@pytest.mark.slow  # six small_vgg runs and a report: about 20 s on two busy cores
def test_printed_table_files_and_report(compared: tuple[StrategyTable, Path, Any]) -> None:
    table, out, lines = compared
    text = str(table).splitlines()
    assert len({len(line) for line in text}) == 1  # aligned
    assert text[0].split() == ["strategy", "val", "acc", "test", "acc", "frozen", "seconds"]
    lp = table.row("linear-probe")
    assert re.search(rf"linear-probe\s+{lp['val_accuracy']:.3f} ± {lp['val_std']:.3f}", text[1])
    assert next(ln for ln in lines if ln.startswith("[")).startswith("[1/4] small_vgg")
    assert any(
        str(table).splitlines()[1] in ln for ln in lines
    )  # the table is in the progress lines
    assert json.loads((out / "comparison.json").read_text()) == json.loads(
        json.dumps(table.to_dict())
    )
    md = (out / "comparison.md").read_text()
    assert "| random-mask |" in md
    assert (
        len(re.findall(r"^\| 0 \| ", md, re.MULTILINE)) == 3
        and len(re.findall(r"^\| 1 \| ", md, re.MULTILINE)) == 3
    )
    page = (out / "report.html").read_text()
    assert "3 strategies compared" in page and "seed-0/smart-kernel" in page
    assert page.count('alt="comparison"') == 1 and 'alt="activation_maps"' in page


def test_fashion_mnist_tests_on_its_official_split_or_a_fixed_subset() -> None:
    try:
        train, test = (
            st.data.fashion_mnist("train", download=False),
            st.data.fashion_mnist("test", download=False),
        )
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    d = _Data(train, test, "fashion-mnist", list(test.classes))
    a = split_for_seed(d, 0, 3, 0.2, 0.2, None)
    assert a["test_ds"] is test and torch.equal(a["test"], torch.arange(10000))
    b0, b1 = split_for_seed(d, 0, 3, 0.2, 0.2, 50), split_for_seed(d, 1, 3, 0.2, 0.2, 50)
    assert len(b0["test"]) == 50 and torch.equal(b0["test"], b1["test"])  # fixed across seeds
    assert not torch.equal(b0["train"], b1["train"])


def test_user_mistakes_are_refused_before_any_work(tmp_path: Path) -> None:
    ds = _dataset()
    kw: dict[str, Any] = {"size": 16, "epochs": 1, "device": "cpu", "advise": False, "log": None}
    with pytest.raises(UnknownNameError):
        st.compare_strategies(
            "small_vgg", ds, strategies=["linear-probe", "no-such"], out=tmp_path / "a", **kw
        )
    with pytest.raises(ConfigError, match="named twice"):
        st.compare_strategies(
            "small_vgg", ds, strategies=["linear-probe"], seeds=[1, 1], out=tmp_path / "a", **kw
        )
    with pytest.raises(ConfigError, match="test_fraction"):
        st.compare_strategies(
            "small_vgg",
            ds,
            strategies=["linear-probe"],
            test_fraction=1.5,
            out=tmp_path / "a",
            **kw,
        )
    assert not (tmp_path / "a").exists()
    stranger = tmp_path / "b" / "seed-0" / "linear-probe"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a run"):
        st.compare_strategies(
            "small_vgg", ds, strategies=["linear-probe"], out=tmp_path / "b", **kw
        )
    with pytest.raises(ConfigError, match="not a run folder"):
        st.compare_strategies(
            "small_vgg", ds, strategies=["linear-probe"], out=tmp_path / "b", overwrite=True, **kw
        )
    assert (stranger / "notes.txt").read_text() == "mine"


def _folder(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 180, (20, 20, 3)).astype(np.uint8)
            a[..., c] += 60
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


def test_cli_on_a_folder_with_every_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _folder(tmp_path / "photos")
    out = tmp_path / "cmp"
    rc = main(
        [
            "compare-strategies",
            "--backbone",
            "small_vgg",
            "--data",
            str(data),
            "--strategies",
            "linear-probe",
            "--seeds",
            "3",
            "--per-class",
            "all",
            "--size",
            "16",
            "--epochs",
            "1",
            "--no-advice",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    comp = json.loads((out / "comparison.json").read_text())
    # 6 images per class: 1 held out for the test (round(1.2)), of the other 5 one validates
    assert (comp["train_images"], comp["val_images"], comp["test_images"]) == (12, 3, 3)
    assert comp["per_class"] is None and comp["seeds"] == [3]
    row = comp["rows"][0]
    assert f"linear-probe  {row['val_accuracy']:>7.3f}" in printed.replace("   ", "  ")
    cfg = json.loads((out / "seed-3" / "linear-probe" / "config.json").read_text())
    assert cfg["data"]["spec"] == str(data.resolve()) and cfg["backbone"] == "small_vgg"
    assert (out / "report.html").is_file()
    assert (
        main(
            [
                "compare-strategies",
                "--data",
                str(data),
                "--strategies",
                "linear-probe",
                "--per-class",
                "x",
                "--out",
                str(tmp_path / "c2"),
            ]
        )
        == 2
    )
    assert "--per-class takes a positive number or 'all'" in capsys.readouterr().err
    assert (
        main(
            [
                "compare-strategies",
                "--data",
                str(data),
                "--strategies",
                "linear-probe",
                "--device",
                "tpu",
                "--out",
                str(tmp_path / "c3"),
            ]
        )
        == 2
    )
    assert "--device 'tpu'" in capsys.readouterr().err and not (tmp_path / "c3").exists()
    assert (
        main(
            [
                "compare-strategies",
                "--data",
                str(data),
                "--strategies",
                "linear-probe",
                "--out",
                str(data / "cmp"),
            ]
        )
        == 2
    )
    assert "inside the input folder" in capsys.readouterr().err and not (data / "cmp").exists()


def test_on_error_skip_leaves_a_corrupt_photo_out_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        for i in range(6):
            size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))  # mixed sizes
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                data / c / f"{i}.png"
            )
    (data / "bee" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = [
        "compare-strategies",
        "--data",
        str(data),
        "--strategies",
        "linear-probe",
        "--backbone",
        "small_vgg",
        "--size",
        "16",
        "--no-advice",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert (
        "broken.jpg" in err
        and "--on-error skip" in err
        and not (tmp_path / "a" / "seed-0").exists()
    )
    assert main([*args, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "left out: 1 unreadable (bee/broken.jpg)" in out
    assert "18 images, 3 classes (ant 6, bee 6, cow 6)" in out
    comp = json.loads((tmp_path / "b" / "comparison.json").read_text())
    assert [r["strategy"] for r in comp["rows"]] == ["linear-probe"]
