"""A full disk or a file-size limit while writing: one line naming the file, nothing half
written left behind."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys

import pytest
from rel_helpers import assert_one_line_error, run_cli, snapshot, temp_files
from run_fixtures import TRAIN, make_data, make_run

import smart_transfer._atomic as atomic
from smart_transfer.errors import StorageError


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("made"))


def _limited(kib: int):
    def set_limit():  # SIGXFSZ is ignored by Python, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    return set_limit


def _cli(args, cwd, kib):
    import smart_transfer

    src = os.path.dirname(os.path.dirname(smart_transfer.__file__))  # this checkout, not another
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    return subprocess.run(
        [sys.executable, "-m", "smart_transfer.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        preexec_fn=_limited(kib),
    )


def _leftovers(root):
    return [
        str(p)
        for p in root.rglob("*")
        if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))
    ]


def test_train_under_a_file_size_limit_names_the_checkpoint(tmp_path):
    data = make_data(tmp_path / "data")
    out = tmp_path / "run"
    done = _cli(["train", *TRAIN, "--data", data, "--out", out], tmp_path, kib=400)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(
        done.stderr, "file-size limit reached while writing", "epoch-000001", "ulimit -f"
    )
    assert ".tmp" not in done.stderr
    assert not _leftovers(out) and not list(out.rglob("epoch-*"))


def test_report_under_a_file_size_limit_leaves_no_figures(made, tmp_path):
    out = tmp_path / "rep" / "report.html"
    done = _cli(["report", made[1], "--out", out], tmp_path, kib=60)  # figures fit, the page not
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, "report.html", "ulimit -f")
    assert not (out.parent / "figures").exists() and not _leftovers(tmp_path)
    assert not out.exists() and not out.parent.exists()  # not even the folder it made


def test_report_on_a_full_disk_mid_figures_cleans_up(made, tmp_path, capsys, monkeypatch):
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 3:  # the third figure
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    before = snapshot(made[1])
    out = tmp_path / "report.html"
    rc, _, err = run_cli(capsys, "report", made[1], "--out", out)
    assert rc == 2
    assert_one_line_error(err, "disk full while writing", ".png")
    assert os.listdir(tmp_path) == [] and snapshot(made[1]) == before


@pytest.mark.parametrize(
    "command",
    [
        ("profile", "--backbone", "small_vgg", "--source", "batchnorm"),
    ],
)
def test_profile_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch, command):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    rc, _, err = run_cli(capsys, *command, "--out", tmp_path / "p.pt")
    assert rc == 2
    assert_one_line_error(err, "disk full while writing", "p.pt")
    assert not temp_files(tmp_path) and not (tmp_path / "p.pt").exists()


def test_advise_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    data = make_data(tmp_path / "data")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    rc, _, err = run_cli(
        capsys,
        "advise",
        "--backbone",
        "small_vgg",
        "--data",
        data,
        "--size",
        "16",
        "--per-class",
        "6",
        "--out",
        tmp_path / "advice.json",
    )
    assert rc == 2
    assert_one_line_error(err, "disk full while writing", "advice.json")
    assert not temp_files(tmp_path)


def test_profile_out_in_proc_is_one_line(capsys):
    rc, _, err = run_cli(
        capsys, "profile", "--backbone", "small_vgg", "--source", "batchnorm", "--out", "/proc/x.pt"
    )
    assert rc == 2
    assert_one_line_error(err, "/proc/x.pt")


def test_torch_stream_writer_failure_is_named():
    err = atomic.storage_error(
        RuntimeError(
            "[enforce fail at inline_container.cc:783] . "
            "PytorchStreamWriter failed writing file data/0: file write failed"
        ),
        "p.pt",
    )
    assert isinstance(err, StorageError) and "'p.pt'" in str(err)


def test_a_raw_enospc_anywhere_is_one_line_in_the_cli(capsys, monkeypatch):
    from smart_transfer import cli

    def boom(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/file.bin")

    monkeypatch.setattr(cli, "cmd_list", boom)
    rc, _, err = run_cli(capsys, "list", "measures")
    assert rc == 2
    assert_one_line_error(err, "disk full while writing", "/somewhere/file.bin")


class _FailingFile:
    """A file whose third write raises ``exc``, as a signal or a full disk would mid-save."""

    def __init__(self, f, exc):
        self._f, self._exc, self._n = f, exc, 0

    def write(self, data):
        self._n += 1
        if self._n == 3:
            raise self._exc
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return self._f.__exit__(*a)


@pytest.mark.parametrize(
    "exc, rc, says",
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (atomic.Terminated(), 143, "terminated"),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "disk full while writing"),
    ],
)
def test_a_signal_or_full_disk_inside_torch_save_is_not_an_internal_error(
    tmp_path, capsys, monkeypatch, exc, rc, says
):
    real = os.fdopen
    monkeypatch.setattr(
        atomic.os, "fdopen", lambda fd, *a, **k: _FailingFile(real(fd, *a, **k), exc)
    )
    out = tmp_path / "p.pt"
    code, _, err = run_cli(
        capsys, "profile", "--backbone", "small_vgg", "--source", "batchnorm", "--out", out
    )
    assert code == rc, err
    assert says in err and "internal error" not in err and "inline_container" not in err
    assert not temp_files(tmp_path) and not out.exists()
