"""The idx/ubyte reader and writer: round trips, compression by content, corrupt files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from smart_transfer.data.idx import is_gzip, read_idx, write_idx
from smart_transfer.errors import DataError


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64]
)
@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_round_trip_keeps_values_dtype_and_shape(tmp_path: Path, dtype: torch.dtype, name: str):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(5, 4, 3, generator=g) * 100).to(dtype)
    path = write_idx(tmp_path / name, t)
    assert is_gzip(path) == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == dtype
    assert back.shape == t.shape
    assert torch.equal(back, t)


def test_bytes_are_big_endian_as_the_format_says(tmp_path: Path):
    t = torch.tensor([1, 256, -2], dtype=torch.int32)
    path = write_idx(tmp_path / "v", t)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1])
    assert struct.unpack(">I", raw[4:8])[0] == 3
    assert struct.unpack(">3i", raw[8:]) == (1, 256, -2)


def test_compression_is_recognised_from_content_not_name(tmp_path: Path):
    t = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "no-suffix", t, compress=True)
    assert is_gzip(path)
    assert torch.equal(read_idx(path), t)


def test_read_uint8_tensor_is_writable_and_owns_its_memory(tmp_path: Path):
    t = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    back = read_idx(write_idx(tmp_path / "a.gz", t))
    back[0, 0] = 99  # would fail or warn on a read-only buffer
    assert int(back[0, 0]) == 99
    assert torch.equal(read_idx(tmp_path / "a.gz"), t)


def test_bad_magic_names_the_file(tmp_path: Path):
    path = tmp_path / "not-idx"
    path.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(DataError, match="not-idx.*not an idx file"):
        read_idx(path)


def test_unknown_type_code_is_rejected(tmp_path: Path):
    path = tmp_path / "weird"
    path.write_bytes(bytes([0, 0, 0x42, 1]) + struct.pack(">I", 2) + b"ab")
    with pytest.raises(DataError, match="weird"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_data_is_detected(tmp_path: Path, compress: bool):
    full = write_idx(tmp_path / "full", torch.zeros(10, 28, 28, dtype=torch.uint8)).read_bytes()
    cut = full[: len(full) - 100]
    path = tmp_path / "cut"
    path.write_bytes(gzip.compress(cut) if compress else cut)
    with pytest.raises(DataError, match=r"cut is truncated"):
        read_idx(path)


def test_header_cut_inside_dims_is_detected(tmp_path: Path):
    path = tmp_path / "short-header"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 10))
    with pytest.raises(DataError, match="short-header.*header"):
        read_idx(path)


def test_extra_bytes_after_the_data_are_detected(tmp_path: Path):
    path = write_idx(tmp_path / "long", torch.zeros(3, dtype=torch.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="long.*beyond"):
        read_idx(path)


def test_truncated_gzip_stream_names_the_file(tmp_path: Path):
    path = write_idx(tmp_path / "ok.gz", torch.randint(0, 255, (50, 28, 28), dtype=torch.uint8))
    blob = path.read_bytes()
    broken = tmp_path / "broken.gz"
    broken.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="broken.gz"):
        read_idx(broken)


def test_damaged_gzip_stream_names_the_file(tmp_path: Path):
    g = np.random.default_rng(0)
    path = write_idx(
        tmp_path / "a.gz", torch.from_numpy(g.integers(0, 255, (50, 28, 28), dtype=np.uint8))
    )
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="damaged.gz"):
        read_idx(damaged)


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path):
    path = tmp_path / "x.gz"
    write_idx(path, torch.zeros(2, 2, dtype=torch.uint8))
    write_idx(path, torch.ones(3, 3, dtype=torch.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gz"]
    assert torch.equal(read_idx(path), torch.ones(3, 3, dtype=torch.uint8))


def test_write_rejects_unsupported_dtype(tmp_path: Path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "x", torch.zeros(2, dtype=torch.int64))
    assert not (tmp_path / "x").exists()
