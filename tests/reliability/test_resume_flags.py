"""--resume refuses settings it cannot honour, naming the flag, and never records one value
while using another; damaged run folders are one line naming the file."""

from __future__ import annotations

import json

import pytest
import torch
from rel_helpers import assert_one_line_error, run_cli, snapshot
from run_fixtures import copy_run, make_run

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("made"))


@pytest.mark.parametrize(
    "flags, named",
    [
        (("--strategy", "linear-probe"), "--strategy"),
        (("--epochs", "9"), "--epochs"),
        (("--lr", "0.5"), "--lr"),
        (("--ep", "9"), "--epochs"),  # an abbreviation is the same flag
        (("--weight-decay", "0.1"), "--weight-decay"),
        (("--seed", "3"), "--seed"),
        (("--option", "layer_decay=0.5"), "--option"),
        (("--lr=0.001", "--batch-size", "4"), "--batch-size"),
    ],
)
def test_resume_with_a_different_flag_is_refused(made, tmp_path, capsys, flags, named):
    run = copy_run(made[1], tmp_path / "run")
    before = snapshot(run)
    rc, _, err = run_cli(capsys, "train", "--resume", run, *flags)
    assert rc == 2
    assert_one_line_error(err, named, "--resume")
    assert snapshot(run) == before


def test_resume_with_the_same_values_goes_on(made, tmp_path, capsys):
    run = copy_run(made[1], tmp_path / "run")
    rc, _, err = run_cli(
        capsys, "train", "--resume", run, "--lr", "0.001", "--epochs", "1", "--no-progress"
    )
    assert rc == 0, err


def test_python_resume_with_another_lr_is_refused_before_any_work(made, tmp_path, monkeypatch):
    run = copy_run(made[1], tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"]["lr"] == 0.001
    before = snapshot(run)
    from smart_transfer import api

    def no_data(*a, **k):  # the refusal comes before the data is read
        raise AssertionError("data was read")

    monkeypatch.setattr(api, "_dataset_and_indices", no_data)
    with pytest.raises(ConfigError, match=r"lr=0.5: the run was started with lr=0.001"):
        st.train(
            "small_vgg",
            None,
            strategy="full-finetune",
            epochs=1,
            size=16,
            out=run,
            resume=True,
            lr=0.5,
        )
    assert snapshot(run) == before


def _resume(run, capsys):
    return run_cli(capsys, "train", "--resume", run, "--no-progress")


def test_resume_with_invalid_json_config_names_the_file(made, tmp_path, capsys):
    run = copy_run(made[1], tmp_path / "run")
    (run / "config.json").write_text("{not json")
    rc, _, err = _resume(run, capsys)
    assert rc == 2
    assert_one_line_error(err, "config.json", "not valid JSON", "damaged")


@pytest.mark.parametrize(
    "content", ["[1, 2, 3]", '{"num_classes": "three"}', '{"num_classes": 3, "data": 5}']
)
def test_resume_with_a_config_of_the_wrong_shape_names_the_file(made, tmp_path, capsys, content):
    run = copy_run(made[1], tmp_path / "run")
    (run / "config.json").write_text(content)
    rc, _, err = _resume(run, capsys)
    assert rc == 2
    assert_one_line_error(err, "config.json", "damaged")


def _checkpoint_state(run):
    from smart_transfer.training.checkpoint import STATE, latest

    return latest(run / "checkpoints" / "full-finetune") / STATE


def test_resume_with_a_state_missing_rng_names_the_file(made, tmp_path, capsys):
    run = copy_run(made[1], tmp_path / "run")
    path = _checkpoint_state(run)
    state = torch.load(path, weights_only=True)
    del state["rng"]
    torch.save(state, path)
    (run / "checkpoints" / "full-finetune" / "done.json").unlink()  # the run did not finish
    rc, _, err = _resume(run, capsys)
    assert rc == 2
    assert_one_line_error(err, "state.pt", "'rng'", "start the run again")


def test_resume_with_a_checkpoint_of_another_backbone_is_one_line(made, tmp_path, capsys):
    from smart_transfer.training.checkpoint import WEIGHTS

    run = copy_run(made[1], tmp_path / "run")
    unit = _checkpoint_state(run).parent
    other = st.load_backbone("efficientnet_lite0", pretrained=False).state_dict()
    st.training.checkpoint.save_weights(unit / WEIGHTS, other, metadata={"epoch": "1"})
    (run / "checkpoints" / "full-finetune" / "done.json").unlink()
    cfg = json.loads((run / "config.json").read_text())
    cfg["epochs"] = 2
    cfg["recipe"]["epochs"] = 2
    (run / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _resume(run, capsys)
    assert rc == 2
    assert_one_line_error(err, "does not fit this model", "epoch-000001")
    assert len(err) < 600


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda r: r.pop("history"), "'history'"),
        (lambda r: r.pop("strategy"), "'strategy'"),
        (lambda r: r.update(val_accuracy="high"), "val_accuracy"),
    ],
)
def test_evaluate_with_a_damaged_result_names_the_file(made, tmp_path, capsys, edit, named):
    run = copy_run(made[1], tmp_path / "run")
    res = json.loads((run / "result.json").read_text())
    edit(res)
    (run / "result.json").write_text(json.dumps(res))
    rc, _, err = run_cli(capsys, "evaluate", run)
    assert rc == 2
    assert_one_line_error(err, "result.json", named)


@pytest.mark.parametrize("value", ['"3"', "3.5", "true", "null"])
def test_evaluate_with_num_classes_of_the_wrong_type_names_the_file(made, tmp_path, capsys, value):
    run = copy_run(made[1], tmp_path / "run")
    text = (run / "config.json").read_text()
    cfg = json.loads(text)
    cfg["num_classes"] = json.loads(value)
    (run / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli(capsys, "evaluate", run)
    assert rc == 2
    assert_one_line_error(err, "config.json", "num_classes")


def test_load_of_a_damaged_run_is_a_data_error(made, tmp_path):
    run = copy_run(made[1], tmp_path / "run")
    (run / "result.json").write_text("")
    with pytest.raises(DataError, match="result.json.*not valid JSON"):
        st.TrainResult.load(run)
