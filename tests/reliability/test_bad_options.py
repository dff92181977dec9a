"""Every option value is checked before any work: one line, exit 2, naming the option."""

from __future__ import annotations

import pytest
from rel_helpers import assert_one_line_error, run_cli
from run_fixtures import TRAIN, make_data

import smart_transfer as st
from smart_transfer import cli
from smart_transfer.errors import ConfigError
from smart_transfer.strategies.probe import _classifier


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


@pytest.fixture
def no_data_read(monkeypatch):
    """Fail the test if the command reads its data: the check must come first."""

    def boom(*a, **k):
        raise AssertionError("the data was read before the options were checked")

    monkeypatch.setattr(cli, "_draw", boom)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "nan"),
        ("--lr", "-1"),
        ("--lr", "0"),
        ("--lr", "inf"),
        ("--lr", "abc"),
        ("--weight-decay", "-1"),
        ("--weight-decay", "nan"),
        ("--batch-size", "0"),
        ("--batch-size", "-3"),
        ("--epochs", "0"),
        ("--epochs", "1.5"),
        ("--patience", "0"),
        ("--val-fraction", "1.5"),
        ("--val-fraction", "0"),
    ],
)
def test_bad_training_numbers_are_one_line(tmp_path, capsys, data, no_data_read, flag, value):
    rc, _, err = run_cli(
        capsys, "train", *TRAIN, "--data", data, "--out", tmp_path / "run", flag, value
    )
    assert rc == 2
    assert_one_line_error(err, flag, value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "strategy, option, named",
    [
        ("smart-kernel", "quantiles=abc", "quantiles"),
        ("smart-kernel", "quantiles=0.3", "quantiles"),
        ("smart-kernel", "quantile=1.5", "quantile"),
        ("smart-kernel", "bn_prior=-2", "bn_prior"),
        ("smart-kernel", "measure=gausian_kl", "gausian_kl"),
        ("linear-probe", "C=-1", "C"),
        ("linear-probe", "C=[1,0]", "C"),
        ("linear-probe", "refit=maybe", "refit"),
        ("full-finetune", "layer_decay=2", "layer_decay"),
        ("auto", "cv=1", "cv"),
    ],
)
def test_bad_strategy_options_are_one_line_before_any_work(
    tmp_path, capsys, data, no_data_read, strategy, option, named
):
    args = [a if a != "full-finetune" else strategy for a in TRAIN]
    rc, _, err = run_cli(
        capsys, "train", *args, "--data", data, "--out", tmp_path / "run", "--option", option
    )
    assert rc == 2
    assert_one_line_error(err, named)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"lr": float("nan")}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"batch_size": 0}, "batch_size"),
        ({"warmup": 1.0}, "warmup"),
        ({"C": -1}, "C"),
        ({"patience": 0}, "patience"),
    ],
)
def test_python_train_checks_values_before_reading_data(kw, named):
    strategy = "linear-probe" if "C" in kw else "full-finetune"
    with pytest.raises(ConfigError, match=named):
        st.train("small_vgg", None, strategy=strategy, epochs=1, size=16, progress=False, **kw)


def test_the_probe_refuses_a_bad_c_with_a_config_error_not_sklearns():
    with pytest.raises(ConfigError, match=r"option C=-1"):
        _classifier(-1)
    with pytest.raises(ConfigError, match=r"option C=nan"):
        _classifier(float("nan"))
    assert _classifier(0.5).C == 0.5


def test_good_values_still_pass(tmp_path, capsys, data):
    rc, _, err = run_cli(
        capsys,
        "train",
        *TRAIN,
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--lr",
        "2e-3",
        "--weight-decay",
        "0",
        "--option",
        "layer_decay=0.8",
    )
    assert rc == 0, err
