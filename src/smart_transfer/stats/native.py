"""Fused per-channel statistics in C for float32 batches on the CPU.

On the CPU the eager statistics of :class:`~smart_transfer.stats.running.RunningStats` cost
dozens of tensor operations per layer and batch; for mobile networks, whose own layers are
cheap, that costs more than the forward pass. ``_kernels.c`` computes the moments, the log
moments and histogram counts of the sampled blocks and the covariance sample of a layer in one
pass, torch's OpenMP threads sharing the channels. It is compiled once with the system's C compiler (``$CC``, else ``cc``
or ``gcc``) into a cache folder and loaded with :mod:`ctypes`, so it needs no build step at
install time.

Security: a library is loaded only when this process built it, or when the sha256 recorded
beside it at build time (``stats-KEY.so.sha256``) matches its bytes and the library, the record
and the cache folder are owned by the current user and writable by nobody else; the bytes are
hashed through the same file descriptor that is then loaded. A file planted in the cache (or a
cache folder others can write to) is never loaded: the library is rebuilt, into a private
temporary folder when the cache folder itself is not private.

Where no compiler is found, or ``SMART_TRANSFER_NATIVE=0`` is set, :func:`kernels` returns None
and profiling uses the eager torch statistics, which give the same values (the tests check
both against float64 references).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
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
# Threads: OpenMP, whose runtime (libgomp) torch ships and loads, so the kernels share torch's
# threads; built without it (one thread) where the compiler has no OpenMP.
OPENMP = ("-fopenmp",)

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_lock = threading.Lock()
_lib: Any = None
_tried = False
_openmp = False  # whether the loaded library splits its work between OpenMP threads


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


def _key(cc: str, openmp: bool) -> str:
    """The cache key of a build: the source, flags, compiler version and target CPU."""
    src = SOURCE.read_bytes()
    version = subprocess.run(
        [cc, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    return hashlib.sha256(
        b"\0".join(
            [src, " ".join(FLAGS + (OPENMP if openmp else ())).encode(), version.encode(), _cpu_key().encode(),
             platform.machine().encode()]
        )
    ).hexdigest()[:16]


def _exposed(st: os.stat_result) -> str | None:
    """Why a file or folder with this ``lstat`` could be changed by another user, or None."""
    getuid = getattr(os, "getuid", None)
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if getuid is not None and st.st_uid != getuid():
        return f"is owned by another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return "is writable by group or others"
    return None


_private_dir: Path | None = None


def _cache_folder() -> Path:
    """The cache folder if only this user can change it; otherwise a private temporary folder
    (created once per process, mode 0700), so nobody else's file is ever loaded."""
    global _private_dir
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _exposed(os.lstat(folder)) is None:
            return folder
    except OSError:
        pass
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="smart-transfer-kernels-"))
        atexit.register(shutil.rmtree, _private_dir, True)
    return _private_dir


def _sidecar(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _recorded(lib: Path) -> str | None:
    """The sha256 recorded at build time beside ``lib``, when the library, its record and their
    folder can be changed by this user alone and the library's bytes still match it."""
    try:
        for p in (lib.parent, lib, _sidecar(lib)):
            if _exposed(os.lstat(p)) is not None:
                return None
        digest = _sidecar(lib).read_text(encoding="ascii").strip()
        return digest if hashlib.sha256(lib.read_bytes()).hexdigest() == digest else None
    except (OSError, UnicodeDecodeError):
        return None


def _library(cc: str, openmp: bool = True) -> tuple[Path, str]:
    """``(path, sha256)`` of the compiled library: the cached build when its recorded hash
    matches (see :func:`_recorded`), else a fresh build whose hash is recorded beside it."""
    folder = _cache_folder()
    lib = folder / f"stats-{_key(cc, openmp)}.so"
    digest = _recorded(lib)
    if digest is not None:
        return lib, digest
    fd, tmp = tempfile.mkstemp(prefix=lib.name + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    side_tmp = tmp + ".sha256"
    try:
        done = subprocess.run(
            [cc, *FLAGS, *(OPENMP if openmp else ()), "-o", tmp, str(SOURCE), "-lm"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if done.returncode != 0:
            raise OSError(done.stderr.strip()[-2000:] or f"{cc} exited with {done.returncode}")
        os.chmod(tmp, 0o755)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        with open(side_tmp, "w", encoding="ascii") as f:
            f.write(digest + "\n")
        os.chmod(side_tmp, 0o644)
        os.replace(tmp, lib)  # atomic: a concurrent process sees the old name or the whole file
        os.replace(side_tmp, _sidecar(lib))
    finally:
        for t in (tmp, side_tmp):
            if os.path.exists(t):
                os.unlink(t)
    return lib, digest


def _build(cc: str, openmp: bool = True) -> Path:
    """The path of a verified (or freshly built) library."""
    return _library(cc, openmp)[0]


def _open_verified(lib: Path, digest: str) -> Any:
    """``ctypes.CDLL`` of ``lib``, loaded through the descriptor whose bytes were hashed (no
    window in which the file could be swapped between the check and the load)."""
    fd = os.open(lib, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        reason = _exposed(os.fstat(fd))
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        if reason is None and hashlib.sha256(data).hexdigest() != digest:
            reason = "changed since it was checked"
        if reason is not None:
            raise OSError(f"refusing to load {lib}: it {reason}")
        via = f"/proc/self/fd/{fd}"
        return ctypes.CDLL(via if os.path.exists(via) else str(lib))
    finally:
        os.close(fd)


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
    global _openmp
    try:
        try:
            lib, _openmp = _open_verified(*_library(cc, openmp=True)), True
        except OSError:  # no OpenMP in this compiler: one thread
            lib, _openmp = _open_verified(*_library(cc, openmp=False)), False
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(
            f"smart_transfer: could not build the fused statistics with {cc} ({e}); profiling on "
            "the CPU uses the slower eager statistics (same values)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    moments_args: list[Any] = [ctypes.c_int, _PTR] + [_I64] * 8 + [_PTR] * 8
    lib.st_moments_par.argtypes = moments_args
    lib.st_sample_logs_par.argtypes = [ctypes.c_int, _PTR, _I64, _I64, _PTR, _I64, _I64, _I64, _PTR]
    for f in (lib.st_moments_par, lib.st_sample_logs_par):
        f.restype = None
    lib.st_merge.argtypes = [_I64, ctypes.c_double, ctypes.c_double, _PTR, _PTR]
    lib.st_merge.restype = ctypes.c_int
    lib.st_cov_finish.argtypes = [ctypes.c_int, _I64, _PTR, _PTR, _PTR, ctypes.c_double,
                                  ctypes.c_double, _PTR]
    lib.st_cov_finish.restype = None
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


def _run(fn: Any, channels: int, work: int, args: tuple[Any, ...]) -> None:
    """Call the kernel ``fn`` (a ``*_par`` entry point) over all channels, split between
    torch's number of threads (one for small batches, where handing work over costs more).

    The kernels run on the process's OpenMP threads (see ``SPLIT`` in ``_kernels.c``); ctypes
    releases the GIL during the call.
    """
    threads = max(1, min(torch.get_num_threads(), channels))
    if work < (1 << 16) or not _openmp:
        threads = 1
    fn(threads, *args)


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


def moments(
    x: Tensor,
    logs: int,
    log_phase: int = 0,
    hist: tuple[int, int, Tensor | None, Tensor, Tensor, Tensor] | None = None,
    cov: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The kernels' (9, C) float64 sums of an (N, C, L) batch, one row each: the channel's shift
    (its first value), the sum and sum of squares of the values less the shift, min, max, the
    number of non-zeros and the count, sum and sum of squared deviations from their mean of
    log|x| over the non-zero sampled values (rows 6-8 are where :func:`sample_logs` writes
    otherwise). :func:`merge` folds them into running totals.

    ``logs``: 0 no logs, 1 (or True) the logs of every value, ``R > 1`` those of the positions
    in every R-th block of :data:`BLOCK` positions (see :func:`block_positions`), from the
    block ``log_phase`` on. In the same pass, while each channel is in cache:
    ``hist=(rate, phase, offsets, low, cut, counts)`` adds the histogram counts of the
    positions in every ``rate``-th block, or (``rate`` 0) of those at the element ``offsets``
    (:func:`offsets`), to ``counts`` ((C, bins) float64; ``low``/``cut``: the bin tables, +inf
    (never NaN) in ``cut`` where a cell holds no edge); ``cov=(offsets, sub)`` copies the values
    at those positions into ``sub`` ((k, C) float32).
    """
    n, c, length, sn, sc, sl = _layout(x)
    lib = kernels()
    out = torch.zeros(9, c, dtype=torch.float64)
    cfg = [int(logs), int(log_phase), 0, 0, 0, 0, 0]
    hoff = lptr = cptr = hptr = 0
    if hist is not None:
        rate, phase, h_off, low, cut, counts = hist
        assert counts.is_contiguous() and counts.dtype == torch.float64
        cfg[2], cfg[3], cfg[6] = int(rate), int(phase), counts.shape[1]
        if h_off is not None:
            hoff, cfg[4] = h_off.data_ptr(), h_off.numel()
        lptr, cptr, hptr = low.data_ptr(), cut.data_ptr(), counts.data_ptr()
    coff = sptr = 0
    if cov is not None:
        c_off, sub = cov
        assert sub.is_contiguous() and sub.shape == (c_off.numel(), c)
        coff, cfg[5], sptr = c_off.data_ptr(), c_off.numel(), sub.data_ptr()
    cfg_c = (ctypes.c_int64 * len(cfg))(*cfg)
    ptr, optr, gptr = x.data_ptr(), out.data_ptr(), ctypes.addressof(cfg_c)
    _run(
        lib.st_moments_par,
        c,
        n * c * length,
        (ptr, n, c, length, sn, sc, sl, 0, c, gptr, optr, hoff, lptr, cptr, hptr, coff, sptr),
    )
    return out


def merge(out: Tensor, count: float, total: float, totals: tuple[Tensor | None, ...]) -> bool:
    """Fold the kernels' ``out`` ((9, C), :func:`moments`) of a batch of ``count`` values per
    channel into float64 running totals of ``total`` values so far, in place: ``totals`` =
    (mean, m2, min, max, zeros, log count, log mean, log m2), contiguous (C,) float64 CPU
    tensors (the last three None without logs). The same formulas as running.py's eager merge;
    row 0 of ``out`` becomes the batch means. False when one of them is NaN or infinite."""
    c = out.shape[1]
    for t in totals:
        assert t is None or (t.is_contiguous() and t.dtype == torch.float64 and t.numel() == c)
    ptrs = (_PTR * 8)(*(0 if t is None else t.data_ptr() for t in totals))
    return bool(kernels().st_merge(c, float(count), float(total), out.data_ptr(), ptrs))


# Positions per sampling block (the kernels' vector width).
BLOCK = 16


def block_mask(num: int, length: int, rate: int, phase: int) -> Tensor:
    """(num, ceil(length / BLOCK)) bool: the sampled blocks of an (N, C, L) batch, block
    ``n * ceil(L / BLOCK) + l // BLOCK`` holding positions ``n * L + l``; sampled when
    ``(block + phase) % rate == 0``."""
    nv = -(-length // BLOCK)
    blocks = torch.arange(num * nv, dtype=torch.int64).view(num, nv)
    return (blocks + phase).remainder_(rate) == 0


def block_positions(num: int, length: int, rate: int, phase: int) -> Tensor:
    """Flattened positions ``n * L + l`` of the sampled blocks (:func:`block_mask`), ascending."""
    mask = block_mask(num, length, rate, phase)
    per_pos = mask.repeat_interleave(BLOCK, dim=1)[:, :length]
    return per_pos.reshape(-1).nonzero().squeeze(1)


def block_count(num: int, length: int, rate: int, phase: int) -> int:
    """How many positions :func:`block_positions` gives, without listing them."""
    nv = -(-length // BLOCK)
    first = (-phase) % rate  # the first sampled block
    blocks = 0 if first >= num * nv else (num * nv - 1 - first) // rate + 1
    # each image's last block is short by BLOCK - (its width)
    short = BLOCK * nv - length
    last = sum(1 for n in range(num) if (n * nv + nv - 1 + phase) % rate == 0) if short else 0
    return BLOCK * blocks - short * last


def offsets(x: Tensor, pos: Tensor) -> Tensor:
    """Element offsets (of channel 0) of flattened positions ``p = n * L + l`` of an (N, C, L)
    batch, as :func:`sample_logs` and :func:`sample_hist` take them: one integer division per
    position here instead of one per value in the kernels."""
    length = x.shape[2]
    sn, _sc, sl = x.stride()
    pos = pos.to(torch.int64)
    return (torch.div(pos, length, rounding_mode="floor") * sn + pos.remainder(length) * sl).contiguous()


def sample_logs(x: Tensor, off: Tensor, out: Tensor) -> None:
    """Write the log count, sum and sum of squared deviations over the positions at element
    offsets ``off`` (:func:`offsets`) into ``out[6:9]``."""
    lib = kernels()
    c, sc = x.shape[1], x.stride(1)
    ptr, optr_, optr, k = x.data_ptr(), off.data_ptr(), out.data_ptr(), off.numel()
    _run(lib.st_sample_logs_par, c, k * c, (ptr, c, sc, optr_, k, 0, c, optr))


def cov_finish(a32: Tensor, a64: Tensor | None, delta: Tensor, count: float, scale: float) -> Tensor:
    """``(a32 + a64 - count * delta delta^T) * scale`` as a new (C, C) float64 tensor, read
    from the upper triangle and mirrored below it (exactly symmetric); ``a32`` float32, ``a64``
    float64 or None, ``delta`` (C,) float64, all contiguous on the CPU. The diagonal is the
    caller's to set."""
    c = a32.shape[0]
    assert a32.dtype == torch.float32 and a32.is_contiguous() and delta.is_contiguous()
    assert a64 is None or (a64.dtype == torch.float64 and a64.is_contiguous())
    out = torch.empty(c, c, dtype=torch.float64)
    threads = max(1, min(torch.get_num_threads(), c)) if _openmp and c * c >= (1 << 16) else 1
    kernels().st_cov_finish(
        threads, c, a32.data_ptr(), 0 if a64 is None else a64.data_ptr(), delta.data_ptr(),
        -float(count) * scale, float(scale), out.data_ptr(),
    )
    return out
