"""Shared fixtures for the data tests: a local HTTP server and small fake Fashion-MNIST files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from smart_transfer.data.idx import write_idx

FAKE_SIZES = {"train": 40, "test": 20}

# the module, not the function of the same name that smart_transfer.data exports
fm = importlib.import_module("smart_transfer.data.fashion_mnist")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


class _CutShortHandler(_QuietHandler):
    """Announces the whole file but sends only its first half, then hangs up."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


def _serve(directory: Path, handler: type = _QuietHandler) -> Iterator[str]:
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def serve() -> Iterator:
    """``serve(directory, cut_short=False)`` -> base URL of a server for that folder."""
    stack: list[Iterator[str]] = []

    def start(directory: Path, cut_short: bool = False) -> str:
        gen = _serve(directory, _CutShortHandler if cut_short else _QuietHandler)
        stack.append(gen)
        return next(gen)

    yield start
    for gen in stack:
        next(gen, None)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache under ``tmp_path`` and no system folders: nothing is found by default."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMART_TRANSFER_CACHE", str(cache))
    monkeypatch.delenv(fm.URL_ENV, raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", [])
    return cache


def make_fake_split(folder: Path, split: str, fill: int, seed: int = 0, gz: bool = True) -> None:
    """Write a small random split whose images all have pixel 0 equal to ``fill``."""
    g = torch.Generator().manual_seed(seed)
    n = FAKE_SIZES[split]
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    images[:, 0, 0] = fill
    labels = (torch.arange(n) % 10).to(torch.uint8)
    names = fm.FILES[split]
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{names[0]}{suffix}", images)
    write_idx(folder / f"{names[1]}{suffix}", labels)


@pytest.fixture
def make_split():
    """The :func:`make_fake_split` writer, for tests that need more fake folders."""
    return make_fake_split


@pytest.fixture
def fake_fmnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Small fake Fashion-MNIST files (both splits) in ``tmp_path / "served"``.

    The split sizes and the checksum table are patched to fit them, so every code path
    (search, download, checks) runs without the real 30 MB files.
    """
    folder = tmp_path / "served"
    monkeypatch.setattr(fm, "SIZES", dict(FAKE_SIZES))
    for split in ("train", "test"):
        make_fake_split(folder, split, fill=7)
    table = {}
    for name in fm.CHECKSUMS:
        data = (folder / f"{name}.gz").read_bytes()
        table[name] = (
            hashlib.md5(data).hexdigest(),
            hashlib.md5(gzip.decompress(data)).hexdigest(),
        )
    monkeypatch.setattr(fm, "CHECKSUMS", table)
    return folder
