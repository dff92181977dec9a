"""The user cache directory and checksummed, atomic downloads into it."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .._atomic import atomic_open
from ..errors import DataError

CACHE_ENV = "SMART_TRANSFER_CACHE"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloaded files are kept.

    ``$SMART_TRANSFER_CACHE`` if set, else ``$XDG_CACHE_HOME/smart-transfer``, else
    ``~/.cache/smart-transfer``. The folder is not created here.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "smart-transfer"


def md5_of(data: bytes) -> str:
    """Hex MD5 of ``data``: a checksum against corruption, not a security measure."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def gunzip_if_needed(data: bytes) -> bytes:
    """The decompressed payload of gzip ``data``, or ``data`` itself when it is not gzip."""
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def download(
    url: str,
    dest: str | os.PathLike[str],
    md5: Collection[str] = (),
    payload_md5: Collection[str] = (),
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, check it, and only then move it into place.

    The file is accepted when its MD5 is in ``md5`` or the MD5 of its gzip-decompressed
    content is in ``payload_md5`` (a mirror that recompressed the same data passes the
    second check); with both empty it is not checked. It is written through the shared
    atomic writer (a temporary sibling, renamed over ``dest`` after the check, with the
    permissions of every other file written), so an interrupted or failed download leaves
    neither a partial ``dest`` nor a temporary file behind. ``progress``: a tqdm bar (shown
    only on a terminal).

    Raises :class:`DataError` when the data fails the check or the transfer is cut short,
    and :class:`OSError` (``urllib.error.URLError``) when the server cannot be reached.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the open connection of the error page
        raise
    with response as resp, atomic_open(dest, "wb") as out:
        expected = resp.headers.get("Content-Length")
        h = hashlib.md5(usedforsecurity=False)
        payload = _PayloadHash() if payload_md5 else None
        size = 0
        bar = tqdm(
            total=int(expected) if expected else None,
            unit="B",
            unit_scale=True,
            desc=dest.name,
            disable=None if progress else True,
            leave=False,
        )
        with bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except http.client.IncompleteRead as exc:
                    raise DataError(
                        f"download of {url} was cut short after about "
                        f"{size + len(exc.partial)} bytes; nothing was saved, try again."
                    ) from exc
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                if payload is not None:
                    payload.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        if expected is not None and size != int(expected):
            raise DataError(
                f"download of {url} stopped after {size} of {expected} bytes; nothing was "
                "saved, try again."
            )
        if md5 or payload_md5:  # raising here leaves dest as it was
            _check(url, h.hexdigest(), md5, payload_md5, payload)
    return dest


class _PayloadHash:
    """MD5 of the gzip-decompressed content, computed while the bytes arrive."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self._z: Any = None
        self._head = b""
        self.plain = False
        self.error: Exception | None = None

    def update(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        if self._z is None and not self.plain:
            self._head += chunk
            if len(self._head) < 2:
                return
            if self._head[:2] == b"\x1f\x8b":
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                self.plain = True
            chunk, self._head = self._head, b""
        if self.plain:
            self.md5.update(chunk)
            return
        try:
            self.md5.update(self._z.decompress(chunk))
        except zlib.error as exc:
            self.error = exc

    def hexdigest(self) -> str:
        if self._head and self.error is None:  # fewer than 2 bytes in all: not gzip
            self.md5.update(self._head)
            self._head = b""
        if self._z is not None and self.error is None:
            if not self._z.eof:
                self.error = EOFError("compressed file ended before the end-of-stream marker")
            else:
                self.md5.update(self._z.flush())
        if self.error is not None:
            raise self.error
        return self.md5.hexdigest()


def _check(
    url: str,
    digest: str,
    md5: Collection[str],
    payload_md5: Collection[str],
    payload: _PayloadHash | None,
) -> None:
    if digest in md5:
        return
    if payload_md5 and payload is not None:
        try:
            content = payload.hexdigest()
        except (EOFError, zlib.error) as exc:
            raise DataError(
                f"downloaded file {url} is not a valid gzip file ({exc}); nothing was saved, "
                "the server sent a truncated or damaged copy, try again or another mirror."
            ) from exc
        if content in payload_md5:
            return
    raise DataError(
        f"downloaded file {url} has MD5 {digest}, not the known checksum "
        f"{' or '.join(sorted(md5)) or '(content checksum)'}; nothing was saved, the copy on "
        "the server is damaged or a different file, try again or another mirror."
    )
