"""What a run trained, validated and will be tested on: the split draw and ``manifest.json``.

A run's test images are drawn first (``test_fraction`` of every class, stratified, seeded),
then ``per_class`` images of the rest for training + validation (:func:`draw_splits`). The
manifest records the draw by **file**, never by position in a folder listing: the absolute
data root, and for every image its path relative to the root, its label (the class name),
its size in bytes and modification time, and its split. Size + mtime are the change check: a
file whose size or mtime differs from the manifest is taken as changed (cheap to check on
every ``evaluate`` / ``--resume``; a content hash would read every image). Arrays (``.npz``)
and Fashion-MNIST have no files per image: their manifest records positions, and for an
``.npz`` the file's own size + mtime.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_open
from ..errors import ConfigError, DataError

MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
CHANGE_CHECK = "size+mtime"


def draw_splits(
    targets: torch.Tensor,
    per_class: int | None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """``{"train", "val", "test"}`` positions: the test share of every class first, then
    ``per_class`` (None: all) of the remaining images, split into train and validation."""
    from .few_shot import few_shot

    if not (isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1):
        raise ConfigError(
            f"test_fraction must be in [0, 1), got {test_fraction!r} (--test-fraction)."
        )
    y = torch.as_tensor(targets, dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed) + 7919)  # its own stream: the test draw
    test, rest = [], []
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n = len(members)
        k = (
            0
            if test_fraction == 0
            else min(max(math.floor(n * test_fraction + 0.5), 1), max(n - 2, 0))
        )
        test.append(members[:k])
        rest.append(members[k:])
    test_idx = torch.cat(test).sort().values
    rest_idx = torch.cat(rest).sort().values
    try:
        tr, va = few_shot(
            y[rest_idx], per_class=per_class, val_fraction=val_fraction, seed=seed, classes=classes
        )
    except DataError as exc:
        held = (
            (
                f", counted after holding out {test_fraction:g} of each class for the test split "
                "(--test-fraction)"
            )
            if test_fraction
            else ""
        )
        raise DataError(f"{str(exc).rstrip('.')} (--per-class){held}.") from None
    return {"train": rest_idx[tr], "val": rest_idx[va], "test": test_idx}


def _stat(path: Path) -> tuple[int, float]:
    st = os.stat(path)
    return int(st.st_size), float(st.st_mtime)


@dataclass
class Manifest:
    """The data of a run (see the module docstring); ``save`` / ``load`` as ``manifest.json``."""

    root: str  # absolute folder, absolute .npz path, or "fashion-mnist"
    kind: str  # folder | csv | files | npz | fashion-mnist
    classes: list[str]
    on_error: str = "raise"
    images: list[dict[str, Any]] = field(
        default_factory=list
    )  # files: path, label, size, mtime, split
    indices: dict[str, list[int]] = field(default_factory=dict)  # arrays: split -> positions
    source: str | None = None  # the CSV file, for kind csv
    fingerprint: dict[str, Any] | None = None  # the .npz file's size and mtime
    skipped: dict[str, list[str]] = field(default_factory=dict)

    # ------------------------------------------------------------------ build

    @classmethod
    def record(
        cls, ds: Any, splits: dict[str, torch.Tensor], spec: Any = None, on_error: str = "raise"
    ) -> Manifest | None:
        """The manifest of ``splits`` of ``ds`` (None for data that has neither files nor a
        spec)."""
        classes = [str(c) for c in ds.classes]
        samples = getattr(ds, "samples", None)
        if samples is not None and hasattr(ds, "relative"):
            images = []
            for split in SPLITS:
                for i in splits.get(split, torch.empty(0, dtype=torch.int64)).tolist():
                    path, label = samples[i]
                    size, mtime = _stat(Path(path))
                    images.append(
                        {
                            "path": ds.relative(path),
                            "label": classes[label],
                            "size": size,
                            "mtime": mtime,
                            "split": split,
                        }
                    )
            source = getattr(ds, "source", None)
            kind = (
                "csv"
                if source is not None
                else ("folder" if hasattr(ds, "extensions") else "files")
            )
            skipped = {
                k: [ds.relative(p) for p in v] for k, v in getattr(ds, "skip_reasons", {}).items()
            }
            skipped.update(
                {"empty folder": list(getattr(ds, "empty_folders", []))}
                if getattr(ds, "empty_folders", None)
                else {}
            )
            return cls(
                root=str(Path(ds.root).resolve()),
                kind=kind,
                classes=classes,
                on_error=on_error,
                images=images,
                source=None if source is None else str(source),
                skipped=skipped,
            )
        if spec is None:
            return None
        from .spec import is_fashion

        indices = {s: splits[s].tolist() for s in SPLITS if s in splits}
        if is_fashion(str(spec)):
            return cls(
                root="fashion-mnist",
                kind="fashion-mnist",
                classes=classes,
                on_error=on_error,
                indices=indices,
            )
        path = Path(spec).expanduser().resolve()
        size, mtime = _stat(path)
        return cls(
            root=str(path),
            kind="npz",
            classes=classes,
            on_error=on_error,
            indices=indices,
            fingerprint={"size": size, "mtime": mtime},
        )

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": MANIFEST_VERSION,
            "root": self.root,
            "kind": self.kind,
            "on_error": self.on_error,
            "classes": self.classes,
            "change_check": f"{CHANGE_CHECK}: a file whose size in bytes or modification time "
            "differs from this record counts as changed",
            "counts": self.counts(),
        }
        if self.source is not None:
            d["source"] = self.source
        if self.fingerprint is not None:
            d["fingerprint"] = self.fingerprint
        if self.skipped:
            d["skipped"] = self.skipped
        if self.kind in ("npz", "fashion-mnist"):
            d["indices"] = self.indices
        else:
            d["images"] = self.images
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if int(d.get("schema_version", 0)) > MANIFEST_VERSION:
            raise DataError(
                f"manifest schema {d.get('schema_version')} is newer than this version "
                f"reads ({MANIFEST_VERSION}); upgrade smart-transfer."
            )
        return cls(
            root=d["root"],
            kind=d["kind"],
            classes=list(d["classes"]),
            on_error=d.get("on_error", "raise"),
            images=list(d.get("images", [])),
            indices=dict(d.get("indices", {})),
            source=d.get("source"),
            fingerprint=d.get("fingerprint"),
            skipped=dict(d.get("skipped", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"{path} does not exist; this run recorded no manifest of its data, so pass "
                "the test images with --test-data DIR (test_data= from Python)."
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    # ------------------------------------------------------------------ use

    def counts(self) -> dict[str, int]:
        if self.kind in ("npz", "fashion-mnist"):
            return {s: len(self.indices.get(s, [])) for s in SPLITS}
        return {s: sum(1 for e in self.images if e["split"] == s) for s in SPLITS}

    def path_of(self, entry: dict[str, Any]) -> Path:
        p = Path(entry["path"])
        return p if p.is_absolute() else Path(self.root) / p

    def changed(self, splits: Sequence[str] = SPLITS) -> list[str]:
        """The recorded files (of ``splits``) that are missing or whose size / mtime changed."""
        if self.kind == "fashion-mnist":
            return []
        if self.kind == "npz":
            p = Path(self.root)
            if not p.is_file():
                return [self.root]
            size, mtime = _stat(p)
            fp = self.fingerprint or {}
            return [] if (size, mtime) == (fp.get("size"), fp.get("mtime")) else [self.root]
        bad = []
        for e in self.images:
            if e["split"] not in splits:
                continue
            try:
                size, mtime = _stat(self.path_of(e))
            except OSError:
                bad.append(e["path"])
                continue
            if size != e["size"] or mtime != e["mtime"]:
                bad.append(e["path"])
        return bad

    def check_unchanged(self, doing: str, fix: str, splits: Sequence[str] = SPLITS) -> None:
        """Raise :class:`DataError` when recorded data changed (``doing``: what cannot be done)."""
        bad = self.changed(splits)
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            where = self.root if self.kind == "npz" else str(Path(self.root) / bad[0])
            raise DataError(
                f"the data changed since the run started ({where}{more} differs from "
                f"manifest.json: missing, or another size or modification time), so {doing}; {fix}."
            )

    def files(self, split: str) -> list[dict[str, Any]]:
        return [e for e in self.images if e["split"] == split]

    def used_paths(self, splits: Sequence[str] = ("train", "val")) -> set[Path]:
        """Absolute, resolved paths of the files of ``splits``."""
        return {self.path_of(e).resolve() for e in self.images if e["split"] in splits}

    def dataset(self, split: str | Sequence[str], **image_options: Any) -> tuple[Any, torch.Tensor]:
        """``(dataset, positions)`` of the images recorded for ``split`` (one name or several),
        opened by file (or by position for arrays); labels index ``self.classes``."""
        wanted = [split] if isinstance(split, str) else list(split)
        if self.kind in ("npz", "fashion-mnist"):
            from .spec import open_data

            ds = open_data(self.root, "train")
            idx = [i for s in wanted for i in self.indices.get(s, [])]
            return ds, torch.tensor(sorted(idx), dtype=torch.int64)
        from .image_folder import ImageFiles

        index = {c: i for i, c in enumerate(self.classes)}
        samples = [
            (self.path_of(e), index[e["label"]]) for e in self.images if e["split"] in wanted
        ]
        ds = ImageFiles(samples, self.classes, self.root, on_error=self.on_error, **image_options)
        ds.checked = True
        return ds, torch.arange(len(samples))


def summary(ds: Any, what: str, splits: dict[str, Any] | None = None, note: str = "") -> str:
    """The lines every data-reading command prints first: classes with their counts, the
    images left out and why, and the split drawn."""
    classes = [str(c) for c in getattr(ds, "classes", [])]
    t = getattr(ds, "targets", None)
    counts = (
        torch.bincount(torch.as_tensor(t, dtype=torch.int64), minlength=len(classes)).tolist()
        if t is not None and len(classes)
        else []
    )
    shown = ", ".join(f"{c} {n}" for c, n in zip(classes, counts))
    lines = [f"data: {what}: {len(ds)} images, {len(classes)} classes ({shown})"]
    reasons = dict(getattr(ds, "skip_reasons", {}) or {})
    parts = []
    for reason, files in reasons.items():
        if files:
            names = ", ".join(
                ds.relative(p) if hasattr(ds, "relative") else str(p) for p in files[:3]
            )
            parts.append(f"{len(files)} {reason} ({names}{' ...' if len(files) > 3 else ''})")
    empty = list(getattr(ds, "empty_folders", []) or [])
    if empty:
        parts.append(f"{len(empty)} empty class folder(s) ({', '.join(empty)})")
    ignored = list(getattr(ds, "ignored_files", []) or [])
    if ignored:
        parts.append(
            f"{len(ignored)} file(s) of other types ({', '.join(p.name for p in ignored[:3])})"
        )
    lines.append("left out: " + ("; ".join(parts) if parts else "nothing"))
    if splits is not None:
        lines.append(
            "split: "
            + ", ".join(f"{k} {v}" for k, v in splits.items())
            + (f" ({note})" if note else "")
        )
    return "\n".join(lines)
