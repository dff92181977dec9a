"""A small, honest training loop: validation-based model selection, test read once."""

from .loop import FitResult, TrainingError, TrainingInterrupted, evaluate, fit, predict
from .schedule import cosine_with_warmup

__all__ = [
    "FitResult",
    "TrainingError",
    "TrainingInterrupted",
    "cosine_with_warmup",
    "evaluate",
    "fit",
    "predict",
]
