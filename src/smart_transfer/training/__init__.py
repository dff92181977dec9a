"""A small, honest training loop: validation-based model selection, test read once."""

from .loop import FitResult, evaluate, fit

__all__ = ["FitResult", "evaluate", "fit"]
