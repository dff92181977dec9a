"""The run spec: config.json round-trips through RunSpec, old configs load or fail in one line,
strategy options are typed and checked before any work, advice is an Advice after load."""

from __future__ import annotations

import inspect
import json
from dataclasses import FrozenInstanceError, fields

import pytest
import torch
from tiny_images import make_images

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError
from smart_transfer.spec import LR_GRID, SCHEMA_VERSION, DataSpec, Recipe, RunSpec
from smart_transfer.strategies import get_strategy
from smart_transfer.strategies.advice import Advice


@pytest.fixture(scope="module")
def data():
    x, y = make_images(90)
    return st.data.arrays(x, y)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("spec") / "run"
    r = st.train(
        "small_vgg",
        data,
        strategy="auto",
        candidates=["linear-probe"],
        cv=0,
        size=16,
        steps=2,
        lr_grid=[0.01, 0.02],
        warmup=0.2,
        seed=3,
        out=out,
        progress=False,
    )
    return r, out


def test_config_json_round_trips_through_the_spec(run):
    _, out = run
    spec = RunSpec.from_json(out / "config.json")
    assert spec.recipe == Recipe(steps=2, lr_grid=(0.01, 0.02), warmup=0.2)
    assert (spec.strategy, spec.seed, spec.size, spec.backbone) == ("auto", 3, 16, "small_vgg")
    assert spec.options == {"candidates": ["linear-probe"], "cv": 0} and spec.data.seed == 3
    assert RunSpec.from_dict(spec.to_dict()) == spec
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["schema_version"] == SCHEMA_VERSION
    for key, value in spec.to_dict().items():  # config.json is to_dict() plus facts
        assert cfg[key] == value, key
    assert (
        cfg["num_classes"] == 3 and cfg["samples"] == 90 and cfg["steps"] == 2
    )  # facts beside the spec


def test_a_spec_with_every_field_changed_round_trips():
    spec = RunSpec(
        backbone="resnet18",
        data=DataSpec(
            spec="photos",
            per_class=5,
            val_fraction=0.3,
            test_fraction=0.1,
            test_data="/t",
            on_error="skip",
            seed=4,
        ),
        recipe=Recipe(
            steps=None,
            epochs=3,
            lr=0.1,
            lr_grid=None,
            head_lr_mult=2.0,
            weight_decay=0.0,
            optimizer="sgd",
            batch_size=8,
            warmup=0.0,
            patience=None,
            eval_every=5,
            amp="bf16",
            channels_last=False,
        ),
        strategy="smart-kernel",
        options={"quantile": 0.3},
        head="mlp",
        size=64,
        device="cpu",
        seed=4,
        source="pre.pt",
        transform="custom",
        sync_bn=True,
    )
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert all(
        getattr(spec, f.name) != getattr(RunSpec(), f.name)
        for f in fields(RunSpec)
        if f.name != "backbone_is_name"
    )


def test_an_old_schema_1_config_loads():
    old = {
        "schema_version": 1,
        "version": "0.3.0",
        "strategy": "smart-kernel",
        "options": {"quantile": 0.3},
        "head": "linear",
        "backbone": "small_vgg",
        "backbone_is_name": True,
        "num_classes": 3,
        "size": 16,
        "seed": 2,
        "epochs": 3,
        "recipe": {"epochs": 3, "lr": 0.01, "batch_size": 8, "optimizer": "adamw"},
        "device": "cpu",
        "sync_bn": False,
        "transform": "backbone",
        "source": "batchnorm",
        "data": {
            "spec": "tiny.npz",
            "per_class": 20,
            "val_fraction": 0.2,
            "test_fraction": None,
            "seed": 2,
            "test_data": None,
            "cli": {"data": "tiny.npz", "on_error": "skip", "lr": 0.01},
        },
    }
    spec = RunSpec.from_dict(old)
    assert spec.recipe.epochs == 3 and spec.recipe.lr == 0.01 and spec.recipe.batch_size == 8
    assert spec.recipe.lr_grid == LR_GRID  # what schema 1 did not record keeps today's default
    assert spec.data == DataSpec(spec="tiny.npz", per_class=20, on_error="skip", seed=2)
    assert spec.options == {"quantile": 0.3} and spec.seed == 2
    first = {
        "schema_version": 1,
        "strategy": "full-finetune",
        "epochs": 4,
        "num_classes": 2,
    }  # no recipe yet
    assert RunSpec.from_dict(first).recipe.epochs == 4


@pytest.mark.parametrize("version", [None, 0, 3, "2", True])
def test_an_unknown_schema_version_is_one_line_naming_it(version):
    cfg = {"num_classes": 3, "version": "9.9"}
    if version is not None:
        cfg["schema_version"] = version
    with pytest.raises(DataError) as e:
        RunSpec.from_dict(cfg)
    text = str(e.value)
    assert f"schema_version {version!r}" in text and "\n" not in text and "9.9" in text


def test_recipe_defaults_are_written_once():
    """train()'s keyword defaults are the Recipe's fields, not copies."""
    sig = inspect.signature(st.train).parameters
    for f in fields(Recipe):
        if f.name in ("steps", "lr", "lr_grid"):  # None there: resolved by Recipe.build
            assert sig[f.name].default is None
        elif f.name != "epochs":
            assert sig[f.name].default == f.default, f.name


@pytest.mark.parametrize(
    "options, named, allowed",
    [
        ({"quantile": 2}, "quantile", "[0, 1]"),
        ({"quantile": "half"}, "quantile", "[0, 1]"),
        ({"bn_stats": "maybe"}, "bn_stats", "'adapt', 'freeze', 'update'"),
        ({"init": 3}, "init", "a name"),
        ({"head": "deep"}, "head", "'linear', 'mlp'"),
        ({"quantiles": []}, "quantiles", "non-empty list"),
        ({"invert": "yes"}, "invert", "true or false"),
    ],
)
def test_option_types_and_ranges_are_refused_before_any_work(
    data, tmp_path, monkeypatch, options, named, allowed
):
    from smart_transfer import api

    def no_data(*a, **k):
        raise AssertionError("data was read")

    monkeypatch.setattr(api, "_dataset_and_indices", no_data)
    monkeypatch.setattr(api, "_resolve_backbone", no_data)
    with pytest.raises(ConfigError) as e:
        st.train("small_vgg", data, strategy="smart-kernel", out=tmp_path / "run", **options)
    assert f"{named}=" in str(e.value) and allowed in str(e.value)
    assert not (tmp_path / "run").exists()


def test_each_strategy_declares_its_options_as_a_dataclass():
    from smart_transfer.strategies import smart
    from smart_transfer.strategies.auto import run_auto

    kernel = get_strategy("smart-kernel").options_type
    assert [f.name for f in fields(kernel)] == list(get_strategy("smart-kernel").options)
    d = {f.name: f.default for f in fields(kernel)}
    assert d["quantiles"] == smart.QUANTILES and d["bn_stats"] == "adapt" and d["head"] == "linear"
    assert all(f.metadata["help"] for f in fields(kernel))
    auto = {f.name: f.default for f in fields(get_strategy("auto").options_type)}
    assert auto == {
        k: p.default for k, p in inspect.signature(run_auto).parameters.items() if k != "ctx"
    }
    typed = get_strategy("linear-probe").check({"C": 0.5, "refit": False})
    assert (typed.C, typed.refit, typed.classifier) == (0.5, False, "logistic")
    with pytest.raises(FrozenInstanceError):
        typed.C = 1  # type: ignore[misc]


def test_advice_is_an_advice_after_train_and_after_load(run):
    r, out = run
    assert isinstance(r.advice, Advice)
    loaded = st.TrainResult.load(out)
    assert isinstance(loaded.advice, Advice) and loaded.advice == r.advice


def test_advise_is_the_advice_auto_computed(data, run):
    """One advice implementation: st.advise on the run's training images equals auto's advice."""
    r, out = run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["samples"] == 90
    torch.manual_seed(0)
    a = st.advise("small_vgg", data, size=16, max_images=10_000)
    assert a.quadrant == r.advice.quadrant and a.candidates == r.advice.candidates


def test_the_report_reads_the_typed_spec(tmp_path):
    from smart_transfer.report.run import RunData

    cfg = RunSpec(strategy="lp-ft", size=32, options={"C": [0.1, 1.0]}, source="pre.pt").to_dict()
    run = RunData(path=tmp_path, config=cfg)
    assert run.spec == RunSpec.from_dict(cfg) and run.strategy == "lp-ft" and run.source == "pre.pt"
    assert run.setting("size") == 32 and run.setting("options") == {"C": [0.1, 1.0]}
    assert (
        RunData(path=tmp_path, config={"strategy": "head-only"}).strategy == "head-only"
    )  # no spec: as written
    assert (
        RunData(path=tmp_path, config={"schema_version": 2}).setting("strategy") is None
    )  # not recorded


def test_a_result_carries_its_spec(run):
    r, out = run
    assert r.spec == st.TrainResult.load(out).spec == RunSpec.from_json(out)
    assert r.spec.data.test_data is None and r.spec.recipe.warmup == 0.2


def test_the_spec_gives_the_strategy_options_typed():
    spec = RunSpec(strategy="smart-kernel", options={"quantile": 0.3}, head="mlp")
    typed = spec.typed_options()
    assert type(typed) is get_strategy("smart-kernel").options_type
    assert (typed.quantile, typed.head, typed.bn_stats) == (0.3, "mlp", "adapt")
    with pytest.raises(ConfigError, match="quantile=1.5"):
        RunSpec(strategy="smart-kernel", options={"quantile": 1.5}).typed_options()
