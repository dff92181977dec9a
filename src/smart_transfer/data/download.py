"""The user cache directory and checksummed, atomic downloads into it."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Collection
from pathlib import Path

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
) -> Path:
    """Download ``url`` to ``dest``, check it, and only then move it into place.

    The file is accepted when its MD5 is in ``md5`` or the MD5 of its gzip-decompressed
    content is in ``payload_md5`` (a mirror that recompressed the same data passes the
    second check); with both empty it is not checked. It is written to a temporary file in
    ``dest``'s folder and renamed over ``dest`` after the check, so an interrupted or
    failed download leaves neither a partial ``dest`` nor a temporary file behind.

    Raises :class:`DataError` when the data fails the check or the transfer is cut short,
    and :class:`OSError` (``urllib.error.URLError``) when the server cannot be reached.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the open connection of the error page
            raise
        with os.fdopen(fd, "wb") as out, response as resp:
            expected = resp.headers.get("Content-Length")
            h = hashlib.md5(usedforsecurity=False)
            size = 0
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
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and size != int(expected):
            raise DataError(
                f"download of {url} stopped after {size} of {expected} bytes; nothing was "
                "saved, try again."
            )
        if md5 or payload_md5:
            _check(url, Path(tmp), h.hexdigest(), md5, payload_md5)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _check(
    url: str, tmp: Path, digest: str, md5: Collection[str], payload_md5: Collection[str]
) -> None:
    if digest in md5:
        return
    if payload_md5:
        try:
            payload = gunzip_if_needed(tmp.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"downloaded file {url} is not a valid gzip file ({exc}); nothing was saved, "
                "the server sent a truncated or damaged copy, try again or another mirror."
            ) from exc
        if md5_of(payload) in payload_md5:
            return
    raise DataError(
        f"downloaded file {url} has MD5 {digest}, not the known checksum "
        f"{' or '.join(sorted(md5)) or '(content checksum)'}; nothing was saved, the copy on "
        "the server is damaged or a different file, try again or another mirror."
    )
