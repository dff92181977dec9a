"""`apply_plan`: make the frozen coordinates of a :class:`FreezePlan` stay exactly where they are.

Masking gradients alone is not enough: weight decay and momentum / Adam state move a
coordinate whose gradient is zero, and adaptive optimizers rescale any "small" gradient back
to a full-sized step. So a plan is applied in three parts:

* A parameter whose every channel is frozen gets ``requires_grad_(False)`` and
  ``.grad = None``: autograd computes no gradient for it and optimizers skip it.
* A partially frozen parameter gets a hook that zeroes the frozen rows of its gradient as soon
  as it is accumulated, and, for every optimizer given to :func:`apply_plan` or
  :meth:`PlanHandle.attach`, a post-step hook that copies the frozen rows back from a copy
  saved when the plan was applied. The copy makes the frozen rows bit-identical after any
  number of steps of any optimizer whose update of a row depends only on that row
  (SGD, Adam, AdamW, RMSprop, Adagrad, ... with momentum and weight decay), including when the
  optimizer already holds state from earlier training. Without an attached optimizer the
  gradient masking still works, but weight decay and momentum can move the frozen rows;
  :meth:`PlanHandle.restore` puts them back on demand.
* BatchNorm running statistics (``bn_stats``): with ``"freeze"`` (default) the running mean
  and variance of every channel whose BatchNorm affine parameters are all frozen (for a
  BatchNorm without affine parameters: whose preceding layer's channel is frozen) are copied
  back after each forward pass in training mode, so they stay bit-identical; in training mode
  such channels are still normalised with the batch statistics, as PyTorch always does, and
  ``num_batches_tracked`` still counts. With ``"update"`` the running statistics of all
  channels update as usual.

:meth:`PlanHandle.remove` (or leaving a ``with`` block) removes every hook and restores the
``requires_grad`` flags, after which everything trains again. It does not change any value.

Notes: the restore also keeps frozen rows exact under optimizers that mix rows (LBFGS,
factored second moments), but there the trainable rows' updates see the frozen rows' zero
gradients. The model holds its applied plans (so they act, and are known, for as long as it
lives); ``state_dict()`` is unaffected, but call ``remove()`` before deep-copying or
pickling the whole module object.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError
from ..layers import NORM_TYPES, following_norms
from .plan import FreezePlan

if TYPE_CHECKING:
    from typing_extensions import Self

BN_POLICIES = ("freeze", "update")

# Handles whose plan is in place, to refuse a second plan on the same parameters. The set is
# weak; a model keeps its own handles alive (attribute _MODEL_ATTR, as torch.nn.utils.prune
# keeps its state on the module), so a plan is known as long as its model lives.
_ACTIVE: weakref.WeakSet[PlanHandle] = weakref.WeakSet()
_MODEL_ATTR = "_smart_transfer_plan_handles"


class _FrozenRows:
    """The frozen rows (dim-0 entries) of one tensor and a copy of their values.

    Restoring is one ``index_copy_`` (one ``copy_`` when every row is frozen); index tensors
    are built once and follow the tensor if the model is moved to another device or dtype.
    """

    __slots__ = ("idx", "saved", "whole")

    def __init__(self, tensor: Tensor, mask: Tensor) -> None:
        self.whole = bool(mask.all())
        self.idx = mask.nonzero().flatten().to(tensor.device)
        data = tensor.detach()
        self.saved = data.clone() if self.whole else data.index_select(0, self.idx)

    def _follow(self, tensor: Tensor) -> None:
        if self.saved.device != tensor.device or self.saved.dtype != tensor.dtype:
            self.idx = self.idx.to(tensor.device)
            self.saved = self.saved.to(tensor.device, tensor.dtype)

    def restore(self, tensor: Tensor) -> None:
        """Copy the saved values back into the frozen rows of ``tensor`` (under no_grad)."""
        self._follow(tensor)
        if self.whole:
            tensor.copy_(self.saved)
        else:
            tensor.index_copy_(0, self.idx, self.saved)

    def zero(self, grad: Tensor) -> None:
        """Zero the frozen rows of ``grad`` in place."""
        if self.idx.device != grad.device:
            self.idx = self.idx.to(grad.device)
        grad.index_fill_(0, self.idx, 0)


def _restore_stats(module: nn.Module, mean_rows: _FrozenRows, var_rows: _FrozenRows) -> None:
    """Copy saved running statistics back into a BatchNorm's frozen channels.

    The write goes through ``.data`` so that it does not bump the buffers' autograd version:
    a training-mode batch_norm saves the running statistics for its backward pass but does
    not use them there (it uses the batch statistics), and an in-place write right after the
    forward pass would otherwise fail that backward pass with a version-counter error.
    """
    with torch.no_grad():
        # _bn_channels only yields modules whose running statistics are tensors
        mean, var = cast(Tensor, module.running_mean), cast(Tensor, module.running_var)
        mean_rows.restore(mean.data)
        var_rows.restore(var.data)


class PlanHandle:
    """What :func:`apply_plan` did to a model, and the means to undo it.

    Attributes:
        plan: the applied plan.
        bn_stats: the BatchNorm running-statistics policy (``"freeze"`` or ``"update"``).
        whole: names of parameters frozen entirely (``requires_grad`` is False).
        partial: names of parameters with some frozen rows (gradient mask + restore).
        bn_frozen: names of BatchNorm modules whose frozen channels keep their running stats.
    """

    def __init__(self, model: nn.Module, plan: FreezePlan, bn_stats: str = "freeze") -> None:
        self.plan = plan
        self.bn_stats = bn_stats
        self.whole: list[str] = []
        self.partial: list[str] = []
        self.bn_frozen: list[str] = []
        self._flags: list[tuple[nn.Parameter, bool]] = []
        self._rows: list[tuple[nn.Parameter, _FrozenRows]] = []
        self._bn_rows: list[tuple[nn.Module, _FrozenRows, _FrozenRows]] = []
        self._hooks: list[RemovableHandle] = []
        self._optimizers: list[weakref.ref[Any]] = []
        self._param_ids: set[int] = set()
        self._model_ref = weakref.ref(model)
        self._warned = False  # the warning about training with no optimizer attached, once
        self.active = False

    # ------------------------------------------------------------------ setup

    def _install(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, mask in self.plan.masks.items():
            if not mask.any():
                continue
            p = params[name]
            self._param_ids.add(id(p))
            if bool(mask.all()):
                self._flags.append((p, p.requires_grad))
                p.requires_grad_(False)
                p.grad = None
                self.whole.append(name)
                continue
            rows = _FrozenRows(p, mask)
            self._rows.append((p, rows))
            self.partial.append(name)
            if p.grad is not None:  # gradient accumulated before the plan was applied
                with torch.no_grad():
                    rows.zero(p.grad)
            if p.requires_grad:
                self._hooks.append(
                    p.register_post_accumulate_grad_hook(functools.partial(self._grad_hook, rows))
                )
        if self.bn_stats == "freeze":
            for name, module, mask in self._bn_channels(model):
                mean_rows = _FrozenRows(module.running_mean, mask)  # type: ignore[arg-type]
                var_rows = _FrozenRows(module.running_var, mask)  # type: ignore[arg-type]
                self._bn_rows.append((module, mean_rows, var_rows))
                self._hooks.append(
                    module.register_forward_hook(
                        functools.partial(self._bn_hook, mean_rows, var_rows)
                    )
                )
                self.bn_frozen.append(name)
        self.active = True
        _ACTIVE.add(self)
        model.__dict__.setdefault(_MODEL_ATTR, []).append(self)

    def _bn_channels(self, model: nn.Module) -> Iterable[tuple[str, nn.Module, Tensor]]:
        """BatchNorm modules with running statistics and the mask of their frozen channels."""
        preceding: dict[str, str] | None = None
        for name, module in model.named_modules():
            if not isinstance(module, NORM_TYPES) or getattr(module, "running_mean", None) is None:
                continue
            affine = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            if affine:
                if not all(a in self.plan.masks for a in affine):
                    continue
                mask = self.plan.masks[affine[0]].clone()
                for a in affine[1:]:
                    mask &= self.plan.masks[a]
            else:
                if preceding is None:
                    preceding = {bn: layer for layer, bn in following_norms(model).items()}
                layer = preceding.get(name)
                if layer is None or layer not in self.plan.layers:
                    continue
                mask = self.plan.layer_mask(layer)
            if mask.shape == module.running_mean.shape and mask.any():  # type: ignore[union-attr]
                yield name, module, mask

    # ------------------------------------------------------------------ hooks

    # The hooks are bound methods on purpose: while any hook is registered it keeps its handle
    # alive, so the handle (and its remove()) is reachable for as long as the plan acts.

    def _grad_hook(self, rows: _FrozenRows, param: Tensor) -> None:
        if param.grad is not None:
            rows.zero(param.grad)
        if not self._optimizers and not self._warned:
            self._warned = True
            warnings.warn(
                f"gradients flow through {len(self.partial)} partially frozen tensor(s) of this "
                "freeze plan, but no optimizer is attached: weight decay and momentum will move "
                "the frozen rows. Pass optimizer= to apply_plan(model, plan, optimizer=opt), or "
                "call handle.attach(opt) before training",
                UserWarning,
                stacklevel=2,
            )

    def _bn_hook(
        self,
        mean_rows: _FrozenRows,
        var_rows: _FrozenRows,
        module: nn.Module,
        args: Any,
        output: Any,
    ) -> None:
        if module.training and module.running_mean is not None:
            _restore_stats(module, mean_rows, var_rows)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._restore_params()

    def _restore_params(self) -> None:
        with torch.no_grad():
            for p, rows in self._rows:
                rows.restore(p)

    # ------------------------------------------------------------------ public

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore the frozen rows after every ``optimizer.step()`` (exact freezing).

        Use it for an optimizer created after :func:`apply_plan`: until it is attached, its
        steps may move partially frozen rows through weight decay and momentum (gradients are
        masked all the same); from then on every one of its steps ends with the restore, which
        also undoes what earlier unattached steps did. Attach every optimizer that steps the
        model; attaching the same optimizer twice is harmless. Raises :class:`ConfigError`
        when the optimizer holds none of the model's parameters (an optimizer of another
        model, which would leave the planned one unrestored).
        """
        if not self.active:
            raise ConfigError("this plan handle was removed; apply the plan again before attaching")
        if not hasattr(optimizer, "register_step_post_hook"):
            raise ConfigError(
                f"optimizer={type(optimizer).__name__} is not a torch.optim.Optimizer (no "
                "register_step_post_hook); pass the optimizer that steps this model"
            )
        if any(ref() is optimizer for ref in self._optimizers):
            return
        groups = getattr(optimizer, "param_groups", None) or []
        held = {id(p) for g in groups for p in g.get("params", [])}
        model = self._model_ref()
        if model is not None and not held & {id(p) for p in model.parameters()}:
            raise ConfigError(
                f"optimizer={type(optimizer).__name__} holds none of the parameters of "
                f"{type(model).__name__}, so it cannot step the planned model; create it from "
                "this model's parameters (e.g. AdamW(model.parameters())) and pass that one"
            )
        self._optimizers.append(weakref.ref(optimizer))
        if self._rows:
            self._hooks.append(optimizer.register_step_post_hook(self._after_step))

    def restore(self) -> None:
        """Copy the saved values back into every frozen row (and frozen BatchNorm statistics).

        Needed only without an attached optimizer, when weight decay or momentum may have
        moved frozen rows; with one, this already happens after every step.
        """
        self._restore_params()
        for module, mean_rows, var_rows in self._bn_rows:
            _restore_stats(module, mean_rows, var_rows)

    def zero_grads(self) -> None:
        """Zero the frozen rows of the current gradients (the hooks already do this)."""
        with torch.no_grad():
            for p, rows in self._rows:
                if p.grad is not None:
                    rows.zero(p.grad)

    def remove(self) -> None:
        """Remove every hook and restore the ``requires_grad`` flags; values are left as they are.

        Calling it again does nothing.
        """
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self._flags.clear()
        self._optimizers.clear()
        self.active = False
        _ACTIVE.discard(self)
        model = self._model_ref()
        if model is not None:
            held = model.__dict__.get(_MODEL_ATTR, [])
            if self in held:
                held.remove(self)
            if not held:
                model.__dict__.pop(_MODEL_ATTR, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (
            f"PlanHandle({state}, {len(self.whole)} parameters frozen whole, "
            f"{len(self.partial)} partially, bn_stats={self.bn_stats!r} on "
            f"{len(self.bn_frozen)} BatchNorm modules, {len(self._optimizers)} optimizers attached)"
        )


def apply_plan(
    model: nn.Module,
    plan: FreezePlan,
    optimizer: torch.optim.Optimizer | None = None,
    bn_stats: str = "freeze",
) -> PlanHandle:
    """Freeze the plan's channels of ``model`` in place and return a handle to undo it.

    Args:
        model: the network the plan was made for (checked with :meth:`FreezePlan.validate`).
        plan: the channels to freeze.
        optimizer: the optimizer that will step ``model``; with it the frozen coordinates stay
            bit-identical after every step. It may also be attached later with
            :meth:`PlanHandle.attach`, and may already hold state from earlier training. When
            gradients first reach a partially frozen tensor and no optimizer is attached, a
            ``UserWarning`` says so (weight decay and momentum would move the frozen rows).
        bn_stats: ``"freeze"`` keeps the running statistics of frozen BatchNorm channels
            bit-identical, ``"update"`` lets them update (see the module docstring).

    Apply the plan after moving the model to its device; moving it later works but costs one
    copy of the saved rows on first use.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; pass the network "
            "the plan was made for"
        )
    if bn_stats not in BN_POLICIES:
        raise ConfigError(
            f"unknown bn_stats={bn_stats!r}; use bn_stats='freeze' (keep frozen channels' "
            "running statistics) or bn_stats='update'"
        )
    if not isinstance(plan, FreezePlan):
        raise ConfigError(
            f"plan must be a FreezePlan, got {type(plan).__name__}; make one with plan_freeze()"
        )
    plan.validate(model)
    params = dict(model.named_parameters())
    ids = {id(params[n]) for n, m in plan.masks.items() if bool(m.any())}
    for other in list(_ACTIVE):
        if other.active and other._param_ids & ids:
            raise ConfigError(
                "this model already has a freeze plan applied to the same parameters; call "
                "remove() on its PlanHandle before applying another plan"
            )
    handle = PlanHandle(model, plan, bn_stats)
    handle._install(model)
    if optimizer is not None:
        try:
            handle.attach(optimizer)
        except ConfigError:
            handle.remove()
            raise
    return handle
