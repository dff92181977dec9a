"""The CLI rule, for every subcommand: a user's mistake is one line and exit 2; an internal
failure is one line, exit 1 and the hint ``--debug``; a traceback only with ``--debug``;
Ctrl-C is one line and exit 130."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from rel_helpers import assert_one_line_error, batches, run_cli, tiny_model

import smart_transfer as st
from smart_transfer import cli


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


SUBCOMMANDS = _subcommands()


def test_the_known_subcommands_are_all_covered():
    assert {"demo", "profile", "compare", "list"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_a_usage_mistake_is_one_line_exit_2(command, capsys):
    rc, _, err = run_cli(capsys, command, "--no-such-option")
    assert rc == 2
    assert_one_line_error(err, "--help")


def _patched(monkeypatch, command: str, exc: BaseException) -> None:
    """Make ``command`` raise ``exc`` from inside its work, whatever its arguments."""
    real = cli.build_parser

    def build() -> argparse.ArgumentParser:
        parser = real()

        def func(args: argparse.Namespace) -> int:
            raise exc

        parser.parse_args = lambda argv=None, namespace=None: argparse.Namespace(  # type: ignore[method-assign]
            command=command, func=func
        )
        return parser

    monkeypatch.setattr(cli, "build_parser", build)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_outcome_of_every_subcommand(command, capsys, monkeypatch):
    # a user's mistake (any SmartTransferError): one line, exit 2
    _patched(monkeypatch, command, st.DataError("image folder x does not exist; check the path."))
    rc, _, err = run_cli(capsys, command)
    assert rc == 2
    assert_one_line_error(err, "image folder x does not exist")
    # an internal failure: one line naming it, exit 1, the --debug hint, no traceback
    _patched(monkeypatch, command, ZeroDivisionError("division by zero\nsecond line"))
    rc, _, err = run_cli(capsys, command)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("internal error: ZeroDivisionError: division by zero")
    assert "--debug" in lines[0]
    # the traceback appears with --debug, before or after the subcommand
    for argv in (["--debug", command], [command, "--debug"]):
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    # Ctrl-C: one line, exit 130
    _patched(monkeypatch, command, KeyboardInterrupt())
    rc, _, err = run_cli(capsys, command)
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ real mistakes, real commands


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    model = tiny_model()
    st.profile_from_batchnorm(model).save("pre.pt")
    st.profile(model, batches(), progress=False).save("new.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a profile")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["profile", "--backbone", "nosuch", "--out", "p.pt"], ("unknown backbone 'nosuch'",)),
        (
            ["profile", "--backbone", "small_vgg", "--data", "missing_dir", "--out", "p.pt"],
            ("missing_dir", "does not exist"),
        ),
        (
            ["profile", "--backbone", "small_vgg", "--size", "0", "--data", "x", "--out", "p.pt"],
            ("size",),
        ),
        (["compare", "pre.pt", "nothere.pt"], ("nothere.pt",)),
        (["compare", "pre.pt", "junk.pt"], ("junk.pt", "not a smart-transfer profile")),
        (["compare", "pre.pt", "new.pt", "--measure", "nosuch"], ("nosuch",)),
        (["compare", "new.pt", "pre.pt", "--measure", "gaussian_kl"], ("swapped",)),
        (
            ["compare", "pre.pt", "new.pt", "--measure", "gaussian_kl", "--budget", "0.5"],
            ("--budget", "--plan"),
        ),
        (["list", "layers", "--backbone", "nosuch"], ("nosuch",)),
        (["list", "nothing"], ("invalid choice",)),
        (["demo", "--out", "pre.pt"], ("--out", "pre.pt", "not a folder")),
    ],
)
def test_real_mistakes_of_the_existing_subcommands(saved, capsys, args, names):
    rc, _, err = run_cli(capsys, *args)
    assert rc == 2, err
    assert_one_line_error(err, *names)


def test_a_real_internal_failure_of_a_subcommand(saved, capsys, monkeypatch):
    def broken(*a, **k):
        raise OSError(12, "Cannot allocate memory")  # (a full disk is a user-facing error, exit 2)

    monkeypatch.setattr(st.ActivationProfile, "save", broken)
    rc, _, err = run_cli(
        capsys, "profile", "--backbone", "small_vgg", "--source", "batchnorm", "--out", "p.pt"
    )
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "Cannot allocate memory" in err and "--debug" in err
