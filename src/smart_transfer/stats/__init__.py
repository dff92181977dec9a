"""Streaming per-channel activation statistics: profiling, BatchNorm source, save/load/merge."""

from __future__ import annotations

from .batchnorm import profile_from_batchnorm
from .config import StatsConfig
from .profile import SCHEMA_VERSION, ActivationProfile, LayerProfile
from .profiler import profile
from .running import RunningStats, hist_edges

__all__ = [
    "SCHEMA_VERSION",
    "ActivationProfile",
    "LayerProfile",
    "RunningStats",
    "StatsConfig",
    "hist_edges",
    "profile",
    "profile_from_batchnorm",
]
