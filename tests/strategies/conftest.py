"""Tiny data and a tiny network: every strategy trains in a second or two on a CPU."""

from __future__ import annotations

import pytest
import torch

import smart_transfer as st
from smart_transfer.models.small import small_vgg


def make_images(n: int = 90, k: int = 3, size: int = 16, seed: int = 0):
    """Class c brightens band c of the image: learnable, but not trivially at chance."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, size, size, generator=g) * 120).to(torch.uint8)
    y = torch.arange(n) % k
    band = size // k
    for c in range(k):
        x[y == c, :, c * band : (c + 1) * band] += 120
    return x, y


@pytest.fixture(scope="session")
def tiny_data():
    x, y = make_images()
    return st.data.arrays(x, y)


@pytest.fixture(scope="session")
def tiny_test():
    x, y = make_images(60, seed=1)
    return st.data.arrays(x, y)


@pytest.fixture()
def tiny_net():
    torch.manual_seed(0)
    net = small_vgg(widths=(8, 16))
    net.pretrained_cfg["input_size"] = (3, 16, 16)
    # non-trivial BatchNorm statistics, as a pretrained network has
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net
