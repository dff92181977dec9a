"""The measure registry: listing, lookup, registration and its errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import smart_transfer as st
from smart_transfer.errors import ConfigError, UnknownNameError
from smart_transfer.measures import (
    Measure,
    compare,
    get_measure,
    list_measures,
    register_measure,
    unregister_measure,
)

BUILTIN = {"lognormal_kl", "gaussian_kl", "welch_t", "wasserstein", "ks", "js", "gram", "frechet"}


def test_list_measures_is_sorted_and_complete():
    names = list_measures()
    assert names == sorted(names)
    assert BUILTIN <= set(names)
    assert st.list_measures() == names  # the top-level re-export


def test_details_describe_every_measure():
    details = {d["name"]: d for d in list_measures(details=True)}
    assert BUILTIN <= set(details)
    for name in BUILTIN:
        d = details[name]
        assert {"name", "level", "direction", "assumption", "requires", "batchnorm_ok"} <= set(d)
        assert d["level"] in ("channel", "layer")
        assert d["direction"] in ("divergence", "similarity", "p-value")
        assert d["assumption"] and d["score"]
        assert d["requires"] == sorted(get_measure(name).requires)
    assert {n for n in BUILTIN if details[n]["batchnorm_ok"]} == {"gaussian_kl", "frechet"}
    assert {n for n in BUILTIN if details[n]["level"] == "layer"} == {"gram", "frechet"}
    assert details["welch_t"]["direction"] == "p-value"


def test_get_measure_returns_a_frozen_measure():
    m = get_measure("gaussian_kl")
    assert isinstance(m, Measure) and m.name == "gaussian_kl"
    assert get_measure(m) is m
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "other"  # type: ignore[misc]


def test_unknown_measure_lists_the_known_names():
    with pytest.raises(UnknownNameError) as err:
        get_measure("lognormal-kl")
    msg = str(err.value)
    assert "'lognormal-kl'" in msg and "did you mean 'lognormal_kl'" in msg
    for name in BUILTIN:
        assert name in msg
    assert isinstance(err.value, KeyError)


@pytest.fixture
def temporary_names():
    names: list[str] = []
    yield names
    for n in names:
        unregister_measure(n)


def test_registered_function_runs_through_compare(pf, rng, temporary_names):
    temporary_names.append("mean_gap_test")

    @register_measure(
        "mean_gap_test",
        level="channel",
        direction="divergence",
        assumption="only the means matter",
        requires={"mean"},
    )
    def mean_gap(pre, new):
        return (new.mean - pre.mean).abs()

    assert "mean_gap_test" in list_measures()
    a, b = rng.normal(size=(100, 3)), rng.normal(1.0, size=(100, 3))
    sim = compare(pf.profile(pf.layer(a)), pf.profile(pf.layer(b)), "mean_gap_test")
    gap = np.abs(b.mean(0) - a.mean(0))
    np.testing.assert_allclose(sim.raw["conv1"].numpy(), gap, rtol=1e-12)
    # A plain tensor from a divergence gets the default score exp(-raw).
    np.testing.assert_allclose(sim.scores["conv1"].numpy(), np.exp(-gap), rtol=1e-12)


def test_duplicate_name_needs_overwrite(temporary_names):
    temporary_names.append("dup_test")
    kw = {"level": "channel", "direction": "similarity", "assumption": "x", "requires": {"mean"}}
    register_measure("dup_test", **kw)(lambda pre, new: pre.mean)
    with pytest.raises(ConfigError, match="already registered"):
        register_measure("dup_test", **kw)(lambda pre, new: pre.mean)
    register_measure("dup_test", overwrite=True, **kw)(lambda pre, new: new.mean)
    assert get_measure("dup_test").direction == "similarity"


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"level": "pixel", "direction": "divergence", "requires": {"mean"}}, "level"),
        ({"level": "channel", "direction": "distance", "requires": {"mean"}}, "direction"),
        ({"level": "channel", "direction": "divergence", "requires": {"median"}}, "median"),
    ],
)
def test_invalid_registration_is_a_config_error(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        register_measure("bad_test", assumption="x", **kw)
    assert "bad_test" not in list_measures()


def test_wrong_output_shape_is_reported(pf, rng, temporary_names):
    temporary_names.append("bad_shape_test")
    register_measure(
        "bad_shape_test", level="channel", direction="divergence", assumption="x", requires={"mean"}
    )(lambda pre, new: torch.zeros(2))
    p = pf.profile(pf.layer(rng.normal(size=(50, 3))))
    with pytest.raises(ConfigError, match="one value per output channel"):
        compare(p, p, "bad_shape_test")
