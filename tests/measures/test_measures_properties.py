"""Properties every measure must have: identical profiles score 1, larger shifts score
lower, degenerate channels never give NaN, scores stay in [0, 1]."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as hs

from smart_transfer.measures import compare, get_measure

MEASURES = ["lognormal_kl", "gaussian_kl", "welch_t", "wasserstein", "ks", "js", "gram", "frechet"]


@pytest.mark.parametrize("name", MEASURES)
def test_identical_profiles_score_one(pf, name):
    x = pf.relu_samples(np.random.default_rng(3), 500, 4)
    # Two profiles built separately from the same values (equal, not the same objects).
    sim = compare(pf.profile(pf.layer(x)), pf.profile(pf.layer(x.copy())), name)
    assert torch.equal(sim.scores["conv1"], torch.ones(4, dtype=torch.float64))
    assert sim.layer_scores["conv1"] == 1.0


@pytest.mark.parametrize("name", MEASURES)
def test_larger_shift_scores_lower(pf, name):
    def shifted(shift: float):
        # The same draws every time, so only the shift differs.
        return pf.profile(pf.layer(pf.relu_samples(np.random.default_rng(7), 4000, 3, shift)))

    pre = shifted(0.0)
    small = compare(pre, shifted(0.01), name)
    large = compare(pre, shifted(1.0), name)
    assert (large.scores["conv1"] < small.scores["conv1"]).all()
    assert large.layer_scores["conv1"] < small.layer_scores["conv1"]
    assert (small.scores["conv1"] < 1).all()  # a real shift is seen at all...
    assert (small.scores["conv1"] > 0.5).all()  # ...but a slight one stays close to 1
    m = get_measure(name)
    if m.direction == "divergence":  # raw values grow with the difference
        assert (large.raw["conv1"] > small.raw["conv1"]).all()


def _degenerate(log_fill: float):
    """Channels: 0 dead (all zeros), 1 identical constant, 2 different constants,
    3 never zero vs. sometimes zero, 4 empty histogram in both, 5 empty histogram in one,
    6 always zero vs. mostly non-zero."""
    n = 60
    rng = np.random.default_rng(11)
    pos = rng.uniform(0.5, 2.0, size=n)
    pre = np.stack(
        [
            np.zeros(n),
            np.full(n, 2.0),
            np.full(n, 2.0),
            pos,
            np.full(n, 100.0),
            np.full(n, 100.0),
            np.zeros(n),
        ],
        axis=1,
    )
    some_zero = pos.copy()
    some_zero[: n // 3] = 0.0
    new = np.stack(
        [np.zeros(n), np.full(n, 2.0), np.full(n, 3.0), some_zero, np.full(n, 200.0), pos, pos],
        axis=1,
    )
    return pre, new


@pytest.mark.parametrize("log_fill", [math.nan, 0.0])
@pytest.mark.parametrize("name", MEASURES)
def test_degenerate_channels_give_finite_scores(pf, name, log_fill):
    pre, new = _degenerate(log_fill)
    prof_pre = pf.profile(pf.layer(pre, log_fill=log_fill))
    prof_new = pf.profile(pf.layer(new, log_fill=log_fill))
    for a, b in ((prof_pre, prof_new), (prof_new, prof_pre), (prof_pre, prof_pre)):
        sim = compare(a, b, name)
        s, r = sim.scores["conv1"], sim.raw["conv1"]
        assert torch.isfinite(s).all() and torch.isfinite(r).all(), (name, s, r)
        assert ((s >= 0) & (s <= 1)).all()
        assert math.isfinite(sim.layer_scores["conv1"]) and math.isfinite(sim.layer_raw["conv1"])
        json.dumps(sim.to_dict(), allow_nan=False)
    s = compare(prof_pre, prof_new, name).scores["conv1"]
    if name != "gram":  # a gram row also holds the channel's moments with the other channels
        assert s[1] == 1.0  # identical constant channels
    if name not in ("wasserstein", "ks", "js"):  # the histogram sees only empty rows there
        assert s[0] == 1.0  # dead in both
        assert s[2] < 1.0  # 2.0 vs 3.0
    if name in ("wasserstein", "ks", "js"):
        assert s[4] == 1.0 and s[5] == 0.0  # empty in both / in one only
        assert compare(prof_pre, prof_new, name).meta["layers"]["conv1"]["empty_in_one"] == [5]
    if name == "lognormal_kl":
        assert s[3] < 1.0 and s[6] < 0.01  # zeros compared as a point mass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=hs.integers(0, 2**32 - 1),
    n=hs.integers(2, 80),
    c=hs.integers(1, 4),
    kind=hs.sampled_from(["normal", "relu", "discrete"]),
)
def test_scores_are_in_unit_interval_and_symmetric_where_stated(pf, seed, n, c, kind):
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        if kind == "normal":
            return rng.normal(rng.normal(), rng.uniform(0.01, 3), size=(n, c))
        if kind == "relu":
            return np.maximum(rng.normal(rng.normal(), 1.0, size=(n, c)), 0.0)
        return rng.choice([0.0, 0.0, 0.5, 1.0, 2.0], size=(n, c))

    a, b = pf.profile(pf.layer(draw())), pf.profile(pf.layer(draw()))
    for name in MEASURES:
        ab = compare(a, b, name)
        s = ab.scores["conv1"]
        assert torch.isfinite(s).all() and ((s >= 0) & (s <= 1)).all(), (name, s)
        assert torch.isfinite(ab.raw["conv1"]).all()
        assert 0 <= ab.layer_scores["conv1"] <= 1
        assert torch.equal(compare(a, a, name).scores["conv1"], torch.ones(c, dtype=torch.float64))
        if name in ("wasserstein", "ks", "js", "gram", "frechet", "welch_t"):
            ba = compare(b, a, name)
            torch.testing.assert_close(ab.raw["conv1"], ba.raw["conv1"], rtol=1e-9, atol=1e-12)
            assert ab.layer_raw["conv1"] == pytest.approx(
                ba.layer_raw["conv1"], rel=1e-7, abs=1e-12
            )
    sym_ab = compare(a, b, "lognormal_kl", symmetric=True).raw["conv1"]
    sym_ba = compare(b, a, "lognormal_kl", symmetric=True).raw["conv1"]
    torch.testing.assert_close(sym_ab, sym_ba, rtol=1e-9, atol=1e-12)
