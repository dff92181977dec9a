"""`CustomRequireGrad`: the original method's interface, built on profile / compare / plan / apply.

The original code was used like this::

    rg = CustomRequireGrad(network, loader_pre, loader_new)
    rg.run(stats_value=0.5)
    for x, y in loader_new:
        loss = criterion(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        rg.update_grads(network)
        optimizer.step()

Here the same calls profile both loaders in eval mode with streaming statistics, compare them
with a registered measure, freeze the channels whose similarity is at least ``stats_value``
(:func:`plan_freeze` with ``threshold=``), and apply the plan with :func:`apply_plan`. Pass
``optimizer=`` (or call :meth:`CustomRequireGrad.attach`) to keep the frozen channels
bit-identical under weight decay and momentum; without it they only get zero gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError
from .apply import PlanHandle, apply_plan
from .plan import FreezePlan
from .select import plan_freeze

if TYPE_CHECKING:
    from ..measures.similarity import Similarity
    from ..stats.profile import ActivationProfile

DEFAULT_MEASURE = "lognormal_kl"  # for D_pre given as data: post-ReLU log-normal fit
DEFAULT_BN_MEASURE = "gaussian_kl"  # for D_pre from BatchNorm statistics: mean/var only
# profile() arguments that choose layers; the BatchNorm source takes the same selection.
_SELECTION_KWARGS = ("layers", "types", "exclude")


class CustomRequireGrad:
    """Profile, compare, plan and freeze in one object, with the original method's calls.

    Args:
        network: the pretrained model to fine-tune.
        loader_pre: batches of the source data D_pre, or None to take the source statistics
            from the network's BatchNorm running statistics (no source images needed).
        loader_new: batches of the new data D_new.
        optimizer: the optimizer that will train ``network``; with it the frozen channels stay
            bit-identical after every step.
        measure: similarity measure name; default ``"lognormal_kl"``, or ``"gaussian_kl"``
            when ``loader_pre`` is None (BatchNorm statistics hold only mean and variance).
        bn_stats: BatchNorm running-statistics policy for frozen channels, see
            :func:`apply_plan`.
        **profile_kwargs: passed to :func:`smart_transfer.profile` for both loaders
            (e.g. ``layers=``, ``max_batches=``, ``progress=False``).

    After :meth:`run`: ``similarity``, ``plan`` and ``handle`` hold the comparison, the plan
    and the applied plan; ``profile_pre`` / ``profile_new`` the profiles. Profiling happens
    once; later :meth:`run` calls with another ``stats_value`` only re-plan.
    """

    def __init__(
        self,
        network: nn.Module,
        loader_pre: Iterable[Any] | None,
        loader_new: Iterable[Any],
        optimizer: torch.optim.Optimizer | None = None,
        measure: str | None = None,
        bn_stats: str = "freeze",
        **profile_kwargs: Any,
    ) -> None:
        if not isinstance(network, nn.Module):
            raise ConfigError(
                f"network must be a torch.nn.Module, got {type(network).__name__}; pass the model"
            )
        if loader_new is None:
            raise ConfigError(
                "loader_new is None; pass a DataLoader (or any iterable of batches) of the new data"
            )
        self.network = network
        self.loader_pre = loader_pre
        self.loader_new = loader_new
        self.optimizer = optimizer
        self.measure = measure or (
            DEFAULT_MEASURE if loader_pre is not None else DEFAULT_BN_MEASURE
        )
        self.bn_stats = bn_stats
        self.profile_kwargs = profile_kwargs
        self.profile_pre: ActivationProfile | None = None
        self.profile_new: ActivationProfile | None = None
        self.similarity: Similarity | None = None
        self.plan: FreezePlan | None = None
        self.handle: PlanHandle | None = None

    def compare(self) -> Similarity:
        """Profile D_pre (or read BatchNorm statistics) and D_new, and compare them (cached)."""
        if self.similarity is not None:
            return self.similarity
        # Imported here: profiling and measures are heavier modules that planning does not need.
        from ..measures import compare
        from ..stats import profile, profile_from_batchnorm

        if self.loader_pre is None:
            selection = {k: v for k, v in self.profile_kwargs.items() if k in _SELECTION_KWARGS}
            self.profile_pre = profile_from_batchnorm(self.network, **selection)
        else:
            self.profile_pre = profile(self.network, self.loader_pre, **self.profile_kwargs)
        self.profile_new = profile(self.network, self.loader_new, **self.profile_kwargs)
        self.similarity = compare(self.profile_pre, self.profile_new, measure=self.measure)
        return self.similarity

    def run(self, stats_value: float = 0.5) -> FreezePlan:
        """Freeze every channel whose similarity is ``>= stats_value`` and return the plan.

        A plan applied by an earlier call is removed first.
        """
        plan = plan_freeze(self.compare(), threshold=stats_value)
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self.plan = plan
        self.handle = apply_plan(
            self.network, plan, optimizer=self.optimizer, bn_stats=self.bn_stats
        )
        return plan

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep the frozen channels bit-identical under ``optimizer`` (made after :meth:`run`)."""
        self.optimizer = optimizer
        if self.handle is not None:
            self.handle.attach(optimizer)

    def update_grads(self, network: nn.Module | None = None) -> None:
        """Zero the gradients of the frozen channels (call between ``backward`` and ``step``).

        Entirely frozen tensors have no gradient and are left alone. The applied plan already
        zeroes these gradients when they are computed, so this call is only a safeguard for
        gradients written by other means.
        """
        if self.handle is None or self.plan is None:
            raise ConfigError(
                "update_grads() was called before run(); call rg.run(stats_value=...) first"
            )
        if network is None or network is self.network:
            self.handle.zero_grads()
            return
        self.plan.validate(network)
        params = dict(network.named_parameters())
        with torch.no_grad():
            for name, mask in self.plan.masks.items():
                p = params[name]
                if p.grad is not None and bool(mask.any()):
                    p.grad.index_fill_(0, mask.nonzero().flatten().to(p.grad.device), 0)

    def remove(self) -> None:
        """Undo the applied plan (hooks and ``requires_grad`` flags)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
