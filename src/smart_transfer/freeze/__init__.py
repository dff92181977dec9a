"""Freezing: choose channels to keep fixed (:func:`plan_freeze`), keep them exactly fixed
(:func:`apply_plan`), and the original method's interface (:class:`CustomRequireGrad`)."""

from __future__ import annotations

from .apply import BN_POLICIES, PlanHandle, apply_plan
from .compat import CustomRequireGrad
from .plan import SCHEMA_VERSION, FreezePlan
from .select import SCOPES, plan_freeze

__all__ = [
    "BN_POLICIES",
    "SCHEMA_VERSION",
    "SCOPES",
    "CustomRequireGrad",
    "FreezePlan",
    "PlanHandle",
    "apply_plan",
    "plan_freeze",
]
