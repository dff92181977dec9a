"""The native statistics library is loaded only when this process built it, or when its
recorded sha256 matches and the file, the record and the cache folder are the user's alone; a
library planted in the cache never runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smart_transfer.stats import native

CC = native._compiler()
pytestmark = pytest.mark.skipif(
    CC is None or sys.platform != "linux", reason="needs a C compiler on Linux"
)

PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *p = getenv("PLANTED_MARKER");
    if (p) { FILE *f = fopen(p, "w"); if (f) { fputs("ran", f); fclose(f); } }
}
"""


def _plant(tmp_path: Path, sidecar: bool) -> Path:
    """A library with a constructor, at the very path the kernels' build would use."""
    folder = tmp_path / "cache" / "kernels"
    folder.mkdir(parents=True, mode=0o700)
    src = tmp_path / "planted.c"
    src.write_text(PLANTED)
    lib = folder / f"stats-{native._key(CC, True)}.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    if sidecar:
        (folder / (lib.name + ".sha256")).write_text(
            hashlib.sha256(lib.read_bytes()).hexdigest() + "\n"
        )
    return lib


def _load(tmp_path: Path) -> subprocess.CompletedProcess:
    src = os.path.dirname(os.path.dirname(os.path.dirname(native.__file__)))
    env = {
        **os.environ,
        "SMART_TRANSFER_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": src,
        "PLANTED_MARKER": str(tmp_path / "marker"),
        "OMP_NUM_THREADS": "1",
    }
    code = "from smart_transfer.stats import native; print('loaded', native.kernels() is not None)"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_a_planted_library_without_a_record_is_rebuilt_not_loaded(tmp_path):
    lib = _plant(tmp_path, sidecar=False)
    planted = lib.read_bytes()
    done = _load(tmp_path)
    assert "loaded True" in done.stdout, done.stderr
    assert not (tmp_path / "marker").exists()  # its constructor never ran
    assert lib.read_bytes() != planted  # replaced by a fresh build, recorded beside it
    record = (lib.parent / (lib.name + ".sha256")).read_text().strip()
    assert record == hashlib.sha256(lib.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("exposure", ["library", "record", "folder"])
def test_a_recorded_library_that_others_could_change_is_not_loaded(tmp_path, exposure):
    lib = _plant(tmp_path, sidecar=True)
    target = {"library": lib, "record": lib.parent / (lib.name + ".sha256"), "folder": lib.parent}[
        exposure
    ]
    os.chmod(target, 0o777 if exposure != "record" else 0o666)
    done = _load(tmp_path)
    assert "loaded True" in done.stdout, done.stderr
    assert not (tmp_path / "marker").exists()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_library_owned_by_another_user_is_not_loaded(tmp_path):
    lib = _plant(tmp_path, sidecar=True)
    os.chown(lib, 4242, 4242)
    done = _load(tmp_path)
    assert "loaded True" in done.stdout, done.stderr
    assert not (tmp_path / "marker").exists()


def test_control_a_recorded_private_library_is_what_gets_loaded(tmp_path):
    """The record is what is trusted: the same planted file, recorded and private, does run
    (so the tests above would see a load)."""
    _plant(tmp_path, sidecar=True)
    _load(tmp_path)  # fails after loading: the planted file lacks the kernels' symbols
    assert (tmp_path / "marker").read_text() == "ran"
