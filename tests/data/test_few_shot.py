"""Few-shot sampling: stratified, disjoint, deterministic; properties checked with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st_

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError


@st_.composite
def labelled(draw):
    """Shuffled integer labels of 2-6 classes (not necessarily 0..K-1), 1-30 samples each."""
    n_classes = draw(st_.integers(2, 6))
    values = draw(
        st_.lists(st_.integers(0, 50), min_size=n_classes, max_size=n_classes, unique=True)
    )
    counts = draw(st_.lists(st_.integers(1, 30), min_size=n_classes, max_size=n_classes))
    y = np.repeat(values, counts)
    np.random.default_rng(draw(st_.integers(0, 2**16))).shuffle(y)
    per_class = draw(st_.integers(1, min(counts)))
    return torch.from_numpy(y), per_class


@settings(max_examples=60, deadline=None)
@given(data=labelled(), val_fraction=st_.floats(0, 0.9), seed=st_.integers(0, 2**31 - 1))
def test_stratified_disjoint_and_sized(data, val_fraction, seed):
    y, per_class = data
    if per_class == 1 and val_fraction > 0:  # nothing to split: an empty validation set
        with pytest.raises(st.DataError, match="leaves no validation sample.*per_class >= 2"):
            st.data.few_shot(y, per_class, val_fraction=val_fraction, seed=seed)
        return
    train, val = st.data.few_shot(y, per_class, val_fraction=val_fraction, seed=seed)
    assert train.dtype == val.dtype == torch.int64
    both = torch.cat([train, val])
    assert len(both.unique()) == len(both)  # disjoint, no repeats
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    for c in y.unique().tolist():
        n_train, n_val = int((y[train] == c).sum()), int((y[val] == c).sum())
        assert n_train + n_val == per_class
        if val_fraction > 0 and per_class >= 2:
            assert 1 <= n_val <= per_class - 1
            assert (
                n_val in (1, per_class - 1) or abs(n_val - per_class * val_fraction) <= 0.5 + 1e-9
            )
        else:
            assert n_val == 0
    # deterministic for a seed, and the same for numpy / list input
    again = st.data.few_shot(y.numpy(), per_class, val_fraction=val_fraction, seed=seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


@settings(max_examples=30, deadline=None)
@given(data=labelled(), seed=st_.integers(0, 1000))
def test_smaller_draws_are_subsets_of_larger_ones(data, seed):
    y, per_class = data
    # val_fraction=0: one drawn sample per class cannot be split (the draw is the same either way)
    small = torch.cat(st.data.few_shot(y, max(1, per_class // 2), val_fraction=0, seed=seed))
    large = torch.cat(st.data.few_shot(y, per_class, val_fraction=0, seed=seed))
    assert set(small.tolist()) <= set(large.tolist())


def test_seeds_differ_and_every_sample_gets_drawn():
    y = torch.arange(200) % 2
    picks = torch.zeros(200)
    draws = [torch.cat(st.data.few_shot(y, 10, seed=s)) for s in range(100)]
    for d in draws:
        picks[d] += 1
    assert not torch.equal(draws[0], draws[1])
    # each of the 100 samples per class is drawn with probability 1/10: about 10 times in 100
    assert picks.min() >= 1 and picks.max() <= 25


def test_all_samples_when_per_class_is_none():
    y = torch.tensor([0] * 7 + [1] * 3)
    train, val = st.data.few_shot(y, None, val_fraction=0.3)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(10))
    assert (y[val] == 0).sum() == 2 and (y[val] == 1).sum() == 1


def test_no_validation_split():
    train, val = st.data.few_shot(torch.tensor([0, 0, 1, 1]), 2, val_fraction=0)
    assert len(val) == 0 and len(train) == 4


def test_small_class_is_named():
    y = torch.tensor([0] * 5 + [1] * 2 + [2] * 5)
    with pytest.raises(DataError, match=r"class 1 has only 2 samples.*per_class=3.*2 or less"):
        st.data.few_shot(y, 3)
    with pytest.raises(DataError, match=r"class 1 \('shirt'\)"):
        st.data.few_shot(y, 3, classes=["hat", "shirt", "shoe"])


def test_dataset_is_accepted_and_names_its_classes():
    ds = st.data.arrays(np.zeros((4, 2, 2), np.uint8), [0, 0, 0, 1], classes=["a", "b"])
    with pytest.raises(DataError, match=r"\('b'\)"):
        st.data.few_shot(ds, 2)
    train, val = st.data.few_shot(ds, 1, val_fraction=0)
    assert len(train) == 2 and len(val) == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"per_class": 0}, ConfigError),
        ({"per_class": 2.5}, ConfigError),
        ({"per_class": 2, "val_fraction": 1.0}, ConfigError),
        ({"per_class": 2, "val_fraction": -0.1}, ConfigError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        st.data.few_shot(torch.tensor([0, 0, 1, 1]), **kwargs)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.zeros(2, 2, dtype=torch.int64), "1-D"),
        (torch.tensor([], dtype=torch.int64), "empty"),
        (torch.tensor([0.0, 0.5]), "fractional"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_bad_targets(targets, match):
    with pytest.raises(DataError, match=match):
        st.data.few_shot(targets, 1)
