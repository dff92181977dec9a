"""`FreezePlan`: which output channels of which parameters stay fixed during training.

A plan is plain data. For every parameter it covers it holds a boolean mask over the
parameter's first dimension (its output channels: weight rows, bias entries, BatchNorm affine
entries), True meaning "frozen". It remembers the full shape of each parameter so that it can
check it is applied to the model it was made for, groups parameters by the layer they belong
to, and carries metadata saying how it was made (measure, selection rule, D_pre source).

Plans are saved as JSON with a schema version and written atomically, so an interrupted save
leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from .._atomic import atomic_open
from .._paths import check_outputs
from ..errors import ConfigError, DataError, IncompatibleError

SCHEMA_VERSION = 1
FORMAT_NAME = "smart_transfer.FreezePlan"

PathLike = Union[str, "os.PathLike[str]"]


def _row_size(shape: Sequence[int]) -> int:
    """Number of scalars in one output channel of a parameter of this shape."""
    return int(math.prod(shape[1:]))


def _json_int(value: Any, what: str) -> int:
    """An integer read from JSON; fractional, boolean and text values are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} is {value!r}, not an integer")
    return value


def _default_layers(names: Sequence[str]) -> dict[str, list[str]]:
    """Group parameter names by the module that owns them (``a.b.weight`` -> ``a.b``)."""
    layers: dict[str, list[str]] = {}
    for name in names:
        layers.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return layers


def _shown(names: Sequence[str], limit: int = 5) -> str:
    head = ", ".join(names[:limit])
    return head + (f" ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass(eq=False)
class FreezePlan:
    """Per-parameter masks of frozen output channels, grouped by layer.

    Attributes:
        masks: parameter name (as in ``model.named_parameters()``) -> bool tensor of shape
            ``(param.shape[0],)``; True = that output channel is frozen.
        shapes: parameter name -> full shape of the parameter the plan was made for.
        layers: layer name -> names of the parameters it owns per channel (its weight and
            bias, and the affine parameters of the BatchNorm that follows it). Every masked
            parameter belongs to exactly one layer. Defaults to grouping by owning module.
        meta: how the plan was made: ``measure``, ``direction``, ``source`` (where the D_pre
            statistics came from), ``selection`` (scope, rule, value, layer restriction) and
            per-layer scores. JSON-serialisable values only.
    """

    masks: dict[str, Tensor]
    shapes: dict[str, tuple[int, ...]]
    layers: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.masks) != set(self.shapes):
            odd = sorted(set(self.masks) ^ set(self.shapes))
            raise ConfigError(
                f"FreezePlan masks and shapes name different parameters ({_shown(odd)}); "
                "give one shape per masked parameter"
            )
        masks: dict[str, Tensor] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for name, mask in self.masks.items():
            shape = tuple(int(s) for s in self.shapes[name])
            m = torch.as_tensor(mask).detach().to("cpu")
            if m.dtype != torch.bool:
                raise ConfigError(
                    f"FreezePlan mask of {name!r} has dtype {m.dtype}; masks must be bool tensors "
                    "(True = frozen channel)"
                )
            if len(shape) == 0 or m.shape != (shape[0],):
                raise ConfigError(
                    f"FreezePlan mask of {name!r} has shape {tuple(m.shape)} but the parameter "
                    f"has shape {shape}; a mask needs one entry per output channel (dim 0)"
                )
            masks[name] = m.clone()
            shapes[name] = shape
        self.masks, self.shapes = masks, shapes
        if not self.layers:
            self.layers = _default_layers(list(masks))
        self.layers = {layer: list(params) for layer, params in self.layers.items()}
        owner: dict[str, str] = {}
        for layer, params in self.layers.items():
            for p in params:
                if p not in masks:
                    raise ConfigError(
                        f"FreezePlan layer {layer!r} lists parameter {p!r} that has no mask; "
                        "list only masked parameters in layers"
                    )
                if p in owner:
                    raise ConfigError(
                        f"FreezePlan lists parameter {p!r} under layers {owner[p]!r} and "
                        f"{layer!r}; each parameter must belong to one layer"
                    )
                owner[p] = layer
        missing = [p for p in masks if p not in owner]
        if missing:
            raise ConfigError(
                f"FreezePlan parameters {_shown(missing)} belong to no layer; add them to layers"
            )
        self.meta = dict(self.meta)

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_masks(
        cls,
        model: nn.Module,
        masks: Mapping[str, Tensor],
        layers: Mapping[str, Sequence[str]] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> FreezePlan:
        """A hand-made plan: masks by parameter name, shapes read from ``model``."""
        params = dict(model.named_parameters())
        unknown = [n for n in masks if n not in params]
        if unknown:
            raise IncompatibleError(
                f"{type(model).__name__} has no parameter {_shown(unknown)}; use names from "
                "model.named_parameters()"
            )
        return cls(
            masks={n: torch.as_tensor(m) for n, m in masks.items()},
            shapes={n: tuple(params[n].shape) for n in masks},
            layers={k: list(v) for k, v in (layers or {}).items()},
            meta=dict(meta or {}),
        )

    def random_like(self, seed: int = 0) -> FreezePlan:
        """A control plan: the same number of frozen channels in every layer, at random places.

        Channels of a layer are frozen together across the layer's parameters (a channel is
        frozen in the copy when it was frozen in the layer's first parameter of the original),
        so the frozen parameter count of every layer is kept exactly whenever the original
        froze whole channels. This is the "random mask with the same frozen fraction" baseline
        that shows whether the similarity scores, not the fraction, made the difference.
        """
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ConfigError(f"seed must be an integer, got {seed!r}; pass e.g. seed=0")
        gen = torch.Generator().manual_seed(int(seed))
        masks: dict[str, Tensor] = {}
        for params in self.layers.values():
            first = self.masks[params[0]]
            perm = torch.randperm(first.numel(), generator=gen)
            new = torch.zeros_like(first)
            new[perm[: int(first.sum())]] = True
            for p in params:  # all parameters of a layer share its channel count
                masks[p] = new.clone()
        meta = dict(self.meta)
        meta["random_like"] = {"seed": int(seed), "of": self.meta.get("selection")}
        return FreezePlan(masks=masks, shapes=dict(self.shapes), layers=self.layers, meta=meta)

    # ------------------------------------------------------------------ queries

    def layer_mask(self, layer: str) -> Tensor:
        """Channels of ``layer`` frozen in every one of its parameters (bool, ``(C,)``)."""
        if layer not in self.layers:
            raise ConfigError(
                f"the plan has no layer {layer!r}; its layers are {_shown(list(self.layers))}"
            )
        out = self.masks[self.layers[layer][0]].clone()
        for p in self.layers[layer][1:]:
            out &= self.masks[p]
        return out

    def frozen_params(self, name: str) -> int:
        """Number of frozen scalars of parameter ``name``."""
        return int(self.masks[name].sum()) * _row_size(self.shapes[name])

    def summary(self) -> dict[str, Any]:
        """Per-layer and total counts of channels and parameters, frozen and in all.

        Returns ``{"layers": [row, ...], "channels", "frozen_channels", "num_params",
        "frozen_params", "trainable_params", "frozen_fraction"}`` where each row has ``layer``,
        ``params`` (names), ``channels``, ``frozen_channels`` (frozen in all its parameters),
        ``num_params``, ``frozen_params`` and ``frozen_fraction``. Counts cover the parameters
        the plan knows about; ``frozen_fraction`` is frozen / planned scalars.
        """
        rows: list[dict[str, Any]] = []
        for layer, params in self.layers.items():
            n = sum(int(math.prod(self.shapes[p])) for p in params)
            f = sum(self.frozen_params(p) for p in params)
            rows.append(
                {
                    "layer": layer,
                    "params": list(params),
                    "channels": int(self.masks[params[0]].numel()),
                    "frozen_channels": int(self.layer_mask(layer).sum()),
                    "num_params": n,
                    "frozen_params": f,
                    "frozen_fraction": f / n if n else 0.0,
                }
            )
        total = sum(r["num_params"] for r in rows)
        frozen = sum(r["frozen_params"] for r in rows)
        return {
            "layers": rows,
            "channels": sum(r["channels"] for r in rows),
            "frozen_channels": sum(r["frozen_channels"] for r in rows),
            "num_params": total,
            "frozen_params": frozen,
            "trainable_params": total - frozen,
            "frozen_fraction": frozen / total if total else 0.0,
        }

    @property
    def frozen_fraction(self) -> float:
        """Fraction of the planned parameter scalars that are frozen."""
        return float(self.summary()["frozen_fraction"])

    def summary_text(self) -> str:
        """The summary as a fixed-width text table (one row per layer, then the totals)."""
        s = self.summary()
        width = max([len("layer"), len("total")] + [len(r["layer"]) for r in s["layers"]])
        lines = [f"{'layer':<{width}}  {'channels':>15}  {'parameters':>21}  {'frozen':>7}"]
        for r in s["layers"] + [dict(s, layer="total")]:
            lines.append(
                f"{r['layer']:<{width}}  {r['frozen_channels']:>7}/{r['channels']:<7}  "
                f"{r['frozen_params']:>10}/{r['num_params']:<10}  "
                f"{100 * r['frozen_fraction']:>6.1f}%"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.summary()
        sel = self.meta.get("selection", {})
        rule = f", {sel.get('scope')} {sel.get('rule')}={sel.get('value')}" if sel else ""
        return (
            f"FreezePlan({len(self.layers)} layers, {s['frozen_channels']}/{s['channels']} "
            f"channels and {100 * s['frozen_fraction']:.1f}% of {s['num_params']} parameters "
            f"frozen{rule})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FreezePlan):
            return NotImplemented
        return (
            self.shapes == other.shapes
            and self.layers == other.layers
            and self.meta == other.meta
            and all(torch.equal(m, other.masks[n]) for n, m in self.masks.items())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable container

    # ------------------------------------------------------------------ model checks

    def validate(self, model: nn.Module) -> None:
        """Raise :class:`IncompatibleError` unless every planned parameter exists in ``model``
        with the planned shape."""
        params = dict(model.named_parameters())
        missing = [n for n in self.masks if n not in params]
        wrong = [
            f"{n} {tuple(params[n].shape)} instead of {self.shapes[n]}"
            for n in self.masks
            if n in params and tuple(params[n].shape) != self.shapes[n]
        ]
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"{type(model).__name__} has no parameter {_shown(missing, 3)}")
            if wrong:
                parts.append(f"mis-shaped parameters: {_shown(wrong, 3)}")
            raise IncompatibleError(
                "plan made for another model: "
                + "; ".join(parts)
                + "; make the plan from this model's profiles"
            )

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; masks are stored as sorted lists of frozen channel indices."""
        return {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "meta": self.meta,
            "layers": self.layers,
            "params": {
                name: {
                    "shape": list(self.shapes[name]),
                    "frozen": mask.nonzero().flatten().tolist(),
                }
                for name, mask in self.masks.items()
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FreezePlan:
        """Inverse of :meth:`to_dict`; raises :class:`IncompatibleError` for other schemas."""
        if d.get("format") != FORMAT_NAME:
            raise DataError(
                f"this is not a saved FreezePlan (format {d.get('format')!r}); load files "
                "written by FreezePlan.save"
            )
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise IncompatibleError(
                f"FreezePlan schema version {version!r} is not supported (this smart-transfer "
                f"reads version {SCHEMA_VERSION}); re-create the plan with this version"
            )
        try:
            shapes = {
                n: tuple(_json_int(s, f"shape of {n}") for s in p["shape"])
                for n, p in d["params"].items()
            }
            masks = {}
            for n, p in d["params"].items():
                if not isinstance(p["frozen"], list):
                    raise TypeError(f"frozen channels of {n} must be a list of indices")
                if not shapes[n]:
                    raise ValueError(f"shape of {n} is empty")
                ints = [_json_int(i, f"frozen channel index of {n}") for i in p["frozen"]]
                idx = torch.tensor(ints, dtype=torch.long)
                if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= shapes[n][0]):
                    raise ValueError(
                        "frozen channel index "
                        f"{int(idx.max()) if int(idx.min()) >= 0 else int(idx.min())} of {n} is "
                        f"outside 0..{shapes[n][0] - 1}"
                    )
                m = torch.zeros(shapes[n][0], dtype=torch.bool)
                m[idx] = True
                masks[n] = m
            layers = {k: list(v) for k, v in d["layers"].items()}
            meta = dict(d.get("meta", {}))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise DataError(
                f"the saved FreezePlan is corrupt ({type(exc).__name__}: {exc}); save it again"
            ) from None
        return cls(masks=masks, shapes=shapes, layers=layers, meta=meta)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=True)

    def save(self, path: PathLike) -> Path:
        """Write the plan as JSON, atomically (temporary file, then ``os.replace``).

        Missing parent folders are created; a path that cannot be written (a folder, below a
        file, a read-only folder) raises :class:`ConfigError` before anything is written.
        """
        path = check_outputs({"path": path})["path"]
        text = self.to_json()
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    @classmethod
    def load(cls, path: PathLike) -> FreezePlan:
        """Read a plan written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no FreezePlan file at {path}; check the path")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{path} is not valid FreezePlan JSON ({exc}); save the plan again"
            ) from None
        if not isinstance(d, dict):
            raise DataError(f"{path} does not hold a FreezePlan object; save the plan again")
        return cls.from_dict(d)
