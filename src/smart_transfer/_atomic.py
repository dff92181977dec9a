"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Union

from ._paths import check_output

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


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    ``path`` is checked first with :func:`smart_transfer._paths.check_output` (not empty, not
    a folder, not below a file, in a writable folder), so that those mistakes raise one
    :class:`~smart_transfer.errors.ConfigError` naming the path. Missing parent folders are
    created. The sibling is created with mode 0o666 (then the umask), unlike mkstemp's 0600,
    so the result is an ordinary file. On any error, including KeyboardInterrupt and SIGTERM
    (turned into :class:`Terminated` while writing, unless the application handles SIGTERM
    itself), the temporary file is removed and ``path`` is left as it was.
    """
    path = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    with _sigterm_unwinds():
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, mode, encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_open`."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
