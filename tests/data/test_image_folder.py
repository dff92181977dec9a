"""Image folders: class discovery, decoding with PIL, corrupt files, layout mistakes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError


def _png(
    path: Path, color: tuple[int, ...], size: tuple[int, int] = (6, 4), mode: str = "RGB"
) -> Path:
    """A solid-colour image; ``size`` is PIL's (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for i in range(3):
        _png(root / "cat" / f"c{i}.png", (200, 10 * i, 0))
    for i in range(2):
        _png(root / "dog" / f"d{i}.jpg", (0, 0, 250), size=(8, 5))
    _png(root / "bird" / "b0.PNG", (5, 6, 7))
    return root


def test_classes_sorted_targets_and_items(folder: Path):
    ds = st.data.image_folder(folder)
    assert ds.classes == ["bird", "cat", "dog"]
    assert len(ds) == 6
    assert ds.targets.dtype == torch.int64
    assert ds.targets.tolist() == [0, 1, 1, 1, 2, 2]
    image, label = ds[2]
    assert label == 1 and isinstance(label, int)
    assert image.dtype == torch.uint8 and image.shape == (3, 4, 6)
    assert image[:, 0, 0].tolist() == [200, 10, 0]  # lossless PNG: exact pixels, channels first
    dog, _ = ds[5]
    assert dog.shape == (3, 5, 8)


def test_modes(folder: Path, tmp_path: Path):
    gray = st.data.image_folder(folder, mode="L")[0][0]
    assert gray.shape == (1, 4, 6)
    expected = Image.new("RGB", (1, 1), (5, 6, 7)).convert("L").getpixel((0, 0))
    assert int(gray[0, 0, 0]) == expected
    root = tmp_path / "mixed"
    _png(root / "a" / "x.png", (1, 2, 3, 4), mode="RGBA")
    _png(root / "b" / "y.png", 9, mode="L")
    native = st.data.image_folder(root, mode=None)
    assert native[0][0].shape[0] == 4 and native[1][0].shape[0] == 1
    assert st.data.image_folder(root)[0][0].shape[0] == 3


def test_extensions_case_hidden_files_and_nested_folders(folder: Path):
    (folder / "cat" / "notes.txt").write_text("not an image")
    _png(folder / "cat" / ".hidden.png", (0, 0, 0))
    _png(folder / "cat" / "sub" / "deep.png", (1, 1, 1))
    ds = st.data.image_folder(folder)
    names = [p.name for p, _ in ds.samples]
    assert "notes.txt" not in names and ".hidden.png" not in names
    assert "deep.png" in names and "b0.PNG" in names
    with pytest.raises(DataError, match=f"{os.sep}dog has no images"):  # only .jpg there
        st.data.image_folder(folder, extensions=("png",))
    _png(folder / "dog" / "d9.png", (3, 3, 3))
    only_png = st.data.image_folder(folder, extensions=("png",))
    assert all(p.suffix.lower() == ".png" for p, _ in only_png.samples)
    assert len(only_png) == len(ds) - 2 + 1


def test_size_resizes_on_load(folder: Path):
    ds = st.data.image_folder(folder, size=(10, 12))
    assert {tuple(ds[i][0].shape) for i in range(len(ds))} == {(3, 10, 12)}


def test_corrupt_file_raises_on_load_naming_it(folder: Path):
    bad = _corrupt(folder / "cat" / "c9.png")
    ds = st.data.image_folder(folder)  # lazy: construction does not open the files
    index = [p for p, _ in ds.samples].index(bad)
    with pytest.raises(DataError, match=r"c9\.png could not be decoded on load"):
        ds[index]
    assert ds[0][0].dtype == torch.uint8  # the others still load


def test_skip_leaves_out_unreadable_files_with_a_warning(folder: Path):
    bad = _corrupt(folder / "dog" / "broken.png")
    empty = folder / "dog" / "empty.png"
    empty.write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = st.data.image_folder(folder, on_error="skip")
    assert ds.skipped == 2
    assert set(ds.skipped_files) == {bad, empty}
    assert len(ds) == 6 and len(ds.targets) == 6
    assert all(ds[i][0].shape[0] == 3 for i in range(len(ds)))


def test_skip_without_bad_files_is_silent(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = st.data.image_folder(folder, on_error="skip")
    assert ds.skipped == 0


def test_class_left_empty_by_skipping(folder: Path, tmp_path: Path):
    _corrupt(folder / "empty-after" / "x.png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = st.data.image_folder(folder, on_error="skip")  # the class is left out, and said so
    assert ds.classes == ["bird", "cat", "dog"] and ds.empty_folders == ["empty-after"]
    assert (
        set(ds.targets.tolist()) == {0, 1, 2} and len(ds) == len(st.data.image_folder(folder)) - 1
    )
    with pytest.raises(DataError, match="x.png could not be decoded.*--on-error skip"):
        st.data.image_folder(folder).check()


def test_missing_root(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        st.data.image_folder(tmp_path / "nowhere")


def test_root_is_a_file(tmp_path: Path):
    f = _png(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(DataError, match="is a file"):
        st.data.image_folder(f)


def test_images_without_class_subfolders(tmp_path: Path):
    _png(tmp_path / "flat" / "a.png", (0, 0, 0))
    with pytest.raises(DataError, match="no class subfolders.*its own subfolder"):
        st.data.image_folder(tmp_path / "flat")


def test_empty_class_folder_is_named(folder: Path):
    (folder / "zebra").mkdir()
    with pytest.raises(DataError, match=f"{os.sep}zebra has no images"):
        st.data.image_folder(folder)


def test_folders_without_any_image(tmp_path: Path):
    for c in ("a", "b"):
        (tmp_path / "r" / c).mkdir(parents=True)
        (tmp_path / "r" / c / "x.txt").write_text("")
    with pytest.raises(DataError, match="no images.*extensions="):
        st.data.image_folder(tmp_path / "r")


def test_single_class(tmp_path: Path):
    _png(tmp_path / "r" / "only" / "a.png", (0, 0, 0))
    with pytest.raises(DataError, match="single class"):
        st.data.image_folder(tmp_path / "r")


def test_bad_arguments(folder: Path):
    with pytest.raises(ConfigError, match="on_error"):
        st.data.image_folder(folder, on_error="ignore")
    with pytest.raises(ConfigError, match="mode"):
        st.data.image_folder(folder, mode="CMYK")
    with pytest.raises(ConfigError, match="size"):
        st.data.image_folder(folder, size=(0, 3))


def test_loader_needs_equal_sizes_and_says_how(folder: Path):
    mixed = st.data.image_folder(folder)
    with pytest.raises(DataError, match="different shapes.*size="):
        list(st.data.loader(mixed, batch_size=8))
    x, y = next(iter(st.data.loader(st.data.image_folder(folder, size=8), batch_size=8)))
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.uint8
    assert torch.equal(y, st.data.image_folder(folder).targets)
