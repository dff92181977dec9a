"""Random shapes, dtypes and value ranges fed to ``profile``, ``arrays`` and ``fit``: each call
either succeeds or raises a :class:`SmartTransferError`, never anything else."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as hs
from rel_helpers import labelled, tiny_model

import smart_transfer as st
from smart_transfer.errors import SmartTransferError

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure here is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TORCH_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.uint8,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.uint16,
    torch.complex64,
]
NP_DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    np.uint8,
    np.int8,
    np.int16,
    np.int64,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
    np.complex64,
    np.str_,
    np.object_,
]
FILLS = ["normal", "zeros", "unit", "pixels", "huge", "nan", "inf", "negative"]


def _values(shape: tuple[int, ...], fill: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = {
        "normal": lambda: rng.normal(size=shape),
        "zeros": lambda: np.zeros(shape),
        "unit": lambda: rng.random(shape),
        "pixels": lambda: rng.integers(0, 256, shape).astype(np.float64),
        "huge": lambda: rng.normal(size=shape) * 1e30,
        "nan": lambda: np.full(shape, np.nan),
        "inf": lambda: np.full(shape, np.inf),
        "negative": lambda: -rng.integers(1, 70000, shape).astype(np.float64),
    }[fill]()
    return np.asarray(base)


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, fill: str, seed: int) -> torch.Tensor:
    v = _values(shape, fill, seed)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.tensor(v.astype(np.float64)).to(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        ints = np.asarray(np.nan_to_num(v, nan=0, posinf=0, neginf=0)).astype(np.int64)
    if dtype == torch.bool:
        return torch.tensor(ints != 0)
    if dtype in (torch.uint8, torch.uint16):
        ints = np.abs(ints) % (256 if dtype == torch.uint8 else 65536)
        return torch.tensor(ints.astype(np.uint8 if dtype == torch.uint8 else np.uint16))
    return torch.tensor(ints).to(dtype)


shapes = hs.lists(hs.integers(0, 20), min_size=0, max_size=5).map(tuple)
image_shapes = hs.one_of(
    shapes,
    hs.tuples(
        hs.integers(0, 4), hs.sampled_from([1, 3, 4]), hs.integers(1, 20), hs.integers(1, 20)
    ),
)


def _ok_or_ours(call: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except SmartTransferError:
            return None


@FUZZ
@given(
    shape=image_shapes,
    dtype=hs.sampled_from(TORCH_DTYPES),
    fill=hs.sampled_from(FILLS),
    wrap=hs.sampled_from(["tensor", "pair", "dict", "numpy", "list", "empty"]),
    seed=hs.integers(0, 2**16),
)
def test_profile_succeeds_or_raises_a_smart_transfer_error(shape, dtype, fill, wrap, seed):
    x = _tensor(shape, dtype, fill, seed)
    batch: Any = {
        "tensor": x,
        "pair": (x, torch.zeros(len(x) if x.dim() else 0)),
        "dict": {"image": x},
        "numpy": x.numpy() if dtype not in (torch.bfloat16,) else x,
        "list": [x.tolist()],
        "empty": (),
    }[wrap]
    model = tiny_model()
    prof = _ok_or_ours(lambda: st.profile(model, [batch], progress=False))
    if prof is not None:
        assert prof.num_samples == x.shape[0] and len(prof) > 0
        assert all(bool(torch.isfinite(lp.mean).all()) for lp in prof.layers.values())


@FUZZ
@given(
    shape=image_shapes,
    dtype=hs.sampled_from(NP_DTYPES),
    fill=hs.sampled_from(FILLS),
    labels=hs.one_of(
        hs.lists(hs.integers(-3, 10**13), max_size=6),
        hs.lists(hs.floats(allow_nan=True, allow_infinity=True), max_size=6),
        hs.lists(hs.text(max_size=3), max_size=6),
        hs.lists(hs.booleans(), max_size=6),
        hs.just(None),
    ),
    layout=hs.sampled_from(["auto", "NCHW", "NHWC", "bad"]),
    seed=hs.integers(0, 2**16),
)
def test_arrays_succeeds_or_raises_a_smart_transfer_error(shape, dtype, fill, labels, layout, seed):
    v = _values(shape, fill, seed)
    with np.errstate(invalid="ignore", over="ignore"):
        images = v.astype(dtype) if np.dtype(dtype).kind not in "USO" else v.astype(str)
    ds = _ok_or_ours(lambda: st.data.arrays(images, labels, layout=layout))
    if ds is not None:
        assert len(ds) == len(labels) and len(ds.classes) <= len(labels)
        image, label = ds[len(ds) - 1]
        assert image.dtype in (torch.uint8, torch.float32) and image.dim() == 3
        assert 0 <= label < len(ds.classes)


@FUZZ
@given(
    shape=image_shapes,
    dtype=hs.sampled_from(TORCH_DTYPES),
    fill=hs.sampled_from(FILLS),
    label_dtype=hs.sampled_from([torch.int64, torch.int32, torch.uint8, torch.float32, torch.bool]),
    label_high=hs.integers(-2, 6),
    bare=hs.booleans(),
    seed=hs.integers(0, 2**16),
)
def test_fit_succeeds_or_raises_a_smart_transfer_error(
    shape, dtype, fill, label_dtype, label_high, bare, seed
):
    x = _tensor(shape, dtype, fill, seed)
    n = x.shape[0] if x.dim() else 1
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(min(label_high, 0), max(label_high, 1), (n,), generator=gen).to(label_dtype)
    model = st.replace_head(tiny_model(), 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train = [x] if bare else [(x, y)]
    result = _ok_or_ours(lambda: st.training.fit(model, opt, train, labelled(1), 1, progress=False))
    if result is not None:
        assert len(result.history) == 1
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_the_fuzzers_reach_both_outcomes():
    """Guard against fuzzers that only ever see one outcome (a broken strategy)."""
    model = tiny_model()
    assert st.profile(model, [torch.randn(2, 3, 16, 16)], progress=False)
    with pytest.raises(SmartTransferError):
        st.profile(model, [torch.randn(2, 3)], progress=False)
