"""Read and write the idx/ubyte format of MNIST and Fashion-MNIST, gzip-compressed or not.

An idx file is a 4-byte magic number ``0x00 0x00 <type code> <number of dims>``, one
big-endian uint32 per dimension, then the values in row-major order, big-endian.
Compression is recognised from the file's first bytes, not from its name.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .._atomic import atomic_open
from ..errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

# type code -> (big-endian numpy dtype, torch dtype)
_TYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: ("u1", torch.uint8),
    0x09: ("i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_CODES = {torch_dtype: code for code, (_, torch_dtype) in _TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: PathLike) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def read_idx(path: PathLike) -> torch.Tensor:
    """Read an idx file (gzip-compressed or not) into a tensor of its stored dtype and shape.

    Raises :class:`DataError` naming the file when the magic number, the type code or the
    amount of data does not match the header, or when the gzip stream is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"idx file {path} does not exist; check the path.")
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw) as f:
                    return _read_stream(f, path)
            return _read_stream(raw, path)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip reports a bad CRC, a truncated stream or garbage as OSError/EOFError
        raise DataError(
            f"idx file {path} is corrupt or truncated ({exc}); delete it and fetch it again."
        ) from exc


def _read_stream(f: io.BufferedIOBase, path: Path) -> torch.Tensor:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _TYPES:
        raise DataError(
            f"{path} is not an idx file (magic number {magic.hex() or 'missing'}, expected "
            "00 00 <type> <ndim>); pass an idx/ubyte file such as train-images-idx3-ubyte.gz."
        )
    np_dtype, torch_dtype = _TYPES[magic[2]]
    ndim = magic[3]
    header = f.read(4 * ndim)
    if len(header) < 4 * ndim:
        raise DataError(f"idx file {path} ends inside its header; delete it and fetch it again.")
    shape = struct.unpack(f">{ndim}I", header)
    itemsize = np.dtype(np_dtype).itemsize
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    buf = bytearray(nbytes)
    got = f.readinto(buf) if nbytes else 0
    # readinto on a GzipFile may return fewer bytes than asked before the end: keep reading
    while got < nbytes:
        more = f.readinto(memoryview(buf)[got:])
        if not more:
            break
        got += more
    if got < nbytes:
        raise DataError(
            f"idx file {path} is truncated: its header {tuple(shape)} needs {nbytes} bytes of "
            f"data but only {got} are there; delete it and fetch it again."
        )
    if f.read(1):
        raise DataError(
            f"idx file {path} has data beyond the {nbytes} bytes its header {tuple(shape)} "
            "announces; the file is corrupt, delete it and fetch it again."
        )
    if torch_dtype == torch.uint8:
        # zero-copy: the bytearray is writable and owned by the tensor from here on
        tensor = (
            torch.frombuffer(buf, dtype=torch.uint8)
            if nbytes
            else torch.empty(0, dtype=torch.uint8)
        )
    else:
        native = np.frombuffer(buf, dtype=np_dtype).astype(np.dtype(np_dtype).newbyteorder("="))
        tensor = torch.from_numpy(native)
    return tensor.reshape(shape)


def write_idx(
    path: PathLike, tensor: torch.Tensor | np.ndarray, compress: bool | None = None
) -> Path:
    """Write ``tensor`` as an idx file, atomically (temp file in the same folder, then rename).

    ``compress=None`` compresses when the name ends in ``.gz``. Supported dtypes: uint8, int8,
    int16, int32, float32, float64.
    """
    path = Path(path)
    t = torch.as_tensor(tensor).cpu()
    if t.dtype not in _CODES:
        raise DataError(
            f"cannot write dtype {t.dtype} to idx file {path}; convert to one of "
            f"{', '.join(str(d) for d in _CODES)} first."
        )
    if t.dim() > 255:
        raise DataError(f"idx files hold at most 255 dimensions, got {t.dim()} for {path}.")
    code = _CODES[t.dtype]
    payload = (
        bytes([0, 0, code, t.dim()])
        + struct.pack(f">{t.dim()}I", *t.shape)
        + t.contiguous().numpy().astype(_TYPES[code][0], copy=False).tobytes()
    )
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    with atomic_open(path, "wb") as f:
        f.write(data)
