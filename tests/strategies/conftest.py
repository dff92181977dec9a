"""Tiny data and a tiny network: every strategy trains in a second or two on a CPU."""

from __future__ import annotations

import pytest
import torch
from tiny_images import make_images

import smart_transfer as st
from smart_transfer.models.small import small_vgg


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
