"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Union, cast

from ._paths import check_output
from .errors import ConfigError, StorageError

PathLike = Union[str, "os.PathLike[str]"]


class Terminated(SystemExit):
    """Raised in place of the default SIGTERM action while a file is being written.

    The default action kills the process at once, which would leave the temporary file
    behind; as an exception it unwinds through the writer's cleanup and then exits with
    status 143 (128 + SIGTERM), as the default action would have.
    """

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration, if nobody else handles it.

    Only the main thread may set signal handlers, and a handler the application installed
    is left alone (it decides what SIGTERM means).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):  # pragma: no cover - platforms without SIGTERM
        yield
        return
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# errno values that mean "no room for this file": disk full, file-size limit, quota.
_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def storage_error(exc: BaseException, path: PathLike) -> StorageError | None:
    """A :class:`StorageError` naming ``path`` for an error that says the file could not be
    written for lack of room or permission of the file system, or None for any other error."""
    if isinstance(exc, StorageError):
        return None
    name = repr(str(path))
    if isinstance(exc, OSError):
        if exc.errno == errno.EFBIG:
            return StorageError(
                f"file-size limit reached while writing {name} (ulimit -f); raise the limit or "
                "write somewhere else"
            )
        if exc.errno in _FULL:
            return StorageError(
                f"disk full while writing {name}; free some space or write somewhere else"
            )
        if exc.errno in (
            errno.EROFS,
            errno.EACCES,
            errno.EPERM,
            errno.ENOENT,
            errno.ENOTDIR,
            errno.EINVAL,
            errno.EIO,
        ):
            return StorageError(
                f"cannot write {name} ({os.strerror(exc.errno or 0) or type(exc).__name__}); "
                "pass a path in a writable folder"
            )
        return None
    text = str(exc)
    if isinstance(exc, RuntimeError) and (
        "PytorchStreamWriter" in text or "file write failed" in text
    ):
        return StorageError(
            f"disk full or file-size limit reached while writing {name}; free some space or "
            "write somewhere else"
        )
    return None


@contextmanager
def disk_errors(path: PathLike) -> Iterator[None]:
    """Turn a failed write (disk full, ``ulimit -f``, a read-only file system) inside the block
    into one :class:`StorageError` that names ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        err = storage_error(exc, path)
        if err is None:
            raise
        raise err from None


def _follow(path: Path) -> Path:
    """The file to write for ``path``: a symlink owned by this user is followed (its target
    is replaced, the link stays a link); a symlink owned by someone else is refused, since it
    could point a write at any file of this user (a link planted in a shared folder)."""
    if not path.is_symlink():
        return path
    getuid = getattr(os, "getuid", None)
    if getuid is not None and os.lstat(path).st_uid != getuid():
        raise ConfigError(
            f"{str(path)!r} is a symlink owned by another user; writing through it could replace "
            "any of your files, so pass the path of the file itself"
        )
    return check_output(path.resolve())


class _Recording:
    """A file object that remembers the exception its ``write`` raised.

    ``torch.save`` calls ``write`` from C++ and turns whatever it raises (a Ctrl-C, SIGTERM, a
    full disk) into ``RuntimeError: [enforce fail at inline_container.cc] ...``; the writer
    re-raises the remembered exception instead, so an interrupt still exits 130 / 143 and a
    full disk still names the file."""

    def __init__(self, f: IO[Any]) -> None:
        self._f = f
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except BaseException as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    ``path`` is checked first with :func:`smart_transfer._paths.check_output` (not empty, not
    a folder, not below a file, in a writable folder), so that those mistakes raise one
    :class:`~smart_transfer.errors.ConfigError` naming the path. Missing parent folders are
    created. The sibling is created with mode 0o666 (then the umask), unlike mkstemp's 0600,
    so the result is an ordinary file. On any error, including KeyboardInterrupt and SIGTERM
    (turned into :class:`Terminated` while writing, unless the application handles SIGTERM
    itself), the temporary file is removed and ``path`` is left as it was. A full disk, a
    file-size limit or a file system that refuses the file raises one
    :class:`~smart_transfer.errors.StorageError` naming ``path``.

    Symlinks: when ``path`` is a symlink owned by the current user, the link is followed, so
    its target is replaced and the link keeps pointing at it (as ``open(path, "w")`` would);
    a symlink owned by another user is refused with a :class:`ConfigError`, and a dangling
    one too (see :func:`~smart_transfer._paths.check_output`).
    """
    named = check_output(path)
    target = _follow(named)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    with disk_errors(named), _sigterm_unwinds():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, mode, encoding=encoding) as f:
                rec = _Recording(f)
                try:
                    yield cast(IO[Any], rec)
                except BaseException as exc:
                    if rec.error is not None and rec.error is not exc:  # wrapped by a C++ writer
                        raise rec.error from None
                    raise
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_open`."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
