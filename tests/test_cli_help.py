"""``train --help`` shows every option with its default, generated from the run spec's fields."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from smart_transfer.cli import build_parser, main
from smart_transfer.spec import Recipe


def _option_entries(text: str) -> list[str]:
    """The --help entries of the options: each option line joined with its continuation lines."""
    body = text.split("options:", 1)[1]
    entries: list[str] = []
    for line in body.splitlines():
        if re.match(r"^  -", line):
            entries.append(line.strip())
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
    return entries


def _flags(parser_name: str) -> set[str]:
    """Options that take no value (store_true, --x/--no-x): a flag's default is off."""
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices[parser_name]._actions if a.nargs == 0 for s in a.option_strings}


@pytest.mark.parametrize("command", ["train", "compare-strategies", "demo"])
def test_every_option_of_the_help_says_its_default(command, capsys):
    assert main([command, "--help"]) == 0
    entries = _option_entries(capsys.readouterr().out)
    flags = _flags(command)
    assert len(entries) > 5
    missing = [
        e
        for e in entries
        if "default" not in e and not (set(re.findall(r"--[\w-]+", e.split("  ")[0])) & flags)
    ]
    assert not missing, missing


def test_recipe_flags_and_defaults_come_from_the_recipe_fields(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(Recipe):
        flag = f.metadata.get("flag")
        if flag is None:
            continue
        assert flag in text, flag
    # the defaults are Recipe's, written once
    assert f"(default {Recipe.batch_size})" in text and f"(default {Recipe.weight_decay})" in text
    assert f"(default {Recipe.patience})" in text and "(default 1e-4 3e-4 1e-3)" in text
    # a flag not given leaves the Recipe's default
    args = build_parser().parse_args(["train", "--data", "x", "--out", "y"])
    assert all(getattr(args, f.name) is None for f in fields(Recipe) if f.metadata.get("flag"))
    args = build_parser().parse_args(
        ["train", "--warmup", "0.2", "--no-channels-last", "--optimizer", "sgd"]
    )
    assert (args.warmup, args.channels_last, args.optimizer) == (0.2, False, "sgd")


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--warmup", "1.5"], "--warmup"),
        (["--batch-size", "0"], "--batch-size"),
        (["--optimizer", "adam"], "--optimizer"),
    ],
)
def test_out_of_range_recipe_flags_are_usage_errors(argv, named, capsys):
    assert main(["train", "--data", "x", "--out", "y", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_compare_defaults_to_the_measure_every_default_source_serves():
    """compare() and the CLI's compare default to gaussian_kl, as plan does (BatchNorm
    statistics, the default D_pre, cannot serve lognormal_kl)."""
    import inspect

    import smart_transfer as st

    assert inspect.signature(st.compare).parameters["measure"].default == "gaussian_kl"
    args = build_parser().parse_args(["compare", "pre.pt", "new.pt"])
    assert args.measure == "gaussian_kl"


def _subparsers():
    import argparse

    from smart_transfer.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_subcommand_has_an_example_and_every_option_a_help_line():
    import argparse

    missing = []
    for name, sp in _subparsers().items():
        if "example" not in (sp.epilog or ""):
            missing.append(f"{name}: no example")
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{name} {action.dest}: no help")
            elif (
                action.option_strings
                and action.default not in (None, False)
                and "default" not in action.help
            ):
                missing.append(
                    f"{name} {action.option_strings[0]}: default {action.default!r} not said"
                )
    assert missing == []


def test_version(capsys):
    from smart_transfer import __version__
    from smart_transfer.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"smart-transfer {__version__}"
