"""cli.py: the subcommands end to end, on small data, and their error path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import smart_transfer as st
from smart_transfer.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(6):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def test_profile_compare_plan_roundtrip(folder, tmp_path, capsys):
    pre, new, plan_path, sim_path = (
        tmp_path / n for n in ("pre.pt", "new.pt", "plan.json", "sim.json")
    )
    torch.manual_seed(0)  # small_vgg has random weights: both profiles must see the same ones
    assert (
        main(["profile", "--backbone", "small_vgg", "--source", "batchnorm", "--out", str(pre)])
        == 0
    )
    args = ["profile", "--backbone", "small_vgg", "--data", str(folder), "--size", "32"]
    torch.manual_seed(0)
    assert main(args + ["--batch-size", "4", "--no-progress", "--out", str(new)]) == 0
    prof = st.ActivationProfile.load(new)
    assert prof.source == "data" and prof.num_samples == 12
    assert st.ActivationProfile.load(pre).source == "batchnorm"

    rc = main(
        [
            "compare",
            str(pre),
            str(new),
            "--measure",
            "gaussian_kl",
            "--quantile",
            "0.5",
            "--out",
            str(sim_path),
            "--plan",
            str(plan_path),
        ]
    )
    assert rc == 0
    plan = st.FreezePlan.load(plan_path)
    sim = json.loads(sim_path.read_text())
    assert sim["measure"] == "gaussian_kl" and set(sim["layers"]) == set(prof.names()) - {
        "classifier"
    }
    # quantile 0.5 freezes floor(C/2) channels in each compared layer
    for rows in plan.layers.values():
        mask = plan.masks[rows[0]]
        assert int(mask.sum()) == mask.numel() // 2
    assert "total" in capsys.readouterr().out


def test_compare_with_a_measure_that_cannot_run_is_one_clear_error(folder, tmp_path, capsys):
    pre = tmp_path / "pre.pt"
    assert (
        main(["profile", "--backbone", "small_vgg", "--source", "batchnorm", "--out", str(pre)])
        == 0
    )
    assert main(["compare", str(pre), str(pre), "--measure", "welch_t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "gaussian_kl" in err and "Traceback" not in err
    assert main(["compare", str(pre), str(pre), "--measure", "no_such_measure"]) == 2
    assert "lognormal_kl" in capsys.readouterr().err


def test_list_commands(capsys):
    assert main(["list", "measures"]) == 0
    out = capsys.readouterr().out
    for name in (
        "lognormal_kl",
        "gaussian_kl",
        "welch_t",
        "wasserstein",
        "ks",
        "js",
        "gram",
        "frechet",
    ):
        assert name in out
    assert main(["list", "layers", "--backbone", "small_vgg"]) == 0
    assert capsys.readouterr().out.split() == st.list_layers(st.load_backbone("small_vgg"))


def test_public_api_names_resolve_to_their_modules_and_match_the_typed_imports():
    """Every st.name is its module's object at run time, and the TYPE_CHECKING imports that
    editors and mypy read name exactly the same objects (a name added to one list only fails)."""
    import ast
    import importlib
    from pathlib import Path

    from smart_transfer import _EXPORTS

    for name, module in _EXPORTS.items():
        assert getattr(st, name) is getattr(
            importlib.import_module(f"smart_transfer.{module}"), name
        )
    tree = ast.parse(Path(st.__file__).read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    )
    typed = {
        alias.asname or alias.name: (node.module or "")
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {k: v for k, v in typed.items() if v} == _EXPORTS
    assert set(st.__all__) - {"__version__"} <= set(typed)
    with pytest.raises(AttributeError):
        st.no_such_name  # noqa: B018


@pytest.mark.slow
def test_demo_runs_end_to_end_on_efficientnet_lite0(tmp_path, capsys):
    """The README's main job, shrunk: advice, five strategies on the same images, test once,
    report."""
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--per-class",
            "3",
            "--epochs",
            "1",
            "--size",
            "32",
            "--test-size",
            "40",
            "--batch-size",
            "16",
            "--auto-budget",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    comp = json.loads((out / "comparison.json").read_text())
    rows = {r["strategy"]: r for r in comp["rows"]}
    assert list(rows) == ["linear-probe", "full-finetune", "smart-kernel", "random-mask", "auto"]
    assert comp["train_images"] + comp["val_images"] == 30 and comp["test_images"] == 40
    for name, r in rows.items():
        sub = json.loads((out / "seed-0" / name / "metrics.json").read_text())
        assert sub["accuracy"] == r["test_accuracy"] and sub["test_images"] == 40, (
            name
        )  # tested once
    assert rows["random-mask"]["frozen_fraction"] == pytest.approx(
        rows["smart-kernel"]["frozen_fraction"]
    )
    assert (
        0.3 < rows["smart-kernel"]["frozen_fraction"] < 0.6
        and rows["full-finetune"]["frozen_fraction"] == 0
    )
    plan = st.FreezePlan.load(out / "seed-0" / "smart-kernel" / "plan.json")
    plan.validate(st.replace_head(st.load_backbone("efficientnet_lite0"), 10))
    assert "quadrant" in (out / "advice.json").read_text()
    page = (out / "report.html").read_text()
    assert "<td>backbone</td><td>efficientnet_lite0</td>" in page and "no trained model" not in page
    assert 'alt="activation_maps"' in page and 'alt="comparison"' in page
    text = capsys.readouterr().out
    assert "One seed" in text and "benchmarks/results/p1" in text and "auto chose:" in text


def test_profile_efficientnet_lite0_over_fashion_mnist_batches():
    """st.profile(st.load_backbone("efficientnet_lite0"), loader) over real Fashion-MNIST."""
    try:
        ds = st.data.fashion_mnist("test", download=False)
    except st.DataError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    model = st.load_backbone("efficientnet_lite0")
    tf = st.data.transforms_for(model, train=False, size=32)
    loader = st.data.loader(ds, torch.arange(32), batch_size=16, transform=tf)
    prof = st.profile(model, loader, layers="_blocks.0.*", progress=False)
    assert prof.num_samples == 32
    assert set(prof.names()) == {n for n in st.list_layers(model) if n.startswith("_blocks.0.")}
    bn = st.profile_from_batchnorm(model, layers="_blocks.0.*")
    sim = st.compare(bn, prof, measure="gaussian_kl")
    for scores in sim.scores.values():
        assert torch.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
