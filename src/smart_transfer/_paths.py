"""Checks on output paths, run before any work so that a run that cannot save fails at once.

Every command that writes files, and every ``save`` method, calls :func:`check_outputs` with
the paths it will write and the paths it reads. It refuses, with one :class:`ConfigError`
naming the option and the fix, any output that would destroy an input or another output, and
any output that could not be written (a folder, a path below a file, a read-only folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

from .errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]


def _resolved(path: Path) -> Path:
    """The absolute path with every symlink followed (also for a path that does not exist yet)."""
    try:
        return path.expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: compare the absolute spelling instead
        return Path(os.path.abspath(path.expanduser()))


def _same_file(a: Path, b: Path) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:  # hard links and bind mounts: the same inode under another name
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _existing_ancestor(folder: Path) -> Path:
    """The nearest ancestor of ``folder`` (itself included) that exists on disk."""
    cur = folder
    while not cur.exists() and not cur.is_symlink():
        parent = cur.parent
        if parent == cur:
            break
        cur = parent
    return cur


def check_output(path: PathLike | None, option: str = "path") -> Path:
    """Check that ``path`` can be written as a file; return it as a :class:`Path`.

    Raises :class:`ConfigError` (naming ``option``) when the path is empty, names an existing
    folder or another non-regular file (``/dev/null``, a pipe), is a dangling symlink, lies
    below an existing file, or its folder (or the nearest existing ancestor of a folder still
    to be created) is not writable. Nothing is created on disk.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ConfigError(f"{option} is empty; pass the path of the file to write.")
    try:
        p = Path(os.fspath(path)).expanduser()
    except TypeError:
        raise ConfigError(
            f"{option} must be a path (str or os.PathLike), got {type(path).__name__}."
        ) from None
    if p.name in ("", ".", ".."):
        raise ConfigError(f"{option}={str(path)!r} names a folder, not a file; add a file name.")
    if p.is_dir():
        raise ConfigError(
            f"{option}={str(p)!r} is an existing folder; pass a file path inside it, "
            f"e.g. {str(p / 'out')!r}."
        )
    if p.exists() and not p.is_file():
        raise ConfigError(
            f"{option}={str(p)!r} is not a regular file (a device, pipe or socket), which a "
            "save would replace; pass the path of a file."
        )
    if p.is_symlink() and not p.exists():
        target = os.readlink(p)
        raise ConfigError(
            f"{option}={str(p)!r} is a dangling symlink (to {target!r}); remove it or pass "
            "another path."
        )
    folder = p.parent
    anchor = _existing_ancestor(folder)
    if not anchor.is_dir():
        raise ConfigError(
            f"{option}={str(p)!r} lies below {str(anchor)!r}, which is a file, not a folder; "
            "pass a path in a folder."
        )
    if not os.access(anchor, os.W_OK | os.X_OK):
        what = "folder" if anchor == folder else "folder to create it in"
        raise ConfigError(
            f"{option}={str(p)!r} cannot be written: the {what} {str(anchor)!r} is read-only "
            "for this user; pass a path in a writable folder."
        )
    return p


def check_outputs(
    outputs: Mapping[str, PathLike | None],
    inputs: Mapping[str, PathLike | None] | None = None,
) -> dict[str, Path]:
    """Check, before any work, that every output can be written without destroying anything.

    Args:
        outputs: option name (as the user typed it, e.g. ``"--out"``) -> the file path that
            will be written. ``None`` entries (an option not given) are skipped.
        inputs: option name -> a path that will be read (a profile, a weights file, a data
            folder...). ``None`` entries, and names that are not paths on disk (a backbone
            or dataset name), are harmless: an input is compared only by its resolved path.

    Every output path is checked with :func:`check_output` (not empty, not an existing
    folder, not below a file, its folder exists or can be created and is writable), and all
    paths are compared after ``resolve()`` (symlinks followed) and by inode: an output equal
    to an input, or to another output, raises :class:`ConfigError` naming both options and
    the fix. An output *inside* an input folder is allowed (a report written next to its
    data); an output that *is* an input folder is not. Nothing is created on disk.

    Returns the output paths as :class:`Path` objects, ``None`` entries left out.
    """
    checked: dict[str, Path] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        p = check_output(path, option)
        for other, q in checked.items():
            if _same_file(p, q):
                raise ConfigError(
                    f"{option} and {other} both name {str(p)!r}; one would overwrite the other, "
                    f"so pass a different path to one of them."
                )
        checked[option] = p
    for in_option, in_path in (inputs or {}).items():
        if in_path is None:
            continue
        try:
            q = Path(os.fspath(in_path)).expanduser()
        except TypeError:
            continue
        for option, p in checked.items():
            if _same_file(p, q):
                raise ConfigError(
                    f"{option}={str(p)!r} is the input {in_option}; writing it would destroy the "
                    f"input, so pass another path to {option}."
                )
    return checked


def check_output_folders(
    folders: Mapping[str, PathLike | None],
    inputs: Mapping[str, PathLike | None] | None = None,
    *,
    replaced: bool = False,
) -> dict[str, Path]:
    """Check folders that a command writes into (a run folder), before any work.

    Args:
        folders: option name -> folder that files will be written into (created if missing).
        inputs: option name -> a path that will be read, as for :func:`check_outputs`.
        replaced: the folders are deleted and re-created (their old content is lost); then an
            input *inside* one of them is refused too, not only an input equal to one.

    Raises :class:`ConfigError` (naming the option and the fix) when a folder is an existing
    file, lies below a file, cannot be created or written, or is (``replaced``: holds) an input.
    Returns the folders as :class:`Path` objects, ``None`` entries left out.
    """
    checked: dict[str, Path] = {}
    for option, folder in folders.items():
        if folder is None:
            continue
        f = Path(os.fspath(folder)).expanduser()
        if f.exists() and not f.is_dir():
            raise ConfigError(
                f"{option}={str(f)!r} is a file, not a folder; pass the folder to write into."
            )
        check_output(f / "probe", option)  # below a file / read-only, as for one of its files
        for in_option, in_path in (inputs or {}).items():
            if in_path is None:
                continue
            q = _resolved(Path(os.fspath(in_path)))
            here = _resolved(f)
            if q == here or (replaced and here in q.parents):
                what = "is" if q == here else "holds"
                raise ConfigError(
                    f"{option}={str(f)!r} {what} the input {in_option}, and this command "
                    f"{'replaces' if replaced else 'writes into'} it; pass another folder to "
                    f"{option}."
                )
        checked[option] = f
    return checked


def check_replaced_folders(
    folders: Mapping[str, PathLike | None],
    inputs: Mapping[str, PathLike | None] | None = None,
) -> dict[str, Path]:
    """:func:`check_output_folders` for folders that are deleted and re-created."""
    return check_output_folders(folders, inputs, replaced=True)
