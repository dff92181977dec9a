"""The batch loader: coverage, order, seeding, transforms after collation, any torch dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset
from torchvision.datasets import FakeData
from torchvision.transforms import PILToTensor

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError

CFG = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


@pytest.fixture
def ds():
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (50, 12, 12), dtype=np.uint8)
    images[:, 0, 0] = np.arange(50)  # pixel 0 tells which item an image is
    return st.data.arrays(images, np.arange(50) % 5)


def _ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].tolist()


def test_in_order_batches_cover_everything_once(ds):
    batches = list(st.data.loader(ds, batch_size=16))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert len(st.data.loader(ds, batch_size=16)) == 4
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (50, 1, 12, 12) and x.dtype == torch.uint8
    assert _ids(x) == list(range(50))
    assert torch.equal(y, ds.targets)


def test_indices_and_drop_last(ds):
    idx = torch.tensor([7, 3, 30, 12, 44])
    x, y = next(iter(st.data.loader(ds, idx, batch_size=8)))
    assert _ids(x) == idx.tolist()
    assert torch.equal(y, ds.targets[idx])
    assert len(list(st.data.loader(ds, idx, batch_size=2, drop_last=True))) == 2


def test_shuffle_is_seeded_and_changes_between_passes(ds):
    a = st.data.loader(ds, batch_size=50, shuffle=True, seed=1)
    b = st.data.loader(ds, batch_size=50, shuffle=True, seed=1)
    first_a, second_a = _ids(next(iter(a))[0]), _ids(next(iter(a))[0])
    first_b = _ids(next(iter(b))[0])
    assert first_a == first_b  # same seed, same sequence of orders
    assert first_a != second_a  # a new order on each pass
    assert sorted(first_a) == list(range(50))
    other = st.data.loader(ds, batch_size=50, shuffle=True, seed=2)
    assert _ids(next(iter(other))[0]) != first_a


def test_transform_runs_on_the_collated_batch(ds):
    calls = []

    def tf(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x.float() * 2

    batches = list(st.data.loader(ds, batch_size=20, transform=tf))
    assert calls == [(20, 1, 12, 12), (20, 1, 12, 12), (10, 1, 12, 12)]
    assert batches[0][0].dtype == torch.float32
    real = st.data.loader(ds, batch_size=20, transform=st.data.transforms_for(CFG, train=False))
    x, _ = next(iter(real))
    assert x.shape == (20, 3, 16, 16) and x.dtype == torch.float32


def test_fake_data_with_pil_to_tensor():
    fake = FakeData(size=10, image_size=(3, 20, 24), num_classes=4, transform=PILToTensor())
    batches = list(st.data.loader(fake, batch_size=4))
    x, y = batches[0]
    assert x.shape == (4, 3, 20, 24) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [fake[i][1] for i in range(4)]
    assert torch.equal(x[1], fake[1][0])
    tf = st.data.transforms_for(CFG, train=True)
    xt, _ = next(iter(st.data.loader(fake, batch_size=4, transform=tf, shuffle=True)))
    assert xt.shape == (4, 3, 16, 16) and xt.dtype == torch.float32


def test_pil_images_are_converted_too():
    fake = FakeData(size=3, image_size=(3, 8, 8), num_classes=2)  # yields PIL images
    x, _ = next(iter(st.data.loader(fake, batch_size=3)))
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.uint8
    assert torch.equal(x[0], PILToTensor()(fake[0][0]))


def test_item_transform_datasets_take_the_item_path(ds):
    ds.transform = lambda img: img[:, :6, :6]
    x, _ = next(iter(st.data.loader(ds, batch_size=4)))
    assert x.shape == (4, 1, 6, 6)


def test_workers_give_the_same_batches(ds):
    serial = [b[0] for b in st.data.loader(ds, batch_size=16, shuffle=True, seed=5)]
    parallel = [
        b[0] for b in st.data.loader(ds, batch_size=16, shuffle=True, seed=5, num_workers=2)
    ]
    assert len(serial) == len(parallel)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))


def test_device_argument(ds):
    x, y = next(iter(st.data.loader(ds, batch_size=4, device="cpu")))
    assert x.device.type == "cpu" and y.device.type == "cpu"


class _Unpaired(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(3)


def test_mistakes(ds):
    with pytest.raises(DataError, match="run from 0 to 50"):
        st.data.loader(ds, [0, 50])
    with pytest.raises(DataError, match="1-D"):
        st.data.loader(ds, [[0, 1]])
    with pytest.raises(ConfigError, match="batch_size"):
        st.data.loader(ds, batch_size=0)
    with pytest.raises(ConfigError, match="transform"):
        st.data.loader(ds, transform="normalize")
    with pytest.raises(DataError, match=r"\(image, label\) pairs"):
        list(st.data.loader(_Unpaired(), batch_size=2))
