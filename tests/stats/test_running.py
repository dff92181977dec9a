"""stats/running.py: streaming per-channel statistics against numpy on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st_
from stats_helpers import ref_stats

from smart_transfer.errors import ConfigError, IncompatibleError, ProfileError
from smart_transfer.stats import moments
from smart_transfer.stats.running import RunningStats, hist_edges, merge_stats, to_layer_profile

EDGES = hist_edges(16, 0.05, 50.0)


def _rows(x: torch.Tensor, channel_dim: int) -> np.ndarray:
    """(values, channels) float64 view of a batch, the way the profiler reads it."""
    t = x.to(torch.float64)
    if channel_dim == -1 or x.ndim == 2:
        return t.reshape(-1, t.shape[-1]).numpy()
    return t.movedim(1, -1).reshape(-1, t.shape[1]).numpy()


def _accumulate(batches, channel_dim=1, **kw) -> RunningStats:
    c = batches[0].shape[channel_dim]
    kw.setdefault("hist_bins", 16)
    kw.setdefault("hist_scale", 0.05)
    kw.setdefault("hist_max", 50.0)
    kw.setdefault("sample_per_batch", None)
    kw.setdefault("cov_sample_per_batch", None)
    kw.setdefault("hist_sample_per_batch", None)
    acc = RunningStats(c, **kw)
    for x in batches:
        assert bool(acc.update(x, channel_dim))
    return acc


def _check(acc: RunningStats, batches, channel_dim=1, rtol=1e-5) -> None:
    data = np.concatenate([_rows(x, channel_dim) for x in batches])
    ref = ref_stats(data, EDGES.numpy())
    lp = acc.to_layer_profile("layer", "conv", {})
    scale = math.sqrt(ref["var"].max()) + 1e-12
    np.testing.assert_array_equal(lp.count.numpy(), ref["count"])
    np.testing.assert_allclose(lp.mean.numpy(), ref["mean"], rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(lp.var.numpy(), ref["var"], rtol=rtol, atol=rtol * scale**2)
    np.testing.assert_allclose(lp.cov.numpy(), ref["cov"], rtol=rtol, atol=rtol * scale**2)
    np.testing.assert_array_equal(lp.min.numpy(), ref["min"])
    np.testing.assert_array_equal(lp.max.numpy(), ref["max"])
    np.testing.assert_array_equal(lp.zero_frac.numpy(), ref["zero_frac"])
    np.testing.assert_array_equal(lp.log_count.numpy(), ref["log_count"])
    np.testing.assert_allclose(lp.log_mean.numpy(), ref["log_mean"], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(lp.log_var.numpy(), ref["log_var"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(lp.hist.numpy(), ref["hist"])
    np.testing.assert_array_equal(lp.hist_count.numpy(), ref["hist_count"])
    np.testing.assert_array_equal(lp.hist_edges.numpy(), EDGES.numpy())


def _conv_like(n, c, h, w, seed, zeros=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen) * torch.linspace(0.5, 3, c).view(1, c, 1, 1) + 1.5
    if zeros:
        x = torch.where(
            torch.rand(x.shape, generator=gen) < 0.3, torch.zeros(()), x
        )  # ReLU-like zeros
    return x


# -- histogram edges ---------------------------------------------------------------------------


def test_hist_edges_are_fixed_symmetric_and_monotone():
    e = hist_edges(128, 0.01, 1e4)
    assert e.dtype == torch.float64 and e.shape == (129,)
    assert torch.equal(e, hist_edges(128, 0.01, 1e4))  # data-independent: same settings, same edges
    assert torch.equal(e, -e.flip(0))  # exactly symmetric
    assert e[64] == 0.0  # even bins: 0 is an edge
    assert bool((e[1:] > e[:-1]).all())
    assert math.isclose(float(e[-1]), 1e4, rel_tol=1e-12)
    # uniform in asinh(x / scale)
    u = torch.asinh(e / 0.01)
    torch.testing.assert_close(
        u[1:] - u[:-1], torch.full((128,), float(u[1] - u[0]), dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "bad", [{"bins": 0}, {"bins": 2.5}, {"scale": 0.0}, {"max_abs": float("inf")}]
)
def test_hist_edges_rejects_bad_settings(bad):
    kw = {"bins": 8, "scale": 1.0, "max_abs": 10.0} | bad
    with pytest.raises(ConfigError):
        hist_edges(**kw)


# -- every statistic against numpy ---------------------------------------------------------------


def test_conv_layout_matches_numpy_over_several_batches():
    batches = [_conv_like(3, 4, 5, 6, seed=s) for s in range(3)] + [_conv_like(1, 4, 5, 6, seed=9)]
    _check(_accumulate(batches), batches)


def test_linear_layouts_2d_and_3d_match_numpy():
    gen = torch.Generator().manual_seed(3)
    two_d = [torch.randn(7, 5, generator=gen) * 4 for _ in range(3)]
    _check(_accumulate(two_d, channel_dim=-1), two_d, channel_dim=-1)
    three_d = [torch.randn(2, 6, 5, generator=gen) - 1 for _ in range(3)]  # (B, T, F)
    _check(_accumulate(three_d, channel_dim=-1), three_d, channel_dim=-1)
    # (N, H, W, C), as ConvNeXt's MLP: laid out as (N, C, L) inside, the same statistics
    four_d = [torch.relu(torch.randn(2, 3, 4, 5, generator=gen)) + 0.5 for _ in range(2)]
    _check(_accumulate(four_d, channel_dim=-1), four_d, channel_dim=-1)


def test_large_maps_use_per_image_products_that_match_numpy():
    """Narrow layers with >= 256 positions per image take the batched per-image product path."""
    batches = [_conv_like(3, 5, 16, 17, seed=s) for s in range(2)]
    _check(_accumulate(batches), batches)
    no_cov = _accumulate(batches, covariance=False).to_layer_profile("l", "conv", {})
    torch.testing.assert_close(
        no_cov.var, _accumulate(batches).to_layer_profile("l", "conv", {}).var, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("side", [4, 16])  # a (C, k*L) product, and per-image products
def test_chunked_reduction_equals_whole_batch(monkeypatch, side):
    """Chunk boundaries (also a last, shorter chunk) must not change any statistic."""
    batches = [_conv_like(7, 3, side, side, seed=s) for s in range(2)]
    whole = _accumulate(batches).to_layer_profile("l", "conv", {})
    # one image per chunk and thread: several chunks, the last one shorter
    monkeypatch.setattr(moments, "CHUNK_ELEMS", 3 * side * side)
    chunked = _accumulate(batches).to_layer_profile("l", "conv", {})
    for key in ("count", "min", "max", "zero_frac", "hist", "log_count"):
        assert torch.equal(getattr(whole, key), getattr(chunked, key)), key
    for key in ("mean", "var", "cov", "log_mean", "log_var"):
        torch.testing.assert_close(getattr(whole, key), getattr(chunked, key), rtol=1e-5, atol=1e-6)
    _check(_accumulate(batches), batches)


def test_without_covariance_variance_is_unchanged():
    batches = [_conv_like(4, 3, 5, 5, seed=s) for s in range(2)]
    with_cov = _accumulate(batches).to_layer_profile("l", "conv", {})
    no_cov = _accumulate(batches, covariance=False).to_layer_profile("l", "conv", {})
    assert no_cov.cov is None
    torch.testing.assert_close(no_cov.var, with_cov.var, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(no_cov.mean, with_cov.mean, rtol=1e-6, atol=1e-7)


def test_float64_and_float16_activations():
    x64 = [_conv_like(3, 2, 4, 4, seed=1).double()]
    _check(_accumulate(x64), x64, rtol=1e-10)
    x16 = [_conv_like(3, 2, 4, 4, seed=2).half()]
    _check(_accumulate(x16), x16)  # half is reduced in float32, compared with the same half values


def test_large_offset_keeps_variance_accurate():
    """Centring before squaring: mean 1e4, std 1 must not lose the variance in float32."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 2, 8, 8, generator=gen) + 1e4 for _ in range(3)]
    lp = _accumulate(batches, hist_bins=0).to_layer_profile("l", "conv", {})
    ref = np.concatenate([_rows(x, 1) for x in batches]).var(0)
    np.testing.assert_allclose(lp.var.numpy(), ref, rtol=1e-3)


def test_constant_and_all_zero_channels_give_zero_variance_and_no_nan():
    x = _conv_like(3, 4, 5, 3, seed=0)
    x[:, 1] = 0.1  # a constant channel (0.1 is not exact in binary, 15 positions per image)
    x[:, 2] = 0.0  # a dead channel
    acc = _accumulate([x, x.clone()])
    lp = acc.to_layer_profile("l", "conv", {})
    for key in lp.available():
        v = getattr(lp, key)
        assert not bool(torch.isnan(v).any()), key
    assert lp.var[1] == 0 and lp.var[2] == 0
    assert float(lp.mean[1]) == float(torch.tensor(0.1, dtype=torch.float32))
    assert bool((lp.cov[1] == 0).all()) and bool((lp.cov[:, 2] == 0).all())
    assert lp.zero_frac[2] == 1.0 and lp.log_count[2] == 0
    assert lp.log_mean[2] == 0 and lp.log_var[2] == 0 and lp.log_var[1] == 0


def test_nan_batch_returns_false_flag_without_crashing():
    x = _conv_like(2, 3, 4, 4, seed=0)
    x[1, 2, 0, 0] = float("nan")
    acc = RunningStats(3, sample_per_batch=8)
    assert not bool(acc.update(x, 1))
    y = _conv_like(2, 3, 4, 4, seed=1)
    y[0, 0, 0, 0] = float("inf")
    assert not bool(RunningStats(3).update(y, 1))


def test_wrong_channel_dim_is_a_profile_error():
    acc = RunningStats(5)
    with pytest.raises(ProfileError, match="channels"):
        acc.update(torch.zeros(2, 3, 4, 4), 1, "conv9")
    with pytest.raises(ProfileError):
        acc.update(torch.zeros(5), 1)
    with pytest.raises(ProfileError, match="floating"):
        RunningStats(3).update(torch.zeros(2, 3, dtype=torch.long), 1)


def test_sample_per_batch_must_be_positive():
    with pytest.raises(ConfigError):
        RunningStats(3, sample_per_batch=0)


# -- histogram binning is exactly np.searchsorted on the float64 edges ---------------------------


def test_bin_index_is_exact_at_and_around_edges():
    edges = hist_edges(32, 0.01, 100.0)
    acc = RunningStats(1, hist_bins=32, hist_scale=0.01, hist_max=100.0)
    e = edges.numpy()
    vals = np.concatenate(
        [
            e,
            np.nextafter(e, -np.inf),
            np.nextafter(e, np.inf),
            [0.0, -0.0, 1e-300, -1e-300, 1e30, -1e30, np.inf, -np.inf],
            np.random.default_rng(0).standard_normal(2000) * 10,
        ]
    )
    v64 = torch.tensor(vals, dtype=torch.float64).view(-1, 1)
    want = np.searchsorted(e[1:-1], vals, side="right")
    assert np.array_equal(acc._bin_index(v64.clone()).view(-1).numpy(), want)
    v32 = v64.float()
    want32 = np.searchsorted(e[1:-1], v32.double().view(-1).numpy(), side="right")
    assert np.array_equal(acc._bin_index(v32.clone()).view(-1).numpy(), want32)


# -- subsampling -------------------------------------------------------------------------------


def test_subsample_is_bounded_distinct_and_seeded():
    # Every position holds a distinct value, so the histogram of the sample tells which were drawn.
    n, length = 4, 50
    x = torch.arange(n * 2 * length, dtype=torch.float32).view(n, 2, length) + 1
    k = 37

    def run(seed):
        acc = RunningStats(
            2,
            sample_per_batch=k,
            hist_sample_per_batch=None,  # the whole log sample
            generator=torch.Generator().manual_seed(seed),
            hist_bins=2000,
            hist_scale=1.0,
            hist_max=1e3,
        )
        acc.update(x, 1)
        return acc

    a = run(0)
    lp = a.to_layer_profile("l", "conv", {})
    assert a.subsampled
    assert lp.hist_count.tolist() == [k, k] and lp.log_count.tolist() == [k, k]
    assert lp.hist.sum(1).tolist() == [k, k]
    assert lp.count.tolist() == [n * length] * 2  # moments still see every value
    assert torch.equal(
        lp.hist, run(0).to_layer_profile("l", "conv", {}).hist
    )  # same seed, same sample
    assert not torch.equal(lp.hist, run(1).to_layer_profile("l", "conv", {}).hist)
    # Without replacement: with bins finer than the unit spacing of the values, no bin holds two.
    assert float(lp.hist.max()) == 1.0


def test_no_subsampling_when_batch_fits():
    x = _conv_like(2, 3, 3, 3, seed=0)
    acc = RunningStats(3, sample_per_batch=18, hist_sample_per_batch=None)
    acc.update(x, 1)
    assert not acc.subsampled
    assert acc.to_layer_profile("l", "conv", {}).hist_count.tolist() == [18.0] * 3


# -- merging -----------------------------------------------------------------------------------

_values = st_.one_of(
    st_.just(0.0),
    st_.just(2.5),
    st_.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st_.data())
def test_merge_of_two_parts_equals_the_whole(data):
    c = data.draw(st_.integers(1, 4), label="channels")
    length = data.draw(st_.integers(1, 5), label="positions")
    sizes = data.draw(st_.lists(st_.integers(1, 3), min_size=2, max_size=5), label="batch sizes")
    split = data.draw(st_.integers(1, len(sizes) - 1), label="split")
    batches = []
    for n in sizes:
        vals = data.draw(st_.lists(_values, min_size=n * c * length, max_size=n * c * length))
        batches.append(torch.tensor(vals, dtype=torch.float64).view(n, c, length))
    kw = {
        "hist_bins": 8,
        "hist_scale": 0.5,
        "hist_max": 100.0,
        "sample_per_batch": None,
        "cov_sample_per_batch": None,
        "hist_sample_per_batch": None,
    }
    whole = _accumulate(batches, **kw)
    first = _accumulate(batches[:split], **kw)
    second = _accumulate(batches[split:], **kw)
    merged = merge_stats(first.stats, second.stats)
    w, m = whole.stats, merged
    assert m.count == w.count
    for key in ("min", "max", "zeros", "log_count", "hist", "hist_count"):
        assert torch.equal(getattr(m, key), getattr(w, key)), key
    scale = float(w.m2.max()) + 1.0
    torch.testing.assert_close(m.mean, w.mean, rtol=1e-9, atol=1e-9 * math.sqrt(scale))
    torch.testing.assert_close(m.m2, w.m2, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(m.comoment, w.comoment, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(m.log_mean, w.log_mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m.log_m2, w.log_m2, rtol=1e-9, atol=1e-8)
    # and both agree with numpy on all the data
    data_np = np.concatenate([_rows(x, 1) for x in batches])
    lp = to_layer_profile(m, "l", "conv", {}, hist_edges(8, 0.5, 100.0))
    ref = ref_stats(data_np, hist_edges(8, 0.5, 100.0).numpy())
    np.testing.assert_allclose(lp.var.numpy(), ref["var"], rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_array_equal(lp.hist.numpy(), ref["hist"])


def test_merge_rejects_different_shapes():
    a = _accumulate([_conv_like(2, 3, 2, 2, seed=0)])
    b = _accumulate([_conv_like(2, 4, 2, 2, seed=0)])
    with pytest.raises(IncompatibleError):
        merge_stats(a.stats, b.stats)
    c = _accumulate([_conv_like(2, 3, 2, 2, seed=0)], covariance=False)
    with pytest.raises(IncompatibleError, match="comoment"):
        merge_stats(a.stats, c.stats)


@pytest.mark.parametrize("channels", [200, 400])
def test_wide_layers_use_blocked_covariance_that_matches_numpy(channels):
    """Wide layers compute the Gram matrix blockwise (upper blocks, then mirrored)."""
    gen = torch.Generator().manual_seed(channels)
    conv = [torch.randn(3, channels, 3, 3, generator=gen) + 0.5 for _ in range(2)]
    _check(_accumulate(conv), conv)
    lin = [torch.randn(20, channels, generator=gen) * 2 for _ in range(2)]
    _check(_accumulate(lin, channel_dim=-1), lin, channel_dim=-1)


def test_float32_bin_table_agrees_with_bucketize_on_random_bit_patterns():
    """The 16-bit lookup must give exactly bucketize's bin for any finite float32."""
    gen = torch.Generator().manual_seed(7)
    bits = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=gen, dtype=torch.int64).to(
        torch.int32
    )
    v = bits.view(torch.float32)
    v = v[torch.isfinite(v)]
    acc = RunningStats(1, hist_bins=64, hist_scale=1e-3, hist_max=1e3)
    got = acc._bin_index(v.view(-1, 1)).view(-1)
    want = torch.bucketize(v.double(), hist_edges(64, 1e-3, 1e3)[1:-1], right=True)
    assert torch.equal(got.long(), want)


@pytest.mark.parametrize("bins", [128, 8192])
def test_bin_index_is_exact_with_bins_narrower_than_the_lookup_cells(bins):
    """With thousands of bins some 16-bit cells hold two edges; the lookup tables cannot serve
    them, and every value is then searched (still exactly bucketize's bin)."""
    from smart_transfer.stats.running import _float32_bin_table

    assert (_float32_bin_table(bins, 1e-2, 1e4) is None) == (bins == 8192)
    edges = hist_edges(bins, 1e-2, 1e4)
    v = torch.cat(
        [edges.float(), torch.randn(5000, generator=torch.Generator().manual_seed(3)) * 50]
    )
    acc = RunningStats(1, hist_bins=bins)
    got = acc._bin_index(v.view(-1, 1)).view(-1)
    want = torch.bucketize(v.double(), edges[1:-1], right=True)
    assert torch.equal(got.long(), want)
