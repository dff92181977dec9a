"""Fused per-channel statistics in C for float32 batches on the CPU.

On the CPU the eager statistics of :class:`~smart_transfer.stats.running.RunningStats` cost
dozens of tensor operations per layer and batch; for mobile networks, whose own layers are
cheap, that costs more than the forward pass. ``_kernels.c`` computes the moments, the log
moments and histogram counts of the sampled blocks and the covariance sample of a layer in one
pass, torch's OpenMP threads sharing the channels. It is compiled with the system's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``) into a cache folder and loaded with :mod:`ctypes`:
at install time by ``python -m smart_transfer.stats.native --build`` (scripts/install.sh),
else on first use. The arguments of the main kernel travel in one struct, :class:`MomentsArgs`,
mirrored field for field by ``st_moments_args`` in the C file (its layout is checked on
load); every memory-safety precondition of a call is checked with a real exception
(ValueError), so it still holds under ``python -O``.

Build: -fopenmp only where a probe shows the compiler takes it (not Apple clang);
-march=native only where the CPU's instruction-set flags can be read, and they are part of the
cache key, so a cache shared by different CPUs holds one library per instruction set
(elsewhere a portable build with no -march). Concurrent processes (the ranks of a distributed
run) build once: the build holds ``fcntl.flock`` on ``build.lock`` in the cache folder. A
read-only cache folder gets the build in a private temporary folder.

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
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no file lock (the build there is still atomic)
    fcntl = None  # type: ignore[assignment]

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("_kernels.c")
# The parts of -ffast-math that let the compiler vectorise the sums and min/max (see the
# comment in _kernels.c), without -ffast-math itself: linking a shared library with it would
# set flush-to-zero for the whole process.
FLAGS = (
    "-O3",
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-ffinite-math-only",
    "-freciprocal-math",
    "-fPIC",
    "-shared",
)
# The target CPU. -march=native only where the CPU's instruction-set flags can be read (Linux's
# /proc/cpuinfo): they are part of the cache key, so a cache shared between machines (a
# network home) holds one library per instruction set and none is loaded on a CPU it was not
# built for. Elsewhere a portable build for the compiler's default target (no -march).
NATIVE_ARCH = ("-march=native",)
# Threads: OpenMP, whose runtime (libgomp) torch ships and loads, so the kernels share torch's
# threads; left out (one thread) where the compiler rejects it (Apple clang), found by a probe.
OPENMP = ("-fopenmp",)

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_lock = threading.Lock()
_lib: Any = None
_tried = False
_openmp = False  # whether the loaded library splits its work between OpenMP threads
_probes: dict[tuple[str, tuple[str, ...]], bool] = {}


class NativeBuildError(OSError):
    """The kernels could not be built or loaded (the eager statistics are used instead)."""


class MomentsArgs(ctypes.Structure):
    """``st_moments_args`` of _kernels.c, field for field (checked against the library's own
    layout, :func:`_check_layout`, before the first call)."""

    _fields_ = [
        ("x", _PTR),
        ("n_img", _I64),
        ("C", _I64),
        ("L", _I64),
        ("sn", _I64),
        ("sc", _I64),
        ("sl", _I64),
        ("c0", _I64),
        ("c1", _I64),
        ("lrate", _I64),
        ("lphase", _I64),
        ("hrate", _I64),
        ("hphase", _I64),
        ("kh", _I64),
        ("kc", _I64),
        ("bins", _I64),
        ("out", _PTR),
        ("hoff", _PTR),
        ("low", _PTR),
        ("cut", _PTR),
        ("hist", _PTR),
        ("coff", _PTR),
        ("sub", _PTR),
    ]


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


def _cpu_features() -> str | None:
    """The CPU's model and instruction-set flags as the kernel lists them, or None where they
    cannot be read (then the build is portable: no -march=native)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key = line.partition(":")[0].strip()
                if key in ("flags", "Features", "model name", "CPU part") and key not in found:
                    found[key] = line.strip()
                if not line.strip() and found:
                    break
    except OSError:
        return None
    if "flags" not in found and "Features" not in found:
        return None
    return "\n".join(found[k] for k in sorted(found))


def _cpu_key() -> str:
    """Text that changes with the instruction set the library is compiled for."""
    return _cpu_features() or f"portable {platform.machine()}"


def _arch_flags(cc: str) -> tuple[str, ...]:
    """-march=native where the CPU's features are in the cache key and the compiler takes it."""
    if _cpu_features() is None or not _accepts(cc, NATIVE_ARCH):
        return ()
    return NATIVE_ARCH


def _flags(cc: str, openmp: bool) -> tuple[str, ...]:
    return FLAGS + _arch_flags(cc) + (OPENMP if openmp else ())


def _accepts(cc: str, flags: tuple[str, ...]) -> bool:
    """Whether ``cc`` compiles and links a shared library with ``flags`` (cached per process):
    Apple clang, for one, rejects -fopenmp."""
    key = (cc, flags)
    if key not in _probes:
        with tempfile.TemporaryDirectory(prefix="smart-transfer-probe-") as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text("int st_probe(void) { return 1; }\n", encoding="ascii")
            try:
                done = subprocess.run(
                    [cc, *flags, "-fPIC", "-shared", "-o", str(Path(tmp) / "probe.so"), str(src)],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
                _probes[key] = done.returncode == 0
            except (OSError, subprocess.SubprocessError):
                _probes[key] = False
    return _probes[key]


def _key(cc: str, openmp: bool) -> str:
    """The cache key of a build: the source, flags, compiler version and target CPU."""
    src = SOURCE.read_bytes()
    version = subprocess.run(
        [cc, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    parts = [
        src,
        " ".join(_flags(cc, openmp)).encode(),
        version.encode(),
        _cpu_key().encode(),
        platform.machine().encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


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


def _private_folder() -> Path:
    """A private temporary folder (created once per process, mode 0700, removed at exit)."""
    global _private_dir
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="smart-transfer-kernels-"))
        atexit.register(shutil.rmtree, _private_dir, True)
    return _private_dir


def _cache_folder() -> Path:
    """The cache folder if only this user can change it; otherwise a private temporary folder,
    so nobody else's file is ever loaded. A read-only cache folder is still returned (a
    library recorded there earlier may be loaded); :func:`_library` builds elsewhere."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _exposed(os.lstat(folder)) is None:
            return folder
    except OSError:
        pass
    return _private_folder()


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


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/build.lock`` while a library is checked and built, so that
    concurrent processes (the ranks of a distributed run) build it once: the others wait and
    then find it recorded. No lock where the platform has no ``fcntl`` (Windows)."""
    if fcntl is None:
        yield
        return
    fd = os.open(
        folder / "build.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _compile_into(cc: str, openmp: bool, folder: Path, lib: Path) -> str:
    """Compile the kernels to ``lib`` in ``folder`` (atomically, with its sha256 recorded
    beside it); returns the digest."""
    fd, tmp = tempfile.mkstemp(prefix=lib.name + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    side_tmp = tmp + ".sha256"
    try:
        done = subprocess.run(
            [cc, *_flags(cc, openmp), "-o", tmp, str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise NativeBuildError(
                done.stderr.strip()[-2000:] or f"{cc} exited with {done.returncode}"
            )
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
    return digest


def _library(cc: str, openmp: bool = True) -> tuple[Path, str]:
    """``(path, sha256)`` of the compiled library: the cached build when its recorded hash
    matches (see :func:`_recorded`), else a fresh build whose hash is recorded beside it, under
    a file lock (one build among concurrent processes). A cache folder that cannot be written
    (read-only) gets the build in a private temporary folder instead."""
    folder = _cache_folder()
    name = f"stats-{_key(cc, openmp)}.so"
    digest = _recorded(folder / name)
    if digest is not None:
        return folder / name, digest
    try:
        with _build_lock(folder):
            digest = _recorded(folder / name)  # built by another process while we waited
            if digest is None:
                digest = _compile_into(cc, openmp, folder, folder / name)
            return folder / name, digest
    except NativeBuildError:
        raise
    except OSError:
        if folder == _private_dir:
            raise
    folder = _private_folder()  # the cache folder is read-only (or full): build privately
    return folder / name, _compile_into(cc, openmp, folder, folder / name)


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


def _check_layout(lib: Any) -> None:
    """Refuse a library whose ``st_moments_args`` differs from :class:`MomentsArgs`."""
    offsets = (_I64 * len(MomentsArgs._fields_))()
    lib.st_args_layout.argtypes = [_PTR]
    lib.st_args_layout.restype = _I64
    size = lib.st_args_layout(ctypes.addressof(offsets))
    mine = [getattr(MomentsArgs, f[0]).offset for f in MomentsArgs._fields_]
    if size != ctypes.sizeof(MomentsArgs) or list(offsets) != mine:
        raise NativeBuildError(
            f"the kernels' argument struct ({size} bytes, offsets {list(offsets)}) does not match "
            f"native.MomentsArgs ({ctypes.sizeof(MomentsArgs)} bytes, offsets {mine})"
        )


def _bind(lib: Any) -> Any:
    """Declare the entry points' argument types (after checking the struct's layout)."""
    _check_layout(lib)
    lib.st_moments_struct.argtypes = [ctypes.c_int, ctypes.POINTER(MomentsArgs)]
    lib.st_moments_struct.restype = None
    lib.st_sample_logs_par.argtypes = [ctypes.c_int, _PTR, _I64, _I64, _PTR, _I64, _I64, _I64, _PTR]
    lib.st_sample_logs_par.restype = None
    lib.st_merge.argtypes = [_I64, ctypes.c_double, ctypes.c_double, _PTR, _PTR]
    lib.st_merge.restype = ctypes.c_int
    lib.st_cov_finish.argtypes = [
        ctypes.c_int,
        _I64,
        _PTR,
        _PTR,
        _PTR,
        ctypes.c_double,
        ctypes.c_double,
        _PTR,
    ]
    lib.st_cov_finish.restype = None
    return lib


def build(cc: str | None = None) -> tuple[Path, Any]:
    """Build (or find in the cache) and load the kernels; returns ``(library path, library)``.
    Raises :class:`NativeBuildError` with the compiler's message when that fails."""
    global _openmp
    cc = cc or _compiler()
    if cc is None:
        raise NativeBuildError("no C compiler found (install gcc or set CC)")
    openmp = _accepts(cc, OPENMP)
    try:
        path, digest = _library(cc, openmp)
        lib = _bind(_open_verified(path, digest))
    except AttributeError as e:  # a library without the kernels' symbols
        raise NativeBuildError(f"{e}") from e
    except subprocess.SubprocessError as e:
        raise NativeBuildError(f"{cc}: {e}") from e
    _openmp = openmp
    return path, lib


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
        return build(cc)[1]
    except OSError as e:
        warnings.warn(
            f"smart_transfer: could not build the fused statistics with {cc} ({e}); profiling on "
            "the CPU uses the slower eager statistics (same values)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


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


def _require(ok: bool, what: str) -> None:
    """A precondition of a kernel call: a real exception (not an ``assert``, which ``python -O``
    removes), because a violated one would read or write memory outside a tensor."""
    if not ok:
        raise ValueError(f"native statistics: {what}")


def _check_tensor(t: Tensor, name: str, dtype: torch.dtype, numel: int | None = None) -> None:
    """``t`` is a contiguous CPU tensor of ``dtype`` (with ``numel`` elements when given)."""
    _require(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _require(t.device.type == "cpu", f"{name} must be on the CPU, got {t.device}")
    _require(t.dtype == dtype, f"{name} must be {dtype}, got {t.dtype}")
    _require(t.is_contiguous(), f"{name} must be contiguous")
    if numel is not None:
        _require(t.numel() == numel, f"{name} must have {numel} elements, got {t.numel()}")


def _check_batch(x: Tensor) -> tuple[int, int, int, int, int, int]:
    """The layout of an (N, C, L) float32 CPU batch whose every element the kernels may read
    lies inside its storage; raises ValueError otherwise."""
    _require(isinstance(x, Tensor) and x.ndim == 3, "the batch must be an (N, C, L) tensor")
    _require(
        x.dtype == torch.float32 and x.device.type == "cpu", "the batch must be float32 on the CPU"
    )
    _require(x.numel() > 0, "the batch must not be empty")
    _require(min(x.stride()) >= 0, "the batch's strides must not be negative")
    layout = _layout(x)
    last = x.storage_offset() + sum((d - 1) * st for d, st in zip(x.shape, x.stride()))
    _require(
        bool(last < x.untyped_storage().nbytes() // 4), "the batch's view reaches past its storage"
    )
    return layout


def _check_offsets(off: Tensor, x: Tensor, name: str) -> None:
    """``off`` holds element offsets of positions of ``x`` (:func:`offsets`): int64, contiguous,
    each at least 0 and at most the offset of the batch's last position."""
    _check_tensor(off, name, torch.int64)
    if off.numel():
        n, _c, length = x.shape
        sn, _sc, sl = x.stride()
        top = (n - 1) * sn + (length - 1) * sl
        _require(int(off.min()) >= 0 and int(off.max()) <= top, f"{name} points outside the batch")


_tables_checked: set[tuple[int, int, int]] = set()


def _check_bins(low: Tensor, bins: int) -> None:
    """Every bin the table ``low`` names (and the one above it) is one of ``bins``: checked once
    per table (the tables are cached, read-only, for the life of the process)."""
    key = (low.data_ptr(), low.untyped_storage().data_ptr(), bins)
    if key not in _tables_checked:
        _require(
            int(low.min()) >= 0 and int(low.max()) < bins,
            "hist table low names bins outside the counts",
        )
        _tables_checked.add(key)


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
    at those positions into ``sub`` ((k, C) float32). Every tensor is checked first (ValueError).
    """
    n, c, length, sn, sc, sl = _check_batch(x)
    lib = kernels()
    _require(lib is not None, "the kernels are not loaded")
    out = torch.zeros(9, c, dtype=torch.float64)
    a = MomentsArgs(
        x=x.data_ptr(),
        n_img=n,
        C=c,
        L=length,
        sn=sn,
        sc=sc,
        sl=sl,
        c0=0,
        c1=c,
        lrate=int(logs),
        lphase=int(log_phase),
        out=out.data_ptr(),
    )
    _require(a.lrate >= 0 and 0 <= a.lphase, "logs and log_phase must not be negative")
    if hist is not None:
        rate, phase, h_off, low, cut, counts = hist
        _require(counts.ndim == 2 and counts.shape[0] == c, "hist counts must be (C, bins)")
        _check_tensor(counts, "hist counts", torch.float64)
        _check_tensor(low, "hist table low", torch.int32, 65536)
        _check_tensor(cut, "hist table cut", torch.float32, 65536)
        _check_bins(low, counts.shape[1])
        _require(int(rate) >= 0 and int(phase) >= 0, "hist rate and phase must not be negative")
        a.hrate, a.hphase, a.bins = int(rate), int(phase), counts.shape[1]
        if h_off is not None:
            _check_offsets(h_off, x, "hist offsets")
            a.hoff, a.kh = h_off.data_ptr(), h_off.numel()
        a.low, a.cut, a.hist = low.data_ptr(), cut.data_ptr(), counts.data_ptr()
    if cov is not None:
        c_off, sub = cov
        _check_offsets(c_off, x, "covariance offsets")
        _check_tensor(sub, "covariance sample", torch.float32, c_off.numel() * c)
        a.coff, a.kc, a.sub = c_off.data_ptr(), c_off.numel(), sub.data_ptr()
    _run(lib.st_moments_struct, c, n * c * length, (ctypes.byref(a),))
    return out


def merge(out: Tensor, count: float, total: float, totals: tuple[Tensor | None, ...]) -> bool:
    """Fold the kernels' ``out`` ((9, C), :func:`moments`) of a batch of ``count`` values per
    channel into float64 running totals of ``total`` values so far, in place: ``totals`` =
    (mean, m2, min, max, zeros, log count, log mean, log m2), contiguous (C,) float64 CPU
    tensors (the last three None without logs). The same formulas as running.py's eager merge;
    row 0 of ``out`` becomes the batch means. False when one of them is NaN or infinite."""
    _require(out.ndim == 2 and out.shape[0] == 9, "out must be the (9, C) output of moments")
    c = out.shape[1]
    _check_tensor(out, "out", torch.float64)
    _require(len(totals) == 8, f"totals must be 8 tensors or None, got {len(totals)}")
    for i, t in enumerate(totals):
        _require(i >= 5 or t is not None, "the totals of the moments must be tensors")
        if t is not None:
            _check_tensor(t, f"totals[{i}]", torch.float64, c)
    logs = [t is None for t in totals[5:]]
    _require(all(logs) or not any(logs), "the three log totals must be all tensors or all None")
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
    return (
        torch.div(pos, length, rounding_mode="floor") * sn + pos.remainder(length) * sl
    ).contiguous()


def sample_logs(x: Tensor, off: Tensor, out: Tensor) -> None:
    """Write the log count, sum and sum of squared deviations over the positions at element
    offsets ``off`` (:func:`offsets`) into ``out[6:9]``."""
    _check_batch(x)
    _check_offsets(off, x, "log offsets")
    c, sc = x.shape[1], x.stride(1)
    _check_tensor(out, "out", torch.float64, 9 * c)
    lib = kernels()
    ptr, optr_, optr, k = x.data_ptr(), off.data_ptr(), out.data_ptr(), off.numel()
    _run(lib.st_sample_logs_par, c, k * c, (ptr, c, sc, optr_, k, 0, c, optr))


def cov_finish(
    a32: Tensor, a64: Tensor | None, delta: Tensor, count: float, scale: float
) -> Tensor:
    """``(a32 + a64 - count * delta delta^T) * scale`` as a new (C, C) float64 tensor, read
    from the upper triangle and mirrored below it (exactly symmetric); ``a32`` float32, ``a64``
    float64 or None, ``delta`` (C,) float64, all contiguous on the CPU. The diagonal is the
    caller's to set."""
    _require(a32.ndim == 2 and a32.shape[0] == a32.shape[1], "a32 must be (C, C)")
    c = a32.shape[0]
    _check_tensor(a32, "a32", torch.float32)
    _check_tensor(delta, "delta", torch.float64, c)
    if a64 is not None:
        _check_tensor(a64, "a64", torch.float64, c * c)
    out = torch.empty(c, c, dtype=torch.float64)
    threads = max(1, min(torch.get_num_threads(), c)) if _openmp and c * c >= (1 << 16) else 1
    kernels().st_cov_finish(
        threads,
        c,
        a32.data_ptr(),
        0 if a64 is None else a64.data_ptr(),
        delta.data_ptr(),
        -float(count) * scale,
        float(scale),
        out.data_ptr(),
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m smart_transfer.stats.native --build``: build the kernels into the cache now
    (scripts/install.sh runs it), so that the first profile is not slowed by the compiler and a
    failure is seen at install time; profiling still builds on first use when this was not run."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m smart_transfer.stats.native", description=main.__doc__
    )
    ap.add_argument("--build", action="store_true", help="build (or verify) the cached library")
    args = ap.parse_args(argv)
    if not args.build:
        ap.print_help()
        return 0
    try:
        path, _lib = build()
    except OSError as e:
        print(
            f"smart_transfer: the fused statistics could not be built ({e}); profiling on the "
            "CPU will use the slower eager statistics (same values)",
            file=sys.stderr,
        )
        return 1
    arch = " ".join(_arch_flags(_compiler() or "cc")) or "portable (no -march)"
    print(f"built {path} (target: {arch}; OpenMP: {'yes' if _openmp else 'no'})")
    return 0


if __name__ == "__main__":  # run as a script: use the package's copy of this module
    import importlib

    sys.exit(importlib.import_module("smart_transfer.stats.native").main())
