"""Fused per-channel statistics in C for float32 batches on the CPU.

On the CPU the eager statistics of :class:`~smart_transfer.stats.running.RunningStats` cost
dozens of tensor operations per layer and batch; for mobile networks, whose own layers are
cheap, that costs more than the forward pass. ``_kernels.c`` computes the moments, log
moments and histogram counts of a layer in one pass per statistic group, several threads
sharing the channels. It is compiled once with the system's C compiler (``$CC``, else ``cc``
or ``gcc``) into a cache folder and loaded with :mod:`ctypes`, so it needs no build step at
install time.

Where no compiler is found, or ``SMART_TRANSFER_NATIVE=0`` is set, :func:`kernels` returns None
and profiling uses the eager torch statistics, which give the same values (the tests check
both against float64 references).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("_kernels.c")
# The parts of -ffast-math that let the compiler vectorise the sums and min/max (see the
# comment in _kernels.c), without -ffast-math itself: linking a shared library with it would
# set flush-to-zero for the whole process.
FLAGS = (
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-ffinite-math-only",
    "-freciprocal-math",
    "-fPIC",
    "-shared",
)

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_lock = threading.Lock()
_lib: Any = None
_tried = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$SMART_TRANSFER_CACHE`` or the user cache folder."""
    env = os.environ.get("SMART_TRANSFER_CACHE")
    if env:
        return Path(env).expanduser() / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "smart-transfer" / "kernels"


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def _cpu_key() -> str:
    """Text that changes with the instruction set the library is compiled for (-march=native)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    src = SOURCE.read_bytes()
    version = subprocess.run(
        [cc, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    key = hashlib.sha256(
        b"\0".join(
            [src, " ".join(FLAGS).encode(), version.encode(), _cpu_key().encode(),
             platform.machine().encode()]
        )
    ).hexdigest()[:16]
    folder = cache_dir()
    lib = folder / f"stats-{key}.so"
    if lib.exists():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=lib.name + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run(
            [cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if done.returncode != 0:
            raise OSError(done.stderr.strip()[-2000:] or f"{cc} exited with {done.returncode}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, lib)  # atomic: a concurrent process sees the old name or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _load() -> Any:
    if os.environ.get("SMART_TRANSFER_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if sys.byteorder != "little":
        return None
    cc = _compiler()
    if cc is None:
        warnings.warn(
            "smart_transfer: no C compiler found (install gcc or set CC); profiling on the CPU "
            "uses the slower eager statistics (same values)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(
            f"smart_transfer: could not build the fused statistics with {cc} ({e}); profiling on "
            "the CPU uses the slower eager statistics (same values)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    lib.st_moments.argtypes = [_PTR] + [_I64] * 8 + [ctypes.c_int, _PTR]
    lib.st_sample_logs.argtypes = [_PTR, _I64, _I64, _PTR, _I64, _I64, _I64, _PTR]
    lib.st_sample_hist.argtypes = [_PTR, _I64, _I64, _PTR, _I64, _I64, _I64, _PTR, _PTR, _I64, _PTR]
    for f in (lib.st_moments, lib.st_sample_logs, lib.st_sample_hist):
        f.restype = None
    return lib


def kernels() -> Any:
    """The loaded library, or None where it cannot be used (see the module docstring)."""
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _lib = _load()
                _tried = True
    return _lib


def _run(fn: Any, channels: int, work: int, args_for: Any) -> None:
    """Call ``fn(*args_for(c0, c1))`` over channel ranges, on torch's number of threads.

    ctypes releases the GIL during the call, so the ranges run in parallel. Small batches run
    in the calling thread (handing work to another thread costs about 50 microseconds).
    """
    global _pool, _pool_size
    threads = max(1, min(torch.get_num_threads(), channels))
    if threads == 1 or work < (1 << 16):
        fn(*args_for(0, channels))
        return
    if _pool is None or _pool_size != threads:
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="st-stats")
        _pool_size = threads
    edges = [channels * i // threads for i in range(threads + 1)]
    futures = [
        _pool.submit(fn, *args_for(edges[i], edges[i + 1])) for i in range(1, threads)
    ]
    fn(*args_for(edges[0], edges[1]))
    for f in futures:
        f.result()


def supported(x: Tensor) -> bool:
    """Whether the fused statistics take this (N, C, L) batch: float32 on the CPU, with each
    image's channel rows contiguous (``stride(2) == 1``: NCHW conv outputs) or each position's
    channels contiguous (``stride(1) == 1``: channels-last conv outputs, linear outputs,
    tokens)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.ndim != 3 or x.numel() == 0:
        return False
    return x.stride(2) == 1 or x.stride(1) == 1 or x.shape[2] == 1


def _layout(x: Tensor) -> tuple[int, int, int, int, int, int]:
    """(N, C, L, sn, sc, sl) of an (N, C, L) batch; sl == 1 selects the kernels' rows path."""
    n, c, length = x.shape
    sn, sc, sl = x.stride()
    if length == 1:  # one position: any stride; channels-last path where channels are contiguous
        sl = c + 1 if sc == 1 and c > 1 else 1
    elif sl != 1 and sc != 1:
        raise ValueError("the fused statistics need stride(1) == 1 or stride(2) == 1")
    return n, c, length, sn, sc, sl


# Channel rows shorter than this are reduced per (channel, position) column across the images
# (vectorised over the columns) and the columns then combined; a loop along rows of a few
# values runs far below the vector units' speed.
SHORT_ROW = 17


def moments(x: Tensor, logs: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, m2, out)`` of an (N, C, L) batch: per-channel means and sums of squared
    deviations (float64), and the kernels' (9, C) float64 buffer whose rows 3-8 hold min, max,
    the number of non-zeros and (with ``logs``) the count, sum and sum of squares of log|x| over
    the non-zero values (rows 6-8 are where :func:`sample_logs` writes otherwise)."""
    n, c, length, sn, sc, sl = _layout(x)
    if sl == 1 and 1 < length < SHORT_ROW and sc == length:
        cols = _moments(x, n, c * length, 1, sn, 1, c * length + 1, logs)
        return _combine_columns(cols.view(9, c, length), n, logs)
    out = _moments(x, n, c, length, sn, sc, sl, logs)
    total = n * length
    shift, s1, s2 = out[0], out[1], out[2]
    return shift + s1 / total, (s2 - s1 * s1 / total).clamp_min_(0), out


def _moments(
    x: Tensor, n: int, c: int, length: int, sn: int, sc: int, sl: int, logs: bool
) -> Tensor:
    lib = kernels()
    out = torch.empty(9, c, dtype=torch.float64)
    ptr, optr = x.data_ptr(), out.data_ptr()
    _run(
        lib.st_moments,
        c,
        n * c * length,
        lambda c0, c1: (ptr, n, c, length, sn, sc, sl, c0, c1, int(logs), optr),
    )
    return out


def _combine_columns(cols: Tensor, n: int, logs: bool) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`moments` from per-(channel, position) columns of ``n`` values each.

    Each column has its own shift; the columns are combined exactly:
    ``M2 = sum_j M2_j + n * sum_j (m_j - m)^2`` (Chan et al.).
    """
    shift, s1, s2, mn, mx, nz, lc, l1, l2 = cols.unbind(0)  # each (C, L)
    col_mean = shift + s1 / n
    col_m2 = (s2 - s1 * s1 / n).clamp_min_(0)
    mean = col_mean.mean(1)
    dev = col_mean - mean.unsqueeze(1)
    m2 = col_m2.sum(1) + n * (dev * dev).sum(1)
    out = torch.empty(9, shift.shape[0], dtype=torch.float64)
    out[3] = mn.amin(1)
    out[4] = mx.amax(1)
    out[5] = nz.sum(1)
    if logs:
        out[6], out[7], out[8] = lc.sum(1), l1.sum(1), l2.sum(1)
    return mean, m2, out


def offsets(x: Tensor, pos: Tensor) -> Tensor:
    """Element offsets (of channel 0) of flattened positions ``p = n * L + l`` of an (N, C, L)
    batch, as :func:`sample_logs` and :func:`sample_hist` take them: one integer division per
    position here instead of one per value in the kernels."""
    length = x.shape[2]
    sn, _sc, sl = x.stride()
    pos = pos.to(torch.int64)
    return (torch.div(pos, length, rounding_mode="floor") * sn + pos.remainder(length) * sl).contiguous()


def sample_logs(x: Tensor, off: Tensor, out: Tensor) -> None:
    """Write the log count, sum and sum of squares over the positions at element offsets
    ``off`` (:func:`offsets`) into ``out[6:9]``."""
    lib = kernels()
    c, sc = x.shape[1], x.stride(1)
    ptr, optr_, optr, k = x.data_ptr(), off.data_ptr(), out.data_ptr(), off.numel()
    _run(lib.st_sample_logs, c, k * c, lambda c0, c1: (ptr, c, sc, optr_, k, c0, c1, optr))


def sample_hist(x: Tensor, off: Tensor, low: Tensor, cut: Tensor, hist: Tensor) -> None:
    """Add the histogram counts of the positions at element offsets ``off`` to ``hist``
    ((C, bins) float64). ``low``/``cut``: the bin tables, +inf (never NaN) in ``cut`` where a
    cell holds no edge."""
    lib = kernels()
    c, sc = x.shape[1], x.stride(1)
    bins = hist.shape[1]
    ptr, optr_, k = x.data_ptr(), off.data_ptr(), off.numel()
    lptr, cptr, hptr = low.data_ptr(), cut.data_ptr(), hist.data_ptr()
    _run(
        lib.st_sample_hist,
        c,
        k * c,
        lambda c0, c1: (ptr, c, sc, optr_, k, c0, c1, lptr, cptr, bins, hptr),
    )
