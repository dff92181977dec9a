"""Tiny images whose class is a bright band: learnable in a few steps."""

from __future__ import annotations

import torch


def make_images(n: int = 90, k: int = 3, size: int = 16, seed: int = 0):
    """Class c brightens band c of the image: learnable, but not trivially at chance."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, size, size, generator=g) * 120).to(torch.uint8)
    y = torch.arange(n) % k
    band = size // k
    for c in range(k):
        x[y == c, :, c * band : (c + 1) * band] += 120
    return x, y
