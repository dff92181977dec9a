"""Outputs never land on a run's own files, on a user's figures, inside a data folder, and two
runs never share a folder."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from rel_helpers import assert_one_line_error, run_cli, snapshot, temp_files
from run_fixtures import TRAIN, copy_run, make_run

import smart_transfer as st
from smart_transfer._atomic import atomic_write_text
from smart_transfer._paths import RUN_FILES, RUN_MARKER, claim_run_folder
from smart_transfer.errors import ConfigError


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("made"))


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "result.json",
        "samples.safetensors",
        "config.json",
        "log.jsonl",
        ".smart-transfer-run",
    ],
)
def test_report_out_onto_a_run_file_is_refused(made, tmp_path, capsys, name):
    run = copy_run(made[1], tmp_path / "run")
    before = snapshot(run)
    rc, _, err = run_cli(capsys, "report", run, "--out", run / name)
    assert rc == 2
    assert_one_line_error(err, name, "--out")
    assert snapshot(run) == before


def test_report_out_onto_a_checkpoint_file_is_refused(made, tmp_path, capsys):
    run = copy_run(made[1], tmp_path / "run")
    target = next((run / "checkpoints").rglob("state.pt"))
    before = snapshot(run)
    rc, _, err = run_cli(capsys, "report", run, "--out", target)
    assert rc == 2 and "checkpoints/" in err
    assert snapshot(run) == before


def test_every_run_file_is_known_to_the_output_check(made):
    written = {p.relative_to(made[1]).parts[0] for p in made[1].rglob("*")}
    assert written <= RUN_FILES, written - RUN_FILES


def test_report_never_overwrites_a_users_figures(made, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "figures").mkdir(parents=True)
    (mine / "figures" / "samples.png").write_bytes(b"my own picture")
    rc, _, err = run_cli(capsys, "report", made[1], "--out", mine / "report.html")
    assert rc == 2
    assert_one_line_error(err, "figures", "did not write")
    assert (mine / "figures" / "samples.png").read_bytes() == b"my own picture"
    assert sorted(os.listdir(mine)) == ["figures"]


def test_report_figures_are_replaced_as_one_folder(made, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "report.html"
    assert run_cli(capsys, "report", made[1], "--out", out)[0] == 0
    first = sorted(os.listdir(out.parent / "figures"))
    assert ".smart-transfer-figures" in first and len(first) > 2
    assert run_cli(capsys, "report", made[1], "--out", out)[0] == 0  # its own folder: replaced
    assert sorted(os.listdir(out.parent / "figures")) == first
    assert sorted(os.listdir(out.parent)) == ["figures", "report.html"]  # nothing staged is left


def test_report_inside_the_runs_data_folder_is_refused(made, capsys):
    data, run = made
    before = snapshot(data)
    rc, _, err = run_cli(capsys, "report", run, "--out", data / "report.html")
    assert rc == 2
    assert_one_line_error(err, "inside the input folder", str(data))
    assert snapshot(data) == before and not (data / "figures").exists()


def test_train_out_inside_the_data_folder_is_refused(made, capsys):
    data, _ = made
    before = snapshot(data)
    rc, _, err = run_cli(capsys, "train", *TRAIN, "--data", data, "--out", data / "a" / "x")
    assert rc == 2
    assert_one_line_error(err, "inside the input folder", "--data")
    assert snapshot(data) == before


def test_python_train_out_inside_the_data_folder_is_refused(made, tmp_path):
    data, _ = made
    ds = st.data.image_folder(data)
    with pytest.raises(ConfigError, match="inside the input folder"):
        st.train(
            "small_vgg",
            ds,
            strategy="head-only",
            epochs=1,
            size=16,
            out=data / "run",
            progress=False,
        )


def test_advise_out_inside_the_data_folder_is_refused(made, capsys):
    data, _ = made
    rc, _, err = run_cli(
        capsys, "advise", "--backbone", "small_vgg", "--data", data, "--out", data / "advice.json"
    )
    assert rc == 2 and "inside the input folder" in err and not (data / "advice.json").exists()


# ----------------------------------------------------------------------------- claims


def test_a_folder_is_claimed_by_exactly_one_of_two_racing_runs(tmp_path):
    folder = tmp_path / "run"
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def claim():
        barrier.wait()
        try:
            claim_run_folder(folder)
            outcomes.append("claimed")
        except ConfigError as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("claimed") == 1, outcomes
    assert all(
        "claimed by another run" in o or "already holds a run" in o
        for o in outcomes
        if o != "claimed"
    )
    assert (folder / RUN_MARKER).is_file()


@pytest.mark.slow
def test_two_train_processes_with_one_out_one_is_refused(made, tmp_path):
    import subprocess
    import sys

    data, _ = made
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "smart_transfer.cli",
        "train",
        *TRAIN,
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    src = os.path.dirname(os.path.dirname(st.__file__))  # this checkout, not another
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert len(err.strip().splitlines()) == 1 and str(out) in err
    assert "already holds a run" in err or "claimed by another run" in err
    # the folder holds one run: its config and the checkpoints of that run only
    units = list((out / "checkpoints").rglob("epoch-*"))
    assert len(units) == 1


def test_saving_a_result_into_another_runs_folder_is_refused(made, tmp_path):
    result = st.TrainResult.load(made[1])
    other = copy_run(made[1], tmp_path / "other")
    before = snapshot(other)
    with pytest.raises(ConfigError, match="already holds a run"):
        result.save(other)
    assert snapshot(other) == before
    result.save(tmp_path / "fresh")  # a new folder is claimed and written
    assert (tmp_path / "fresh" / RUN_MARKER).is_file()
    assert torch.equal(
        st.TrainResult.load(tmp_path / "fresh").model.state_dict()["features.0.weight"],
        result.model.state_dict()["features.0.weight"],
    )


# ----------------------------------------------------------------------------- symlinks


def test_writing_through_ones_own_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and not temp_files(tmp_path)


@pytest.mark.skipif(
    not hasattr(os, "lchown") or os.geteuid() != 0, reason="needs root to chown a link"
)
def test_a_symlink_owned_by_another_user_is_refused(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    os.lchown(link, 4242, 4242)
    with pytest.raises(ConfigError, match="symlink owned by another user"):
        atomic_write_text(link, "overwrite")
    assert target.read_text() == "keep" and link.is_symlink()
