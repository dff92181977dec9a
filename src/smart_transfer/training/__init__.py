"""A small, honest training loop: validation-based model selection, test read once."""

from .amp import cpu_bf16_supported
from .callbacks import Callback, Checkpoint, CtrlC, EarlyStopping, JsonLog, ProgressBar
from .loop import (
    FitResult,
    FitState,
    Trainer,
    TrainingError,
    TrainingInterrupted,
    channels_last_batch,
    evaluate,
    fit,
    predict,
)
from .schedule import cosine_with_warmup

__all__ = [
    "Callback",
    "Checkpoint",
    "CtrlC",
    "EarlyStopping",
    "FitResult",
    "FitState",
    "JsonLog",
    "ProgressBar",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "channels_last_batch",
    "cosine_with_warmup",
    "cpu_bf16_supported",
    "evaluate",
    "fit",
    "predict",
]
