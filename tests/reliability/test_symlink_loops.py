"""A directory link inside a class folder that leads back into the data folder (``a/loop -> ..``,
or a link to another class) is left out and named; a link to a folder elsewhere is followed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smart_transfer.data import image_folder


def _photos(root: Path, classes=("a", "b"), n=3) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


def test_a_loop_back_to_the_data_folder_is_left_out_and_named(tmp_path):
    root = _photos(tmp_path / "data")
    os.symlink("..", root / "a" / "loop")
    os.symlink(root / "b", root / "a" / "to_b")
    with pytest.warns(UserWarning, match="left out the directory link .*loop"):
        ds = image_folder(root)
    counts = np.bincount(np.asarray(ds.targets), minlength=2).tolist()
    assert counts == [3, 3]  # class a keeps its own 3 images, none of b's
    assert {p.name for p in ds.ignored_files} >= {"loop", "to_b"}


def test_a_link_to_a_folder_outside_is_followed(tmp_path):
    root = _photos(tmp_path / "data")
    extra = _photos(tmp_path / "elsewhere", classes=("more",), n=2) / "more"
    os.symlink(extra, root / "a" / "more")
    ds = image_folder(root)
    assert np.bincount(np.asarray(ds.targets)).tolist() == [5, 3]
