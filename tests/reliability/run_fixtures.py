"""A tiny trained run folder and its data, made once per test module (about 3 s)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from smart_transfer.cli import main

TRAIN = (
    "--backbone",
    "small_vgg",
    "--per-class",
    "6",
    "--size",
    "16",
    "--epochs",
    "1",
    "--lr",
    "0.001",
    "--no-progress",
    "--strategy",
    "full-finetune",
)


def make_data(root: Path, classes: str = "abc", per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


def make_run(base: Path) -> tuple[Path, Path]:
    """(data folder, run folder) of a one-epoch small_vgg run made with the CLI."""
    data = make_data(base / "data")
    run = base / "run"
    assert main(["train", *TRAIN, "--data", str(data), "--out", str(run)]) == 0
    return data, run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest
