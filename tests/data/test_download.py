"""download(): checked, atomic, with the permissions of every other file written."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat

import pytest

from smart_transfer.data.download import download
from smart_transfer.errors import DataError


def test_download_checks_content_md5_and_writes_an_ordinary_file(tmp_path, serve):
    payload = bytes(range(256)) * 500
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.gz").write_bytes(gzip.compress(payload, mtime=0))
    base = serve(tmp_path / "srv")
    want = hashlib.md5(payload).hexdigest()
    dest = download(f"{base}/f.gz", tmp_path / "out" / "f.gz", payload_md5={want}, progress=False)
    assert gzip.decompress(dest.read_bytes()) == payload
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    # a wrong checksum leaves nothing behind, not even a temporary file
    with pytest.raises(DataError, match="checksum"):
        download(f"{base}/f.gz", tmp_path / "out" / "g.gz", payload_md5={"0" * 32}, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.gz"]


def test_cut_short_download_saves_nothing(tmp_path, serve):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(b"x" * 100_000)
    base = serve(tmp_path / "srv", cut_short=True)
    with pytest.raises(DataError):
        download(f"{base}/f.bin", tmp_path / "out" / "f.bin", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
