"""No output can destroy an input: every writer checks its paths before any work.

Each case runs a command (or a save) whose output path names an input, another output, or a
place that cannot be written, and asserts: exit 2 (or ConfigError), one line naming the
option, every file already on disk unchanged byte for byte, no temporary file left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from rel_helpers import assert_one_line_error, batches, run_cli, snapshot, temp_files, tiny_model

import smart_transfer as st
from smart_transfer._paths import check_outputs
from smart_transfer.errors import ConfigError

SRC = str(Path(st.__file__).resolve().parents[1])


@pytest.fixture
def profiles(work: Path) -> tuple[Path, Path]:
    model = tiny_model()
    pre = st.profile_from_batchnorm(model).save(work / "pre.pt")
    new = st.profile(model, batches(), progress=False).save(work / "new.pt")
    torch.save(model.state_dict(), work / "w.pt")
    return pre, new


# ------------------------------------------------------------------ output == input (CLI)


def _cases(image_dir: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    """(arguments, names the error must contain); every output names an input or an output."""
    return [
        (["compare", "pre.pt", "new.pt", "--out", "new.pt"], ("--out", "new")),
        (["compare", "pre.pt", "new.pt", "--out", "pre.pt"], ("--out", "pre")),
        (["compare", "pre.pt", "new.pt", "--plan", "new.pt"], ("--plan", "new")),
        (["compare", "pre.pt", "new.pt", "--out", "./sub/../new.pt"], ("--out", "new")),
        (["compare", "pre.pt", "new.pt", "--out", "link.pt"], ("--out", "new")),  # symlink
        (["compare", "pre.pt", "new.pt", "--out", "hard.pt"], ("--out", "new")),  # hard link
        (
            ["compare", "pre.pt", "new.pt", "--out", "same.json", "--plan", "same.json"],
            ("--out", "--plan", "same.json"),
        ),
        (
            ["profile", "--backbone", "w.pt", "--source", "batchnorm", "--out", "w.pt"],
            ("--out", "--backbone"),
        ),
        (
            [
                "profile",
                "--backbone",
                "small_vgg",
                "--data",
                str(image_dir),
                "--out",
                str(image_dir),
            ],
            ("--out", "folder"),
        ),
        (
            ["demo", "--backbone", "out/comparison.json", "--out", "out"],
            ("comparison.json", "--backbone"),
        ),
        (["demo", "--backbone", "out/advice.json", "--out", "out"], ("advice.json", "--backbone")),
        (  # demo replaces its strategy folders: an input inside one would be deleted
            ["demo", "--backbone", "out/seed-0/smart-kernel/w.pt", "--out", "out"],
            ("smart-kernel", "holds the input --backbone"),
        ),
        (["train", "--data", str(image_dir), "--out", str(image_dir)], ("--out", "--data")),
        (
            ["advise", "--data", str(image_dir), "--out", "pre.pt", "--backbone", "pre.pt"],
            ("--out", "--backbone"),
        ),
        (
            ["plan", "--data", str(image_dir), "--source", "pre.pt", "--out", "pre.pt"],
            ("--out", "--source"),
        ),
        (["evaluate", "sub", "--test-data", "sub/metrics.json"], ("metrics.json", "--test-data")),
        (["report", "sub", "--out", "sub/config.json"], ("--out", "config.json")),
    ]


def test_every_command_refuses_an_output_that_names_an_input(profiles, work, image_dir, capsys):
    (work / "sub").mkdir()
    (work / "sub" / "config.json").write_text("{}")
    (work / "out").mkdir()
    (work / "out" / "comparison.json").write_text('{"keep": 1}')
    (work / "out" / "advice.json").write_text('{"keep": 2}')
    (work / "out" / "seed-0" / "smart-kernel").mkdir(parents=True)
    (work / "out" / "seed-0" / "smart-kernel" / "w.pt").write_bytes(b"weights")
    (work / "same.json").write_text("old")
    os.symlink(work / "new.pt", work / "link.pt")
    os.link(work / "new.pt", work / "hard.pt")
    before, before_images = snapshot(work), snapshot(image_dir)
    cases = _cases(image_dir)
    for args, names in cases:
        start = time.perf_counter()
        rc, _, err = run_cli(capsys, *args)
        assert rc == 2, (args, err)
        assert_one_line_error(err, *names)
        assert time.perf_counter() - start < 5, args  # refused before any work
        assert snapshot(work) == before, args
        assert snapshot(image_dir) == before_images, args
        assert temp_files(work) == [], args
    assert len(cases) == 17


@pytest.mark.parametrize(
    ("out", "names"),
    [
        ("", ("--out", "empty")),
        ("folder", ("--out", "existing folder")),
        ("file.txt/p.pt", ("lies below", "file.txt")),
        ("file.txt/deeper/p.pt", ("lies below", "file.txt")),
        ("dangling.pt", ("dangling symlink",)),
        ("/dev/null", ("not a regular file",)),
    ],
)
def test_unwritable_output_paths_are_one_line_before_any_work(work, capsys, out, names):
    (work / "folder").mkdir()
    (work / "file.txt").write_text("keep")
    os.symlink(work / "nowhere" / "x", work / "dangling.pt")
    before = snapshot(work)
    rc, _, err = run_cli(
        capsys, "profile", "--backbone", "small_vgg", "--source", "batchnorm", "--out", out
    )
    assert rc == 2
    assert_one_line_error(err, *names)
    assert snapshot(work) == before and temp_files(work) == []


def test_read_only_output_folder_fails_in_the_first_second(work, capsys, monkeypatch):
    """``demo --out`` into a read-only folder stops before loading anything (not after training)."""
    ro = work / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw)
    )
    loaded = []
    monkeypatch.setattr(st, "load_backbone", lambda *a, **k: loaded.append(a))
    start = time.perf_counter()
    rc, _, err = run_cli(capsys, "demo", "--out", str(ro / "run"))
    assert rc == 2 and time.perf_counter() - start < 2
    assert_one_line_error(err, "read-only", str(ro))
    assert loaded == [] and not (ro / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_for_real(work, capsys):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, _, err = run_cli(
            capsys,
            "profile",
            "--backbone",
            "small_vgg",
            "--source",
            "batchnorm",
            "--out",
            str(ro / "p.pt"),
        )
        assert rc == 2
        assert_one_line_error(err, "read-only")
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------ the library's save methods


def test_save_methods_check_their_path_first(profiles, work):
    prof = st.ActivationProfile.load(profiles[1])
    plan = st.FreezePlan.from_masks(
        tiny_model(), {"features.0.weight": torch.ones(4, dtype=torch.bool)}
    )
    (work / "file.txt").write_text("keep")
    before = snapshot(work)
    for save in (prof.save, plan.save):
        for bad, says in (
            (work, "existing folder"),
            (work / "file.txt" / "x", "lies below"),
            ("", "empty|names a folder"),
        ):
            with pytest.raises(ConfigError, match=says):
                save(bad)
    assert snapshot(work) == before and temp_files(work) == []
    # a missing folder is created, as for every writer
    assert st.FreezePlan.load(plan.save(work / "a" / "b" / "plan.json")) == plan


def test_check_outputs_compares_resolved_paths(work):
    (work / "in.pt").write_bytes(b"x")
    os.symlink(work / "in.pt", work / "alias.pt")
    with pytest.raises(ConfigError, match="--out='alias.pt' is the input --in"):
        check_outputs({"--out": "alias.pt"}, {"--in": work / "in.pt"})
    with pytest.raises(ConfigError, match="--a and --b both name"):
        check_outputs({"--b": "x.json", "--a": work / "x.json"})
    # a backbone name or a data set name is not a path: harmless
    assert check_outputs({"--out": "p.pt"}, {"--backbone": "small_vgg", "--data": None}) == {
        "--out": Path("p.pt")
    }
    assert sorted(os.listdir(work)) == ["alias.pt", "in.pt"]  # nothing created


# ------------------------------------------------------------------ signals during a save


# A job started in the background of a non-interactive shell inherits SIGINT as ignored, and
# Python then installs no handler for it: the child restores the default, as a terminal has it.
_SIGINT_DEFAULT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def _child(code: str, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", _SIGINT_DEFAULT + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:  # what the command prints first, then "ready"
        if line.strip() == "ready":
            return
    raise AssertionError(proc.stderr.read() if proc.stderr else "child ended early")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_library_save_leaves_the_old_file_and_no_temp_file(work, sig):
    (work / "big.bin").write_bytes(b"old" * 1000)
    before = snapshot(work)
    proc = _child(
        """
        import sys, time
        from smart_transfer._atomic import atomic_open
        with atomic_open("big.bin", "wb") as f:
            f.write(b"new" * 10_000_000)
            print("ready", flush=True)
            time.sleep(60)
        """,
        work,
    )
    _wait_ready(proc)
    assert temp_files(work)  # the half-written temporary file exists now
    proc.send_signal(sig)
    rc = proc.wait(timeout=30)
    # SIGTERM unwinds as SystemExit(143); an uncaught KeyboardInterrupt ends by SIGINT itself
    assert rc == (143 if sig == signal.SIGTERM else -signal.SIGINT)
    assert snapshot(work) == before and temp_files(work) == []


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_signal_during_a_cli_command_is_one_line_and_keeps_files(work, sig, code, word):
    model = tiny_model()
    st.profile_from_batchnorm(model).save(work / "pre.pt")
    st.profile(model, batches(), progress=False).save(work / "new.pt")
    (work / "sim.json").write_text("old result")
    before = snapshot(work)
    proc = _child(
        """
        import sys, time
        import smart_transfer.cli as cli
        from smart_transfer._atomic import atomic_open
        def slow_write(path, obj):
            with atomic_open(path, "w", encoding="utf-8") as f:
                f.write("{")
                print("ready", flush=True)
                time.sleep(60)
        cli._write_json = slow_write
        sys.exit(cli.main(["compare", "pre.pt", "new.pt", "--measure", "gaussian_kl",
                           "--out", "sim.json"]))
        """,
        work,
    )
    _wait_ready(proc)
    proc.send_signal(sig)
    rc = proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr else ""
    assert rc == code, err
    assert len(err.strip().splitlines()) == 1 and word in err and "Traceback" not in err
    assert snapshot(work) == before and temp_files(work) == []
