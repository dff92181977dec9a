"""Checks on output paths, run before any work so that a run that cannot save fails at once.

Every command that writes files, and every ``save`` method, calls :func:`check_outputs` with
the paths it will write and the paths it reads. It refuses, with one :class:`ConfigError`
naming the option and the fix, any output that would destroy an input or another output, any
output inside an input folder (a data folder: the file would become a training image of the
next run), any output onto a file of a run folder that the command does not own itself
(:data:`RUN_FILES`), and any output that could not be written (a folder, a path below a file,
a read-only folder).

A run folder is claimed with :func:`claim_run_folder` (an exclusive create of
:data:`RUN_MARKER`), so two commands writing the same folder cannot both go ahead.
"""

from __future__ import annotations

import contextvars
import json
import os
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]

# The marker that claims a folder for one run (created exclusively, never overwritten).
RUN_MARKER = ".smart-transfer-run"
# Every file and folder that train, evaluate and report write into a run folder (and fit into
# a checkpoint folder). No output of another command may land on one of them.
RUN_FILES = frozenset(
    {
        RUN_MARKER,
        "config.json",
        "result.json",
        "model.safetensors",
        "manifest.json",
        "log.jsonl",
        "plan.json",
        "advice.json",
        "metrics.json",
        "profile_pre.pt",
        "profile_new.pt",
        "samples.safetensors",
        "test_samples.safetensors",
        "comparison.json",
        "report.html",
        "figures",
        "checkpoints",
        "state.pt",
        "best.safetensors",
        "done.json",
    }
)
# Files only a run folder holds together: config.json plus one of these marks an old run
# folder written before the marker existed.
_RUN_EVIDENCE = ("result.json", "model.safetensors", "checkpoints", "samples.safetensors")


def _resolved(path: Path) -> Path:
    """The absolute path with every symlink followed (also for a path that does not exist yet)."""
    try:
        return path.expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: compare the absolute spelling instead
        return Path(os.path.abspath(path.expanduser()))


def _input_paths(inputs: Mapping[str, Any] | None) -> list[tuple[str, Any, Path]]:
    """``(option, value, path)`` of every input given as a path (None and non-paths skipped)."""
    out = []
    for option, value in (inputs or {}).items():
        if value is None:
            continue
        try:
            out.append((option, value, Path(os.fspath(value)).expanduser()))
        except TypeError:
            continue
    return out


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
    own: Collection[str] = (),
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
    the fix. An output inside an input folder is refused (see :func:`check_not_in_inputs`),
    and so is an output onto a file a run folder holds (see :func:`check_run_files`; ``own``:
    the run files this command writes itself). Nothing is created on disk.

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
    for in_option, _in_path, q in _input_paths(inputs):
        for option, p in checked.items():
            if _same_file(p, q):
                raise ConfigError(
                    f"{option}={str(p)!r} is the input {in_option}; writing it would destroy the "
                    f"input, so pass another path to {option}."
                )
    check_not_in_inputs(checked, inputs)
    check_run_files(checked, own)
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
            if q.is_dir() and q in here.parents:
                raise ConfigError(
                    f"{option}={str(f)!r} lies inside the input folder {str(in_path)!r} "
                    f"({in_option}); its files would be read as data by the next run, so pass a "
                    f"folder outside it to {option}."
                )
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


# --------------------------------------------------------------------------- run folders


def is_run_folder(folder: PathLike) -> bool:
    """Whether ``folder`` holds a run: its marker, or config.json beside another run file."""
    f = Path(os.fspath(folder))
    if (f / RUN_MARKER).exists():
        return True
    return (f / "config.json").is_file() and any((f / n).exists() for n in _RUN_EVIDENCE)


def enclosing_run(path: PathLike) -> Path | None:
    """The nearest run folder that holds ``path`` (the path itself excluded), or None."""
    p = _resolved(Path(os.fspath(path)))
    for parent in p.parents:
        if is_run_folder(parent):
            return parent
    return None


# Run folders this process is writing as their run (train, TrainResult.save): their own files
# may be written there. A context variable, so threads and tasks do not see each other's.
_WRITING: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("_WRITING", default=())


@contextmanager
def writing_run(folder: PathLike) -> Iterator[None]:
    """Within the block, the run files of ``folder`` may be written (by the run itself)."""
    token = _WRITING.set((*_WRITING.get(), _resolved(Path(os.fspath(folder)))))
    try:
        yield
    finally:
        _WRITING.reset(token)


def check_run_files(outputs: Mapping[str, Path], own: Collection[str] = ()) -> None:
    """Refuse an output onto a file or folder that a run folder holds (:data:`RUN_FILES`),
    unless its name, relative to the run folder, is in ``own`` (the files this command itself
    writes there, e.g. ``report.html``), or the run folder is being written by its own run
    (:func:`writing_run`). Also refused: anything below ``checkpoints/``."""
    for option, p in outputs.items():
        run = enclosing_run(p)
        if run is None or run in _WRITING.get():
            continue
        rel = _resolved(p).relative_to(run)
        top = rel.parts[0]
        if top in RUN_FILES and rel.as_posix() not in own and top not in own:
            raise ConfigError(
                f"{option}={str(p)!r} is {rel.as_posix()!r} of the run folder {str(run)!r}, which "
                f"the run itself writes; writing it would destroy the run, so pass a path "
                f"outside the run folder or another file name to {option}."
            )


def check_not_in_inputs(
    outputs: Mapping[str, Path], inputs: Mapping[str, PathLike | None] | None
) -> None:
    """Refuse an output inside an input that is a folder (a data folder, a source folder):
    the file would be read back as data (a class folder, an image) by the next run."""
    for in_option, _in_path, q in _input_paths(inputs):
        if not q.is_dir():
            continue
        here = _resolved(q)
        for option, p in outputs.items():
            if here in _resolved(p).parents:
                raise ConfigError(
                    f"{option}={str(p)!r} lies inside the input folder {str(q)!r} ({in_option}); "
                    f"its files would be read as data by the next run, so pass a path outside "
                    f"{str(q)!r} to {option}."
                )


def claim_run_folder(folder: PathLike, option: str = "out") -> Path:
    """Claim ``folder`` for a new run: create it and, exclusively, its :data:`RUN_MARKER`.

    The exclusive create (``O_CREAT | O_EXCL``) succeeds for exactly one process, so of two
    runs started together with the same folder one goes ahead and the other is refused with a
    :class:`ConfigError` before it writes anything; a folder that already holds a run (its
    marker, or the files of an older run) is refused the same way.
    """
    f = Path(os.fspath(folder)).expanduser()
    if is_run_folder(f):
        raise ConfigError(
            f"{option}={str(f)!r} already holds a run; resume it (--resume {f!s}, "
            "resume=True) or pass another folder"
        )
    f.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(f / RUN_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(
            f"{option}={str(f)!r} was just claimed by another run started at the same time; "
            "pass another folder"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"pid": os.getpid(), "started": time.time()}, fh)
    return f
