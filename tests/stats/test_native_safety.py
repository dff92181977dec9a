"""stats/native.py ships safely: real exceptions for every memory-safety precondition (also
under ``python -O``), one build among concurrent processes, a private folder when the cache is
read-only, no -fopenmp where the compiler rejects it, no -march=native without the CPU's
features in the cache key, and an argument struct whose layout is checked against the C one."""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from smart_transfer.stats import native

CC = native._compiler()
needs_cc = pytest.mark.skipif(
    CC is None or sys.platform != "linux", reason="needs a C compiler on Linux"
)
SRC = str(Path(native.__file__).resolve().parents[2])


def _python(code: str, tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "OMP_NUM_THREADS": "1",
        "SMART_TRANSFER_CACHE": str(tmp_path / "cache"),
        **env,
    }
    if not full_env["SMART_TRANSFER_CACHE"]:  # the user's cache: no fresh build
        del full_env["SMART_TRANSFER_CACHE"]
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _wrapper(tmp_path: Path, reject: str | None = None) -> Path:
    """A compiler that logs each call (one line of arguments) and then runs the real one;
    ``reject``: a flag it refuses, as Apple clang refuses -fopenmp."""
    log, cc = tmp_path / "cc.log", tmp_path / "cc-wrapper"
    refuse = (
        f'case " $* " in *" {reject} "*) echo "unsupported option {reject}" >&2; exit 1;; esac\n'
        if reject
        else ""
    )
    cc.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{refuse}exec {CC} "$@"\n')
    cc.chmod(0o755)
    return cc


def _kernel_builds(tmp_path: Path) -> list[str]:
    log = tmp_path / "cc.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if "_kernels.c" in line]


@needs_cc
def test_preconditions_raise_under_python_O(tmp_path):
    """Every check is a real exception: with asserts removed (-O) each bad call still raises
    ValueError before any memory is touched."""
    code = """
        import torch
        from smart_transfer.stats import native
        assert False, "asserts are on"  # removed under -O: proves the flag took effect
        x = torch.randn(4, 3, 20)
        off = native.offsets(x, torch.arange(5))
        sub = torch.empty(5, 3)
        low, cut = torch.zeros(65536, dtype=torch.int32), torch.full((65536,), float("inf"))
        counts = torch.zeros(3, 8, dtype=torch.float64)
        out = native.moments(x, 1)
        t = [torch.zeros(3, dtype=torch.float64) for _ in range(8)]
        bad = {
            "float64 batch": lambda: native.moments(x.double(), 1),
            "offsets past the batch": lambda: native.moments(x, 1, cov=(off + 10_000, sub)),
            "negative offsets": lambda: native.moments(x, 1, cov=(off - 1_000, sub)),
            "sample too small": lambda: native.moments(x, 1, cov=(off, torch.empty(4, 3))),
            "int32 offsets": lambda: native.moments(x, 1, cov=(off.int(), sub)),
            "hist counts float32": lambda: native.moments(
                x, 1, hist=(1, 0, None, low, cut, counts.float())
            ),
            "hist counts of 2 channels": lambda: native.moments(
                x, 1, hist=(1, 0, None, low, cut, counts[:2])
            ),
            "short bin table": lambda: native.moments(
                x, 1, hist=(1, 0, None, low[:10], cut, counts)
            ),
            "bins past the counts": lambda: native.moments(
                x, 1, hist=(1, 0, None, low + 8, cut, counts)
            ),
            "hist offsets past the batch": lambda: native.moments(
                x, 1, hist=(0, 0, off + 10_000, low, cut, counts)
            ),
            "merge with float32 totals": lambda: native.merge(out, 80, 0, (t[0].float(), *t[1:])),
            "merge with a short total": lambda: native.merge(out, 80, 0, (t[0][:2], *t[1:])),
            "merge with half the logs": lambda: native.merge(out, 80, 0, (*t[:6], None, None)),
            "sample_logs into a short out": lambda: native.sample_logs(
                x, off, torch.zeros(8, 3, dtype=torch.float64)
            ),
            "cov_finish with float64 a32": lambda: native.cov_finish(
                torch.zeros(3, 3, dtype=torch.float64), None, t[0], 1.0, 1.0
            ),
            "cov_finish with a short delta": lambda: native.cov_finish(
                torch.zeros(3, 3), None, t[0][:2], 1.0, 1.0
            ),
        }
        for name, call in bad.items():
            try:
                call()
            except ValueError as e:
                print("raised", name, "|", e)
            else:
                print("NOT RAISED", name)
    """
    done = _python(
        code, tmp_path, "-O", SMART_TRANSFER_CACHE=os.environ.get("SMART_TRANSFER_CACHE", "")
    )
    assert done.returncode == 0, done.stderr
    assert "NOT RAISED" not in done.stdout, done.stdout
    assert done.stdout.count("raised ") == 16, done.stdout


@needs_cc
@pytest.mark.slow  # compiles the kernels into a fresh cache
def test_concurrent_processes_build_once(tmp_path):
    cc = _wrapper(tmp_path)
    code = "from smart_transfer.stats import native; print('loaded', native.kernels() is not None)"
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "OMP_NUM_THREADS": "1",
        "CC": str(cc),
        "SMART_TRANSFER_CACHE": str(tmp_path / "cache"),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all("loaded True" in o for o, _ in outs), outs
    assert len(_kernel_builds(tmp_path)) == 1, _kernel_builds(tmp_path)


@needs_cc
@pytest.mark.slow  # compiles the kernels into a fresh cache
def test_a_read_only_cache_builds_in_a_private_folder(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMART_TRANSFER_CACHE", str(cache))
    folder = native.cache_dir()
    folder.mkdir(parents=True, mode=0o700)

    def read_only(_folder):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(native, "_build_lock", read_only)
    path, lib = native.build(CC)
    assert path.parent != folder and path.parent == native._private_dir
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert list(folder.iterdir()) == []
    assert lib.st_merge is not None
    if os.geteuid() != 0:  # a real read-only folder (root writes through the mode bits)
        monkeypatch.undo()
        monkeypatch.setenv("SMART_TRANSFER_CACHE", str(cache))
        folder.chmod(0o500)
        try:
            assert native.build(CC)[0].parent == native._private_dir
        finally:
            folder.chmod(0o700)


@needs_cc
@pytest.mark.slow  # compiles the kernels into a fresh cache
def test_openmp_is_left_out_where_the_compiler_rejects_it(tmp_path):
    cc = _wrapper(tmp_path, reject="-fopenmp")
    done = _python(
        """
        from smart_transfer.stats import native
        import torch
        print('loaded', native.kernels() is not None, 'openmp', native._openmp)
        print('sum', float(native.moments(torch.ones(2, 3, 40), 1)[1].sum()))
    """,
        tmp_path,
        CC=str(cc),
    )
    assert "loaded True openmp False" in done.stdout, done.stderr
    assert "sum 0.0" in done.stdout  # values less the shift (1.0): a working library
    builds = _kernel_builds(tmp_path)
    assert len(builds) == 1 and "-fopenmp" not in builds[0].split(), builds
    assert "could not build" not in done.stderr


def test_march_native_only_with_the_cpu_features_in_the_key(monkeypatch):
    cc = CC or "cc"
    monkeypatch.setattr(native, "_accepts", lambda cc, flags: True)
    monkeypatch.setattr(native, "_cpu_features", lambda: None)
    assert not any(f.startswith("-march") for f in native._flags(cc, True))
    assert native._cpu_key().startswith("portable")
    monkeypatch.setattr(native, "_cpu_features", lambda: "flags : sse2 avx2")
    assert "-march=native" in native._flags(cc, True)
    key_a = native._cpu_key()
    monkeypatch.setattr(native, "_cpu_features", lambda: "flags : sse2 avx2 avx512f")
    assert native._cpu_key() != key_a  # another instruction set: another library


def test_a_struct_layout_mismatch_is_refused():
    class FakeLib:
        def __init__(self, size: int):
            def layout(ptr):
                return size

            self.st_args_layout = layout

    with pytest.raises(native.NativeBuildError, match="does not match"):
        native._check_layout(FakeLib(ctypes.sizeof(native.MomentsArgs) + 8))


@needs_cc
def test_the_struct_matches_the_compiled_library():
    lib = native.kernels()
    if lib is None:
        pytest.skip("kernels not loaded")
    native._check_layout(lib)  # raises on any difference in size or field offsets
    x = torch.randn(3, 4, 50)
    out = native.moments(x, 1)
    ref = x.double() - x[:, :, :1].double()[0:1, :, :1]  # less the shift (first value)
    torch.testing.assert_close(out[1], ref.sum((0, 2)), rtol=1e-5, atol=1e-4)


@needs_cc
@pytest.mark.slow  # compiles the kernels into a fresh cache
def test_build_entry_point(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore::RuntimeWarning",
            "-m",
            "smart_transfer.stats.native",
            "--build",
        ],
        env={**os.environ, "PYTHONPATH": SRC, "SMART_TRANSFER_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "built " in done.stdout and "target: -march=native" in done.stdout
    assert list((tmp_path / "cache" / "kernels").glob("stats-*.so.sha256"))
    failed = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore::RuntimeWarning",
            "-m",
            "smart_transfer.stats.native",
            "--build",
        ],
        env={
            **os.environ,
            "PYTHONPATH": SRC,
            "SMART_TRANSFER_CACHE": str(tmp_path / "c2"),
            "CC": "/bin/false",
            "PATH": "/nonexistent",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert failed.returncode == 1 and "could not be built" in failed.stderr
