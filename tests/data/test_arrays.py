"""Datasets from arrays and .npz files: layouts, pixel types, labels, mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError

rng = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_gray_nhw():
    x, y = _u8(5, 7, 9), np.array([0, 1, 2, 1, 0])
    ds = st.data.arrays(x, y)
    image, label = ds[3]
    assert image.shape == (1, 7, 9) and image.dtype == torch.uint8
    assert np.array_equal(image[0].numpy(), x[3]) and label == 1
    assert ds.classes == ["0", "1", "2"]
    assert ds.targets.dtype == torch.int64 and ds.targets.tolist() == y.tolist()


def test_numpy_channel_last_becomes_channel_first():
    x = _u8(4, 6, 8, 3)
    ds = st.data.arrays(x, [0, 1, 0, 1])
    assert ds[2][0].shape == (3, 6, 8)
    assert np.array_equal(ds[2][0].numpy(), x[2].transpose(2, 0, 1))


def test_torch_channel_first_is_kept():
    x = torch.from_numpy(_u8(4, 3, 6, 8))
    ds = st.data.arrays(x, torch.tensor([1, 0, 1, 0]))
    assert torch.equal(ds[1][0], x[1])


def test_ambiguous_layout_follows_the_container_unless_told():
    x = _u8(2, 3, 4, 3)  # both dim 1 and dim 3 could be channels
    assert st.data.arrays(x, [0, 1])[0][0].shape == (3, 3, 4)  # numpy: channel-last
    assert st.data.arrays(torch.from_numpy(x), [0, 1])[0][0].shape == (3, 4, 3)  # torch: first
    told = st.data.arrays(x, [0, 1], layout="NCHW")[0][0]
    assert torch.equal(told, torch.from_numpy(x[0]))


def test_no_channel_dimension_needs_layout():
    x = _u8(2, 5, 6, 7)
    with pytest.raises(DataError, match="layout="):
        st.data.arrays(x, [0, 1])
    assert st.data.arrays(x, [0, 1], layout="NHWC")[0][0].shape == (7, 5, 6)


def test_pixel_types():
    as_float = st.data.arrays(rng.random((3, 4, 4)), [0, 1, 1])
    assert as_float[0][0].dtype == torch.float32
    as_int = st.data.arrays(rng.integers(0, 256, (3, 4, 4)), [0, 1, 1])
    assert as_int[0][0].dtype == torch.uint8
    with pytest.raises(DataError, match=r"\[0, 1\].*divide by 255"):
        st.data.arrays(rng.random((3, 4, 4)) * 255, [0, 1, 1])
    with pytest.raises(DataError, match="0..255"):
        st.data.arrays(np.full((3, 4, 4), 300), [0, 1, 1])
    with pytest.raises(DataError, match="dtype"):
        st.data.arrays(np.full((3, 4, 4), "a"), [0, 1, 1])


def test_string_labels_become_sorted_classes():
    ds = st.data.arrays(_u8(4, 2, 2), np.array(["dog", "cat", "dog", "ant"]))
    assert ds.classes == ["ant", "cat", "dog"]
    assert ds.targets.tolist() == [2, 1, 2, 0]


def test_class_names():
    ds = st.data.arrays(_u8(3, 2, 2), [0, 2, 1], classes=["a", "b", "c"])
    assert ds.classes[ds[1][1]] == "c"
    with pytest.raises(DataError, match="label 2.*classes="):
        st.data.arrays(_u8(3, 2, 2), [0, 2, 1], classes=["a", "b"])


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (_u8(3, 4, 4), [0, 1], "3 images but 2 labels"),
        (_u8(3, 4, 4), [[0, 1], [1, 0], [0, 1]], "1-D.*argmax"),
        (_u8(3, 4, 4), [0, -1, 1], ">= 0"),
        (_u8(3, 4, 4), [0, 0.5, 1], "fractional"),
        (_u8(12), [0] * 12, "shape"),
        (_u8(2, 1, 3, 4, 4), [0, 1], "shape"),
        (_u8(0, 4, 4), [], "empty"),
    ],
)
def test_shape_and_label_mistakes(images, labels, match):
    with pytest.raises(DataError, match=match):
        st.data.arrays(images, labels)


def test_labels_are_required_for_arrays():
    with pytest.raises(ConfigError, match="labels"):
        st.data.arrays(_u8(3, 4, 4))


def test_column_labels_are_accepted():
    assert st.data.arrays(_u8(3, 4, 4), np.array([[0], [1], [0]])).targets.tolist() == [0, 1, 0]


@pytest.mark.parametrize(("kx", "ky"), [("images", "labels"), ("x", "y"), ("X", "Y")])
def test_npz_keys(tmp_path: Path, kx: str, ky: str):
    x, y = _u8(4, 3, 5, 5), np.array([1, 0, 1, 0])
    path = tmp_path / "d.npz"
    np.savez(path, **{kx: x, ky: y})
    ds = st.data.arrays(path)
    assert torch.equal(ds[0][0], torch.from_numpy(x[0]))
    assert ds.targets.tolist() == y.tolist()


def test_npz_with_class_names(tmp_path: Path):
    path = tmp_path / "d.npz"
    np.savez(path, images=_u8(2, 4, 4), labels=[0, 1], classes=np.array(["no", "yes"]))
    assert st.data.arrays(str(path)).classes == ["no", "yes"]


def test_npz_mistakes(tmp_path: Path):
    path = tmp_path / "d.npz"
    np.savez(path, pixels=_u8(2, 4, 4), targets=[0, 1])
    with pytest.raises(DataError, match=r"\['pixels', 'targets'\].*'images' and 'labels'"):
        st.data.arrays(path)
    with pytest.raises(DataError, match="does not exist"):
        st.data.arrays(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="junk.npz"):
        st.data.arrays(junk)
    single = tmp_path / "one.npy"
    np.save(single, _u8(2, 4, 4))
    with pytest.raises(DataError, match="single array"):
        st.data.arrays(single)
    with pytest.raises(ConfigError, match="not both"):
        st.data.arrays(path, [0, 1])


def test_get_batch_matches_items():
    ds = st.data.arrays(_u8(6, 3, 4, 4), [0, 1, 2, 0, 1, 2], layout="NCHW")
    xb, yb = ds.get_batch([4, 1])
    assert torch.equal(xb[0], ds[4][0]) and torch.equal(xb[1], ds[1][0])
    assert yb.tolist() == [ds[4][1], ds[1][1]]
    gray = st.data.arrays(_u8(3, 4, 4), [0, 1, 0])
    assert gray.get_batch([0, 2])[0].shape == (2, 1, 4, 4)
