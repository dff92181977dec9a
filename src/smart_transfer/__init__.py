"""smart-transfer: measure what a pretrained network can reuse, freeze exactly that, train the rest.

The public API is re-exported here; submodules are imported on first use so that
``import smart_transfer`` stays fast and optional extras (torchvision, timm) are only needed
by the functions that use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ imports
    from . import data as data, report as report, strategies as strategies, training as training
    from .api import (
        Predictions as Predictions,
        TrainResult as TrainResult,
        advise as advise,
        evaluate as evaluate,
        list_strategies as list_strategies,
        predict as predict,
        train as train,
    )
    from .comparison import StrategyTable as StrategyTable, compare_strategies as compare_strategies
    from .errors import (
        ConfigError as ConfigError,
        DataError as DataError,
        IncompatibleError as IncompatibleError,
        MissingDependencyError as MissingDependencyError,
        ProfileError as ProfileError,
        SmartTransferError as SmartTransferError,
        TrainingError as TrainingError,
        UnknownLayerError as UnknownLayerError,
        UnknownNameError as UnknownNameError,
    )
    from .exporting import export as export
    from .freeze import (
        CustomRequireGrad as CustomRequireGrad,
        FreezePlan as FreezePlan,
        PlanHandle as PlanHandle,
        apply_plan as apply_plan,
        plan_freeze as plan_freeze,
    )
    from .measures import (
        Similarity as Similarity,
        compare as compare,
        get_measure as get_measure,
        list_measures as list_measures,
        register_measure as register_measure,
    )
    from .models import (
        feature_extractor as feature_extractor,
        list_backbones as list_backbones,
        list_layers as list_layers,
        load_backbone as load_backbone,
        replace_head as replace_head,
        summary as summary,
    )
    from .report import make_report as make_report
    from .spec import DataSpec as DataSpec, Recipe as Recipe, RunSpec as RunSpec
    from .stats import (
        ActivationProfile as ActivationProfile,
        LayerProfile as LayerProfile,
        StatsConfig as StatsConfig,
        profile as profile,
        profile_from_batchnorm as profile_from_batchnorm,
    )
    from .strategies.advice import Advice as Advice

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
    "compare_strategies": "comparison",
    "StrategyTable": "comparison",
    # the run spec (config.json)
    "RunSpec": "spec",
    "DataSpec": "spec",
    "Recipe": "spec",
    "StatsConfig": "stats",
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


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt st.name is reported

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
