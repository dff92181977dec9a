"""Learning-rate schedule: linear warm-up, then cosine decay to zero, stepped per batch."""

from __future__ import annotations

import math

import torch


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that multiplies each group's lr by a factor rising linearly over
    ``warmup_steps`` (from 1/(warmup_steps+1)) and then falling as a half cosine to 0 at
    ``total_steps``. Call ``scheduler.step()`` after every optimizer step."""
    total = max(int(total_steps), 1)
    warm = min(max(int(warmup_steps), 0), total - 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
