"""``summary(model, plan=None)``: parameters per layer, how many train, how many are frozen.

A layer is a Conv2d/Linear together with the BatchNorm that follows it (as everywhere in
smart-transfer, see :mod:`smart_transfer.layers`).  Parameters outside every layer (a
LayerNorm, a ViT's position embedding...) are gathered in one ``(other)`` row, so the rows
add up to the model's total.

Frozen counts come from ``plan.masks`` (``{param_name: bool (shape[0],)}``, True = frozen
output channel) when a plan is given: a parameter whose mask is all True is frozen whole, a
partly True mask freezes ``mask.sum() * numel / shape[0]`` entries per channel.  Without a
plan, the parameters with ``requires_grad=False`` are the frozen ones (all whole).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, IncompatibleError
from ..layers import following_norms, num_out_channels, select_layers

OTHER = "(other)"
COLUMNS = (
    # key, header, width
    ("layer", "layer", 0),
    ("type", "type", 12),
    ("channels", "ch", 7),
    ("params", "params", 12),
    ("trainable", "trainable", 12),
    ("frozen_whole", "frozen whole", 14),
    ("frozen_channelwise", "frozen per-ch", 15),
    ("frozen_channels", "frozen ch", 11),
    ("output_shape", "output", 18),
    ("macs", "mult-adds", 15),
)


@dataclass
class Summary:
    """Rows of :func:`summary` (one dict per layer, then ``(other)``) and their total.

    Row keys: ``layer``, ``type``, ``norm`` (following BatchNorm or None), ``channels``,
    ``params`` (all parameter entries), ``trainable`` (entries with ``requires_grad``),
    ``frozen`` (= ``frozen_whole + frozen_channelwise``), ``frozen_whole`` (entries of
    wholly frozen tensors), ``frozen_channelwise`` (frozen entries of partly frozen
    tensors), ``frozen_channels`` (output channels of the layer's weight that are frozen).
    """

    rows: list[dict[str, Any]]
    total: dict[str, Any] = field(default_factory=dict)
    source: str = "requires_grad"  # where the frozen counts come from: "plan" or "requires_grad"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [dict(r) for r in self.rows],
            "total": dict(self.total),
            "source": self.source,
        }

    def __str__(self) -> str:
        width = max([len(r["layer"]) for r in self.rows] + [len("total"), 5]) + 2
        lines = []
        head = ""
        for key, title, w in COLUMNS:
            if key in ("output_shape", "macs") and self.rows and key not in self.rows[0]:
                continue
            head += f"{title:<{width}}" if key == "layer" else f"{title:>{w}}"
        lines.append(head)
        lines.append("-" * len(head))
        for row in [*self.rows, self.total]:
            line = ""
            for key, _, w in COLUMNS:
                value = row.get(key, "")
                if key in ("output_shape", "macs") and key not in row and key not in self.rows[0]:
                    continue
                if key == "output_shape" and isinstance(value, tuple):
                    value = "x".join(map(str, value))
                if key == "layer":
                    line += f"{value:<{width}}"
                elif isinstance(value, int):
                    line += f"{value:>{w},}"
                else:
                    line += f"{'' if value is None else str(value):>{w}}"
            lines.append(line)
        t = self.total
        if t.get("params"):
            lines.append(
                f"trainable {t['trainable'] / t['params']:.1%}, frozen "
                f"{t['frozen'] / t['params']:.1%} of {t['params']:,} parameters (frozen counts "
                f"from {self.source})"
            )
        return "\n".join(lines)

    __repr__ = __str__


def _plan_masks(model: nn.Module, plan: Any) -> dict[str, torch.Tensor]:
    masks = plan if isinstance(plan, Mapping) else getattr(plan, "masks", None)
    if not isinstance(masks, Mapping):
        raise IncompatibleError(
            f"plan must be a FreezePlan (an object with .masks) or a dict of masks, "
            f"got {type(plan).__name__}"
        )
    params = dict(model.named_parameters())
    unknown = [name for name in masks if name not in params]
    if unknown:
        raise IncompatibleError(
            f"the plan has masks for {len(unknown)} parameters {type(model).__name__} lacks "
            f"({', '.join(unknown[:3])}); it was made for another model"
        )
    out = {}
    for name, mask in masks.items():
        m = torch.as_tensor(mask, dtype=torch.bool).reshape(-1).cpu()
        if m.numel() != params[name].shape[0]:
            raise IncompatibleError(
                f"the plan's mask for {name} has {m.numel()} entries but the parameter has "
                f"{params[name].shape[0]} output channels; the plan was made for another model"
            )
        out[name] = m
    return out


def _shapes_and_macs(
    model: nn.Module, layers: list[str], input_size: Any
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Output shape and multiply-adds of each layer for one image of ``input_size`` (C, H, W).

    One eval-mode forward under ``torch.utils.flop_counter.FlopCounterMode`` (which counts a
    multiply-add as 2 FLOPs); the model's train/eval flags are restored afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ..stats.hooks import eval_no_grad, forward_hooks

    first = next((p for p in model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(1, *(int(v) for v in input_size), device=device, dtype=dtype)
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(int(v) for v in t.shape)

        return hook

    root = type(model).__name__
    hooks = [(modules[n], hook_for(n)) for n in layers]
    with eval_no_grad(model), forward_hooks(hooks), FlopCounterMode(display=False) as counter:
        model(x)
    counts = counter.get_flop_counts()
    macs = {n: int(sum(counts.get(f"{root}.{n}", {}).values())) // 2 for n in layers}
    return shapes, macs


def _count(
    names: list[str], params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor] | None
) -> dict[str, int]:
    """Parameter counts of ``names``: all, trainable, frozen whole and frozen per channel."""
    total = trainable = whole = channelwise = 0
    for pname in names:
        p = params[pname]
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        if masks is None:
            whole += 0 if p.requires_grad else n
        elif pname in masks:
            k = int(masks[pname].sum())
            if k == masks[pname].numel():
                whole += n
            elif k:
                channelwise += k * (n // p.shape[0])
    return {
        "params": total,
        "trainable": trainable,
        "frozen": whole + channelwise,
        "frozen_whole": whole,
        "frozen_channelwise": channelwise,
    }


def _frozen_channels(
    weight: str,
    params: dict[str, nn.Parameter],
    masks: dict[str, torch.Tensor] | None,
    channels: int,
) -> int:
    """Output channels of a layer's ``weight`` frozen by the plan (or by requires_grad)."""
    if weight not in params:
        return 0
    if masks is None:
        return 0 if params[weight].requires_grad else channels
    return int(masks[weight].sum()) if weight in masks else 0


def _maybe_shapes_and_macs(
    model: nn.Module, layers: list[str], input_size: Any | None
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]] | None:
    """:func:`_shapes_and_macs` for ``summary``'s ``input_size`` ("auto": the model's own size,
    and no columns when the model does not take it; None: no forward pass)."""
    auto = isinstance(input_size, str) and input_size == "auto"
    if auto:
        cfg = getattr(model, "pretrained_cfg", None)
        input_size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
    if input_size is None or not layers:
        return None
    try:
        return _shapes_and_macs(model, layers, input_size)
    except Exception as e:
        if not auto:
            raise ConfigError(
                f"a forward pass of one {tuple(input_size)} image through "
                f"{type(model).__name__} failed ({type(e).__name__}: {e}); pass the "
                "input_size=(C, H, W) the model takes, or input_size=None"
            ) from e
        # the configured size does not fit the model as built: no shape / MAC columns
        return None


def summary(model: nn.Module, plan: Any | None = None, input_size: Any | None = "auto") -> Summary:
    """Per layer: parameters, trainable parameters, frozen parameters (whole / per channel).

    ``plan``: a ``FreezePlan`` (anything with ``.masks``) or a ``{param: mask}`` dict; the
    frozen columns then say what the plan freezes.  ``print(summary(model))`` shows a
    table; ``.rows`` / ``.total`` hold the numbers.

    ``input_size``: ``(C, H, W)`` of one image; each layer row then also has ``output_shape``
    (for a batch of one) and ``macs`` (multiply-adds, from ``torch.utils.flop_counter``).
    ``"auto"`` (default) takes ``model.pretrained_cfg["input_size"]`` when there is one (and
    leaves the columns out if the model does not take that size); ``None`` skips the forward
    pass.
    """
    masks = None if plan is None else _plan_masks(model, plan)
    modules = dict(model.named_modules())
    norms = following_norms(model)
    try:
        layers = select_layers(model)
    except ConfigError:  # a model without conv/linear layers has only the (other) row
        layers = []
    claimed: set[str] = set()
    rows: list[dict[str, Any]] = []
    params = dict(model.named_parameters())
    for layer in layers:
        owners = [layer] + ([norms[layer]] if layer in norms else [])
        names = [
            f"{owner}.{pname}"
            for owner in owners
            for pname, _ in modules[owner].named_parameters(recurse=False)
        ]
        names = [n for n in names if n in params and n not in claimed]
        claimed.update(names)
        channels = num_out_channels(modules[layer])
        frozen_ch = _frozen_channels(f"{layer}.weight", params, masks, channels)
        rows.append(
            {
                "layer": layer,
                "type": type(modules[layer]).__name__,
                "norm": norms.get(layer),
                "channels": channels,
                **_count(names, params, masks),
                "frozen_channels": frozen_ch,
            }
        )
    shapes_macs = _maybe_shapes_and_macs(model, layers, input_size)
    if shapes_macs is not None:
        shapes, macs = shapes_macs
        for row in rows:
            row["output_shape"] = shapes.get(row["layer"])
            row["macs"] = macs.get(row["layer"], 0)
    rest = [n for n in params if n not in claimed]
    if rest:
        rows.append(
            {
                "layer": OTHER,
                "type": "",
                "norm": None,
                "channels": None,
                **_count(rest, params, masks),
                "frozen_channels": None,
            }
        )
    keys = ("params", "trainable", "frozen", "frozen_whole", "frozen_channelwise")
    total: dict[str, Any] = {
        "layer": "total",
        "type": "",
        "norm": None,
        "channels": None,
        "frozen_channels": None,
    }
    total.update({k: sum(r[k] for r in rows) for k in keys})
    if rows and "macs" in rows[0]:
        total["macs"] = sum(r.get("macs") or 0 for r in rows)
    total["frozen_channels"] = sum(r["frozen_channels"] or 0 for r in rows)
    return Summary(rows=rows, total=total, source="requires_grad" if masks is None else "plan")
