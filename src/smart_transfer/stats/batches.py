"""Turn whatever a loader yields into the tensor the model takes (profiling needs only the
inputs). One implementation for the whole package lives in :mod:`smart_transfer.data.batches`;
this module keeps the names the statistics code imports."""

from __future__ import annotations

from ..data.batches import INPUT_KEYS, batch_input

__all__ = ["INPUT_KEYS", "batch_input"]
