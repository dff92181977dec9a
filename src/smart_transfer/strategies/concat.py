"""A probe on several layers' pooled features, concatenated, and its scriptable twin.

:class:`ConcatProbe` (and :class:`~smart_transfer.strategies.probe.ProbeModel`, its one-layer
case) capture layer outputs with forward hooks: that works for any network, but hooks,
closures and the exception that stops the forward pass early are beyond TorchScript and ONNX.
:func:`graph_probe` builds the same function as plain tensor code: the network is traced with
``torch.fx``, its graph cut right after the last layer the probe reads (the early exit, as
dead code elimination), and the pooling, concatenation and linear head follow as ordinary
modules. The twin shares the probe's parameters, so it can be scripted, traced or exported to
ONNX and gives the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.heads import PENULTIMATE, _channels_of, find_head, pool_features


class ConcatProbe(nn.Module):
    """Images -> pooled features of ``layers`` side by side -> ``head``."""

    def __init__(
        self, model: nn.Module, layers: Sequence[str], linear: nn.Linear, num_classes: int
    ):
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self.head = nn.Linear(linear.in_features, num_classes)
        self.head.load_state_dict(linear.state_dict())
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            self.pretrained_cfg = {**cfg, "num_classes": num_classes, "classifier": "head"}

    def forward(self, x: Tensor) -> Tensor:
        modules = dict(self.model.named_modules())
        _, head = find_head(self.model)
        got: dict[str, Tensor] = {}
        handles = []
        for name in self.layers:
            if name == PENULTIMATE:
                handles.append(
                    head.register_forward_pre_hook(
                        lambda _m, a, n=name: got.__setitem__(n, pool_features(a[0]))
                    )
                )
            else:
                handles.append(
                    modules[name].register_forward_hook(
                        lambda m, _a, o, n=name: got.__setitem__(n, pool_features(o, m))
                    )
                )
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        return cast(
            Tensor,
            self.head(torch.cat([got[n].to(self.head.weight.dtype) for n in self.layers], 1)),
        )

    def scriptable(self) -> GraphProbe:
        """The same function without hooks (see :func:`graph_probe`); parameters are shared."""
        return graph_probe(self.model, self.layers, self.head)


# --------------------------------------------------------------------------- scriptable twin


class Pool(nn.Module):
    """:func:`~smart_transfer.models.heads.pool_features` for one layer, in TorchScript.

    What depends on the layer's type is decided here, once: ``channels`` is the channel count
    of a Linear / LayerNorm (outputs whose last dimension equals it are channels-last), -1
    otherwise; ``tokens_last``: a 3-dim output is ``(B, T, C)`` (not a Conv1d-style ``(B, C, L)``).
    """

    def __init__(self, module: nn.Module | None) -> None:
        super().__init__()
        linear_like = isinstance(module, (nn.Linear, nn.LayerNorm))
        channels = _channels_of(module) if module is not None and linear_like else None
        self.channels = -1 if channels is None else int(channels)
        self.linear_like = linear_like
        self.tokens_last = not isinstance(
            module, (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d)
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return x
        last = False
        if self.linear_like:
            last = x.shape[-1] == self.channels
        elif x.dim() == 3:
            last = self.tokens_last
        if last:
            return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)
        return x.flatten(2).mean(2)


class GraphProbe(nn.Module):
    """Images -> ``body`` (the network cut after the probe's last layer, returning every probed
    layer's raw output) -> pooled, side by side -> ``head``. Scriptable and traceable."""

    def __init__(self, body: nn.Module, pools: Sequence[Pool], head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.pools = nn.ModuleList(pools)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        outs: list[Tensor] = self.body(x)
        feats: list[Tensor] = []
        for i, pool in enumerate(self.pools):
            feats.append(pool(outs[i]).to(self.head.weight.dtype))
        out: Tensor = self.head(torch.cat(feats, 1))  # TorchScript: no cast()
        return out


class _LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer with the probed layers, and every convolution, kept as single calls:
    a probed layer must be one node to cut at, and a convolution may branch on its input's
    shape (TensorFlow's "same" padding), which symbolic tracing cannot follow."""

    def __init__(self, keep: set[str]) -> None:
        super().__init__()
        self.keep = keep

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.keep or isinstance(m, nn.modules.conv._ConvNd):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def graph_probe(model: nn.Module, layers: Sequence[str], head: nn.Linear) -> GraphProbe:
    """The probe ``head(cat(pool(layer outputs)))`` of ``model`` as hook-free tensor code.

    ``model`` is traced in evaluation mode (dropout off, BatchNorm on its running statistics),
    so the result is for inference. Raises :class:`ConfigError` when ``model`` cannot be traced
    symbolically (data-dependent control flow outside a convolution) or a layer is not called.
    """
    head_name, _ = find_head(model)
    targets = [head_name if name == PENULTIMATE else name for name in layers]
    was_training = model.training
    model.eval()
    tracer = _LeafTracer(set(targets))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001  (fx raises TraceError, TypeError, RuntimeError...)
        raise ConfigError(
            f"{type(model).__name__} cannot be traced with torch.fx ({str(exc).splitlines()[0]}); "
            "export it with torch.jit.trace instead"
        ) from None
    finally:
        model.train(was_training)
    first: dict[str, torch.fx.Node] = {}
    for node in graph.nodes:
        if isinstance(
            node.type, str
        ):  # a postponed annotation ("Tensor") that TorchScript cannot resolve
            node.type = Tensor if node.type in ("Tensor", "torch.Tensor") else None
        if node.op == "call_module" and node.target in targets:
            first.setdefault(str(node.target), node)
    outs = []
    for name, target in zip(layers, targets):
        if target not in first:
            raise ConfigError(
                f"layer {name!r} of {type(model).__name__} is not called in its forward pass; "
                "choose one of smart_transfer.list_layers(model)"
            )
        node = first[target]
        outs.append(node.args[0] if name == PENULTIMATE else node)
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (list(outs),)
    output.type = list[Tensor]
    body = torch.fx.GraphModule(model, graph)
    body.graph.eliminate_dead_code()  # everything after the last probed layer: the early exit
    body.delete_all_unused_submodules()
    body.recompile()
    modules = dict(model.named_modules())
    pools = [Pool(None if name == PENULTIMATE else modules[name]) for name in layers]
    return GraphProbe(body, pools, head).train(False)
