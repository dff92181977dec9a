"""The result of profiling: per-layer, per-channel activation statistics.

Plain data (float64 tensors on the CPU), independent of the model that produced it, so it can
be saved once (``save``) and compared later. Accumulation lives in ``stats/running.py``;
this module only holds, merges and (de)serialises finished statistics.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, cast

import torch
from torch import Tensor

from .._atomic import atomic_open
from ..errors import ConfigError, DataError, IncompatibleError

SCHEMA_VERSION = 1
# Written into every file so that load() can tell a profile from any other torch.save file.
FILE_FORMAT = "smart-transfer/activation-profile"

# Settings in ``meta`` that must agree before two profiles may be merged.
MERGE_SETTINGS = ("point", "hist_bins", "hist_scale", "hist_max", "covariance", "stats")

PathLike = Union[str, "os.PathLike[str]"]

# Optional per-channel statistics, in the order they are listed in docs/architecture.md.
OPTIONAL_STATS = (
    "min",
    "max",
    "zero_frac",
    "log_count",
    "log_mean",
    "log_var",
    "hist",
    "hist_edges",
    "hist_count",
    "cov",
    "cov_count",
)


@dataclass
class LayerProfile:
    """Statistics of one layer's output channels (see docs/architecture.md for each field)."""

    name: str
    kind: str
    num_channels: int
    params: dict[str, tuple[int, ...]]
    count: Tensor  # (C,) values seen per channel; NaN when unknown (BatchNorm-derived)
    mean: Tensor  # (C,)
    var: Tensor  # (C,) population variance
    min: Tensor | None = None
    max: Tensor | None = None
    zero_frac: Tensor | None = None
    log_count: Tensor | None = None
    log_mean: Tensor | None = None
    log_var: Tensor | None = None
    hist: Tensor | None = None  # (C, B) counts
    hist_edges: Tensor | None = None  # (B+1,)
    hist_count: Tensor | None = None  # (C,)
    cov: Tensor | None = None  # (C, C)
    cov_count: Tensor | None = None  # (C,) positions behind the off-diagonal entries of cov

    def available(self) -> set[str]:
        """Names of the statistics this layer carries (always count/mean/var)."""
        have = {"count", "mean", "var"}
        have.update(k for k in OPTIONAL_STATS if getattr(self, k) is not None)
        return have

    @property
    def std(self) -> Tensor:
        return self.var.clamp_min(0).sqrt()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "num_channels": self.num_channels,
            "params": {k: list(v) for k, v in self.params.items()},
        }
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                d[f.name] = v.detach().cpu().to(torch.float64)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerProfile:
        kwargs = dict(d)
        kwargs["params"] = {k: tuple(int(s) for s in v) for k, v in d["params"].items()}
        kwargs["num_channels"] = int(d["num_channels"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})


@dataclass
class ActivationProfile:
    """Statistics of every profiled layer of one model on one data source.

    ``source`` is ``"data"`` (images were forwarded) or ``"batchnorm"`` (taken from
    BatchNorm running statistics, no images needed).
    """

    layers: dict[str, LayerProfile]
    source: str = "data"
    num_samples: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerProfile:
        return self.layers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __len__(self) -> int:
        return len(self.layers)

    def names(self) -> list[str]:
        return list(self.layers)

    def available(self) -> set[str]:
        """Statistics present in every layer."""
        sets = [lp.available() for lp in self.layers.values()]
        return set.intersection(*sets) if sets else set()

    # -- merging ---------------------------------------------------------------------------

    def merge(self, other: ActivationProfile) -> ActivationProfile:
        """The profile of the union of both data sets (a new object; neither input changes).

        Exact for counts, min/max, zero fractions and histogram counts, and equal up to float64
        rounding for the moments and covariance (Chan's parallel formulas).
        """
        from .running import from_layer_profile, merge_stats, to_layer_profile

        _check_mergeable(self, other)
        layers: dict[str, LayerProfile] = {}
        for name, a in self.layers.items():
            b = other.layers[name]
            _check_layer_pair(name, a, b)
            merged = merge_stats(from_layer_profile(a), from_layer_profile(b))
            layers[name] = to_layer_profile(merged, name, a.kind, a.params, a.hist_edges)
        return ActivationProfile(
            layers=layers,
            source="data",
            num_samples=self.num_samples + other.num_samples,
            meta=_merged_meta(self.meta, other.meta),
        )

    # -- plain data ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, numbers, strings and CPU float64 tensors only."""
        return {
            "format": FILE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "num_samples": int(self.num_samples),
            "meta": _plain(self.meta),
            "shapes": {
                name: {
                    "num_channels": lp.num_channels,
                    "hist_bins": None if lp.hist is None else int(lp.hist.shape[1]),
                }
                for name, lp in self.layers.items()
            },
            "layers": [lp.to_dict() for lp in self.layers.values()],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the data") -> ActivationProfile:
        """Inverse of :meth:`to_dict`; checks the schema version and every tensor's shape."""
        if not isinstance(d, dict) or d.get("format") != FILE_FORMAT:
            raise DataError(
                f"{where} is not a smart-transfer activation profile; create one with "
                "st.profile(model, loader).save(path)"
            )
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise IncompatibleError(
                f"{where} is a profile of schema version {version!r} but this smart-transfer reads "
                f"version {SCHEMA_VERSION}; re-create the profile with this version of st.profile"
            )
        try:
            layers = [LayerProfile.from_dict(ld) for ld in d["layers"]]
            shapes = d["shapes"]
            prof = cls(
                layers={lp.name: lp for lp in layers},
                source=str(d["source"]),
                num_samples=int(d["num_samples"]),
                meta=dict(d.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{where} is a damaged profile ({type(e).__name__}: {e}); re-create it"
            ) from e
        for lp in prof.layers.values():
            _check_shapes(lp, shapes.get(lp.name), where)
        return prof

    # -- files -----------------------------------------------------------------------------

    def save(self, path: PathLike) -> Path:
        """Write the profile to one file, atomically (an interrupted save leaves the old file)."""
        path = _as_path(path, "save")
        with atomic_open(path, "wb") as f:
            torch.save(self.to_dict(), f)
        return path

    @classmethod
    def load(cls, path: PathLike) -> ActivationProfile:
        """Read a profile written by :meth:`save` (tensors only, no code is unpickled)."""
        path = _as_path(path, "load")
        if not path.is_file():
            raise DataError(
                f"no profile file at {str(path)!r}; check the path or create it with "
                "prof.save(path)"
            )
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable file: pickle, zip and torch errors alike
            raise DataError(
                f"{str(path)!r} is not a smart-transfer profile file ({type(e).__name__}); "
                "create one with st.profile(model, loader).save(path)"
            ) from e
        return cls.from_dict(d, where=repr(str(path)))


def _as_path(path: Any, verb: str) -> Path:
    if isinstance(path, (str, os.PathLike)) and not str(path):
        raise ConfigError(
            f"{verb} needs a file path, got an empty one; e.g. prof.{verb}('profile.pt')"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            f"{verb} needs a file path (a str or pathlib.Path), got {type(path).__name__}; "
            f"e.g. prof.{verb}('profile.pt')"
        )
    return Path(path)


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` reduced to JSON types, so that loading never needs to unpickle objects."""
    return cast(dict[str, Any], json.loads(json.dumps(meta, default=str)))


def _check_shapes(lp: LayerProfile, shape: Any, where: str) -> None:
    c = lp.num_channels
    bins = None if not isinstance(shape, dict) else shape.get("hist_bins")
    if not isinstance(shape, dict) or shape.get("num_channels") != c:
        raise DataError(
            f"{where}: layer {lp.name!r} does not match the recorded shapes; re-create the profile"
        )
    expected: dict[str, tuple[int, ...]] = {"count": (c,), "mean": (c,), "var": (c,)}
    expected.update(
        {
            k: (c,)
            for k in ("min", "max", "zero_frac", "log_count", "log_mean", "log_var", "cov_count")
        }
    )
    expected["cov"] = (c, c)
    if bins is not None:
        expected.update(hist=(c, bins), hist_edges=(bins + 1,), hist_count=(c,))
    for key, want in expected.items():
        v = getattr(lp, key)
        if v is None:
            if key in ("count", "mean", "var"):
                raise DataError(f"{where}: layer {lp.name!r} lacks {key!r}; re-create the profile")
            continue
        if not isinstance(v, Tensor) or tuple(v.shape) != want:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise DataError(
                f"{where}: layer {lp.name!r} has {key} of shape {got}, expected {want}; re-create "
                "the profile"
            )
    if bins is None and lp.hist is not None:
        raise DataError(
            f"{where}: layer {lp.name!r} has a histogram the shapes do not record; re-create it"
        )


def _check_mergeable(first: ActivationProfile, other: Any) -> None:
    """Both are data profiles of the same layers, made with the same settings."""
    if not isinstance(other, ActivationProfile):
        raise IncompatibleError(
            f"can only merge an ActivationProfile with another one, got {type(other).__name__}"
        )
    for p in (first, other):
        if p.source != "data":
            raise IncompatibleError(
                f"cannot merge a profile with source={p.source!r}: BatchNorm statistics have "
                "no sample count; merge only profiles made by st.profile from data"
            )
    if list(first.layers) != list(other.layers):
        only_a = sorted(set(first.layers) - set(other.layers))
        only_b = sorted(set(other.layers) - set(first.layers))
        raise IncompatibleError(
            f"cannot merge profiles of different layers (only in the first: {only_a[:5]}, only "
            f"in the second: {only_b[:5]}); profile both with the same layers= selection"
        )
    for key in MERGE_SETTINGS:
        if key in first.meta and key in other.meta and first.meta[key] != other.meta[key]:
            raise IncompatibleError(
                f"cannot merge profiles made with {key}={first.meta[key]!r} and "
                f"{key}={other.meta[key]!r}; profile both with the same settings"
            )


def _check_layer_pair(name: str, a: LayerProfile, b: LayerProfile) -> None:
    """One layer of both profiles: the same kind, channels and histogram bins."""
    if a.num_channels != b.num_channels or a.kind != b.kind:
        raise IncompatibleError(
            f"layer {name!r} is a {a.kind} with {a.num_channels} channels in one profile "
            f"and a {b.kind} with {b.num_channels} in the other; merge profiles of the "
            "same model"
        )
    ea, eb = a.hist_edges, b.hist_edges
    if (ea is None) != (eb is None) or (
        ea is not None and eb is not None and (ea.shape != eb.shape or not torch.equal(ea, eb))
    ):
        raise IncompatibleError(
            f"layer {name!r} has different histogram bins in the two profiles; "
            "profile both with the same hist_bins / hist_scale / hist_max"
        )


def _merged_meta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    meta = dict(a)
    meta["num_batches"] = int(a.get("num_batches", 0)) + int(b.get("num_batches", 0))
    for key in ("subsampled", "cov_subsampled"):
        if key in a or key in b:
            meta[key] = bool(a.get(key)) or bool(b.get(key))
    if a.get("engine") != b.get("engine"):
        meta["engine"] = "mixed"  # the halves came from the native and the eager statistics
    return meta
