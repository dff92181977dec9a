"""smart-transfer: measure what a pretrained network can reuse, freeze exactly that, train the rest.

The public API is re-exported here; submodules are imported on first use so that
``import smart_transfer`` stays fast and optional extras (torchvision, timm) are only needed
by the functions that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # practitioner API
    "train": "api",
    "evaluate": "api",
    "predict": "api",
    "Predictions": "api",
    "advise": "api",
    "export": "exporting",
    "TrainResult": "api",
    "list_strategies": "api",
    "Advice": "strategies.advice",
    "make_report": "report",
    # errors
    "SmartTransferError": "errors",
    "ConfigError": "errors",
    "UnknownNameError": "errors",
    "UnknownLayerError": "errors",
    "DataError": "errors",
    "ProfileError": "errors",
    "IncompatibleError": "errors",
    "MissingDependencyError": "errors",
    "TrainingError": "errors",
    # profiling
    "profile": "stats",
    "profile_from_batchnorm": "stats",
    "ActivationProfile": "stats",
    "LayerProfile": "stats",
    # measures
    "compare": "measures",
    "list_measures": "measures",
    "get_measure": "measures",
    "register_measure": "measures",
    "Similarity": "measures",
    # freezing
    "FreezePlan": "freeze",
    "plan_freeze": "freeze",
    "apply_plan": "freeze",
    "PlanHandle": "freeze",
    "CustomRequireGrad": "freeze",
    # backbones
    "load_backbone": "models",
    "list_backbones": "models",
    "list_layers": "models",
    "replace_head": "models",
    "feature_extractor": "models",
    "summary": "models",
}

__all__ = sorted(_EXPORTS) + ["data", "training", "strategies", "__version__"]  # noqa: PLE0605


def __getattr__(name: str) -> Any:
    if name in ("data", "training", "strategies", "report"):
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'smart_transfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
