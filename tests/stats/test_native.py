"""stats/native.py: the fused C statistics against float64 references and the eager path."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from smart_transfer.stats import native
from smart_transfer.stats.running import RunningStats

pytestmark = pytest.mark.skipif(native.kernels() is None, reason="no C compiler for the kernels")

FIELDS = ("mean", "m2", "min", "max", "zeros", "log_count", "log_mean", "log_m2", "hist_count")


def _both(batches, channel_dim=1, **kw):
    """Statistics of the same batches through the fused kernels and the eager path."""
    c = batches[0].shape[channel_dim]
    out = []
    for use in (True, False):
        rs = RunningStats(c, native=use, generator=torch.Generator().manual_seed(3), **kw)
        for x in batches:
            assert bool(rs.update(x, channel_dim))
        out.append(rs.stats)
    return out


def _relu_zeros(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2 + 0.3).relu_()


LAYOUTS = {
    "rows of 16": lambda: [_relu_zeros(6, 5, 4, 4, seed=s) for s in range(2)],
    "long rows": lambda: [_relu_zeros(6, 5, 40, 40, seed=s) for s in range(2)],
    "short rows": lambda: [_relu_zeros(40, 7, 3, 3, seed=s) for s in range(2)],
    # rows of 36: short, but three blocks of positions a row
    "short rows of 3 blocks": lambda: [_relu_zeros(20, 9, 6, 6, seed=s) for s in range(2)],
    "channels last": lambda: [
        _relu_zeros(6, 5, 12, 12, seed=s).contiguous(memory_format=torch.channels_last)
        for s in range(2)
    ],
    # big enough to be split between threads (channel ranges that start mid-block)
    "short rows, split": lambda: [_relu_zeros(64, 301, 3, 3, seed=s) for s in range(2)],
    "channels last, split": lambda: [
        _relu_zeros(8, 301, 12, 12, seed=s).contiguous(memory_format=torch.channels_last)
        for s in range(2)
    ],
    "large mean": lambda: [
        (
            torch.randn(30, 4, 8, 8, generator=torch.Generator().manual_seed(s)) * 0.01 + 1000.0
        ).contiguous(memory_format=torch.channels_last)
        for s in range(2)
    ],
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_fused_equals_eager_and_numpy(name):
    batches = LAYOUTS[name]()
    fused, eager = _both(
        batches, sample_per_batch=None, hist_sample_per_batch=None, cov_sample_per_batch=16
    )
    ref = torch.cat([b.double().movedim(1, -1).reshape(-1, b.shape[1]) for b in batches]).numpy()
    # every layout sums in float32 lanes of at most 64 shifted values each (then float64), with
    # float32 logs, as the eager path does
    tm, tv, tl = 2e-6, 2e-5, 2e-6
    np.testing.assert_allclose(fused.mean.numpy(), ref.mean(0), rtol=tm, atol=1e-12)
    np.testing.assert_allclose(fused.m2.numpy(), ref.var(0) * len(ref), rtol=tv, atol=1e-12)
    np.testing.assert_array_equal(fused.min.numpy(), ref.min(0))
    np.testing.assert_array_equal(fused.max.numpy(), ref.max(0))
    np.testing.assert_array_equal(fused.zeros.numpy(), (ref == 0).sum(0))
    nz = np.where(ref != 0, ref, np.nan)
    logs = np.log(np.abs(nz))
    np.testing.assert_array_equal(fused.log_count.numpy(), (ref != 0).sum(0))
    np.testing.assert_allclose(fused.log_mean.numpy(), np.nanmean(logs, 0), rtol=tl, atol=tl)
    np.testing.assert_allclose(
        fused.log_m2.numpy(), np.nanvar(logs, 0) * (ref != 0).sum(0), rtol=tl * 100, atol=1e-9
    )
    np.testing.assert_array_equal(fused.hist.numpy(), eager.hist.numpy())  # the same bins
    # the eager path centres in float32: for a mean 1e5 times the spread it keeps fewer digits
    rtol = 1e-3 if name == "large mean" else 2e-5
    for f in FIELDS:
        a, b = getattr(fused, f), getattr(eager, f)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=1e-9, err_msg=f)
    # the sampled covariance (the same code in both paths, centred in float32): the same
    # positions, so the same estimate up to float32 rounding
    if name != "large mean":
        np.testing.assert_allclose(
            fused.comoment.numpy(),
            eager.comoment.numpy(),
            rtol=1e-4,
            atol=1e-6 * float(eager.comoment.abs().max()),
        )


def test_routing_by_layout():
    """Kernels for float32 batches whose channel rows or channel vectors are contiguous."""
    assert native.supported(torch.zeros(4, 8, 100).permute(0, 2, 1).contiguous().permute(0, 2, 1))
    assert native.supported(torch.zeros(4, 8, 9))
    assert native.supported(torch.zeros(4, 8, 100))
    assert not native.supported(torch.zeros(4, 8, 100)[:, :, ::2])
    assert not native.supported(torch.zeros(4, 8, 9, dtype=torch.float64))


def test_sampled_statistics_use_the_same_positions():
    """With subsampling, the fused path draws the same positions as the eager one."""
    batches = [
        _relu_zeros(16, 6, 24, 24, seed=s).contiguous(memory_format=torch.channels_last)
        for s in range(3)
    ]
    fused, eager = _both(
        batches, sample_per_batch=300, hist_sample_per_batch=50, cov_sample_per_batch=40
    )
    for f in FIELDS:
        np.testing.assert_allclose(
            getattr(fused, f).numpy(), getattr(eager, f).numpy(), rtol=2e-5, atol=1e-9, err_msg=f
        )
    np.testing.assert_array_equal(fused.hist.numpy(), eager.hist.numpy())
    assert float(fused.hist_count[0]) == 3 * 50


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_block_samples_are_the_same_in_both_paths(name, monkeypatch):
    """The default samples (every 4th block of 16 positions for the logs, every 3rd here for
    the histogram) are the same positions in the kernels and in the eager path, and a
    numpy computation over exactly those positions gives the same numbers."""
    from smart_transfer.stats import sampling

    # these batches are small: sample them at the full rates all the same
    monkeypatch.setattr(sampling, "MIN_LOG_POSITIONS", 1)
    monkeypatch.setattr(sampling, "MIN_HIST_POSITIONS", 1)
    batches = LAYOUTS[name]()
    fused, eager = _both(
        batches, sample_per_batch=0.25, hist_sample_per_batch=1 / 3, cov_sample_per_batch=16
    )
    for f in ("log_count", "log_mean", "log_m2", "hist_count"):  # the moments: tested above
        np.testing.assert_allclose(
            getattr(fused, f).numpy(), getattr(eager, f).numpy(), rtol=2e-5, atol=1e-9, err_msg=f
        )
    np.testing.assert_array_equal(fused.hist.numpy(), eager.hist.numpy())
    # the reference: replay the phases the generator gives, in the same order
    g = torch.Generator().manual_seed(3)
    logs, hist_n = [], 0.0
    for b in batches:
        num, c, length = b.shape[0], b.shape[1], b[0, 0].numel()
        lphase = int(torch.randint(4, (1,), generator=g))
        hphase = int(torch.randint(3, (1,), generator=g))
        torch.rand(17, dtype=torch.float64, generator=g)  # the covariance draw (16 + 1)
        rows = b.double().reshape(num, c, length).permute(0, 2, 1).reshape(-1, c).numpy()
        logs.append(rows[native.block_positions(num, length, 4, lphase).numpy()])
        hist_n += len(native.block_positions(num, length, 3, hphase))
    ref = np.concatenate(logs)
    nz = ref != 0
    lg = np.where(nz, np.log(np.abs(np.where(nz, ref, 1.0))), 0.0)
    np.testing.assert_array_equal(fused.log_count.numpy(), nz.sum(0))
    np.testing.assert_allclose(fused.log_mean.numpy(), lg.sum(0) / nz.sum(0), rtol=2e-6, atol=1e-7)
    assert fused.hist_count.tolist() == [hist_n] * fused.hist_count.numel()
    assert fused.hist.sum(1).tolist() == [hist_n] * fused.hist_count.numel()


def test_block_sample_draws_every_position_equally():
    """Over the phases, each position is in the sample of exactly one: inclusion 1 / rate."""
    for num, length, rate in ((3, 9, 4), (2, 40, 4), (5, 16, 32), (1, 300, 3)):
        hits = torch.zeros(num * length)
        for phase in range(rate):
            pos = native.block_positions(num, length, rate, phase)
            assert len(pos) == native.block_count(num, length, rate, phase)
            hits[pos] += 1
        assert torch.equal(hits, torch.ones(num * length))


def test_block_count_is_the_number_of_block_positions():
    for num in (1, 3, 64):
        for length in (1, 9, 16, 17, 36, 144):
            for rate in (1, 2, 3, 4, 7, 32):
                for phase in {0, 1, rate - 1}:
                    want = len(native.block_positions(num, length, rate, phase))
                    assert native.block_count(num, length, rate, phase) == want, (
                        num,
                        length,
                        rate,
                        phase,
                    )


def test_small_batches_keep_every_position_of_a_block_sample():
    """A block sample keeps at least MIN_*_POSITIONS positions: a 3x3 map's batch is used whole
    (there a block is a whole image), a large one is thinned to the requested rate."""
    from smart_transfer.stats import running

    small = _relu_zeros(64, 4, 3, 3)
    rs = RunningStats(
        4, sample_per_batch=0.25, hist_sample_per_batch=1 / 32, cov_sample_per_batch=16
    )
    rs.update(small)
    assert not rs.subsampled
    assert rs.stats.hist_count.tolist() == [64 * 9] * 4
    big = _relu_zeros(64, 2, 48, 48)
    rs = RunningStats(
        2,
        sample_per_batch=0.25,
        hist_sample_per_batch=1 / 32,
        cov_sample_per_batch=16,
        generator=torch.Generator().manual_seed(0),
    )
    rs.update(big)
    assert rs.subsampled
    n = 64 * 48 * 48
    assert abs(float(rs.stats.hist_count[0]) - n / 32) <= 16
    assert running.MIN_HIST_POSITIONS <= float(rs.stats.hist_count[0])
    assert abs(float(rs.stats.log_count[0]) / float(n - rs.stats.zeros[0]) - 0.25) < 0.01


def test_default_histogram_sample_is_1024_random_positions_a_batch():
    """The default histogram reads 1,024 stratified random positions of a large batch (all
    channels at the same positions, a different draw each batch) and every position of a batch
    of at most 2,048; the fused and the eager statistics count the same values."""
    from smart_transfer.stats import running

    assert running.DEFAULT_HIST_SAMPLE_PER_BATCH == 1024
    big = _relu_zeros(64, 3, 16, 16)  # 16,384 positions a batch
    counts = {}
    for native_on in (True, False):
        rs = RunningStats(3, generator=torch.Generator().manual_seed(5), native=native_on)
        rs.update(big)
        rs.update(big)
        assert rs.stats.hist_count.tolist() == [2048.0] * 3
        assert rs.stats.hist.sum(1).tolist() == [2048.0] * 3
        counts[native_on] = rs.stats.hist
    assert torch.equal(counts[True], counts[False])
    small = _relu_zeros(64, 3, 5, 5)  # 1,600 positions: used whole
    rs = RunningStats(3)
    rs.update(small)
    assert rs.stats.hist_count.tolist() == [1600.0] * 3
    inner = running.hist_edges().numpy()[1:-1]
    for c in range(3):  # numpy's bins of every value: edges[i] <= v < edges[i + 1]
        idx = np.searchsorted(inner, small[:, c].reshape(-1).double().numpy(), side="right")
        want = np.bincount(idx, minlength=inner.size + 1)
        np.testing.assert_array_equal(rs.stats.hist[c].numpy(), want)


def test_sample_settings_are_checked():
    from smart_transfer.errors import ConfigError

    for bad in (0, -1, 0.0, 1.5, "all", True):
        with pytest.raises(ConfigError, match="sample_per_batch must be"):
            RunningStats(3, sample_per_batch=bad)
    with pytest.raises(ConfigError, match="a positive int or None"):
        RunningStats(3, cov_sample_per_batch=0.5)


def test_linear_and_token_outputs():
    x = torch.randn(300, 9, generator=torch.Generator().manual_seed(1))
    tok = torch.randn(4, 50, 9, generator=torch.Generator().manual_seed(2))
    for batches, dim in (([x], 1), ([tok], -1)):
        fused, eager = _both(batches, channel_dim=dim, cov_sample_per_batch=32)
        for f in FIELDS:
            np.testing.assert_allclose(
                getattr(fused, f).numpy(),
                getattr(eager, f).numpy(),
                rtol=2e-5,
                atol=1e-9,
                err_msg=f,
            )


def test_log_is_accurate_over_the_whole_float32_range():
    """log|x| from the bits: normal, subnormal, tiny and huge values, both signs."""
    g = torch.Generator().manual_seed(0)
    exps = torch.randint(-149, 128, (4000,), generator=g).double()
    vals = (torch.rand(4000, generator=g, dtype=torch.float64) + 0.5) * torch.pow(2.0, exps)
    vals = vals.clamp(max=3.0e38).float()
    vals = vals[vals != 0] * torch.where(
        torch.rand(vals[vals != 0].shape, generator=g) < 0.5, -1, 1
    )
    ref = np.log(np.abs(vals.double().numpy()))
    # channel rows (float32 logs, as torch's) and channels-last (float64 logs)
    for x, rtol in (
        (vals.view(1, 1, -1), 2e-6),
        (vals.view(1, -1, 1).transpose(1, 2), 2e-6),
        (vals.view(-1, 1).T.unsqueeze(0).contiguous().view(1, 1, -1), 2e-6),
    ):
        out = native.moments(x.contiguous() if x.stride(-1) == 1 else x, logs=True)
        assert float(out[6].sum()) == len(ref)
        np.testing.assert_allclose(float(out[7].sum()), ref.sum(), rtol=rtol)
        np.testing.assert_allclose(float(out[8].sum()), ((ref - ref.mean()) ** 2).sum(), rtol=rtol)
    # the sampled logs (gathered positions) against the same reference
    x = vals.view(1, 1, -1)
    out = torch.zeros(9, 1, dtype=torch.float64)
    native.sample_logs(x, native.offsets(x, torch.arange(len(ref))), out)
    np.testing.assert_allclose(float(out[7, 0]), ref.sum(), rtol=2e-6)
    np.testing.assert_allclose(float(out[8, 0]), ((ref - ref.mean()) ** 2).sum(), rtol=2e-6)
    one = native.moments(torch.tensor([[[1.0, 2.0, 0.5, 1.4142135, 1.4142137]]]), logs=True)
    np.testing.assert_allclose(
        float(one[7, 0]),
        math.log(2.0) - math.log(2.0) + math.log(1.4142135) + math.log(1.4142137),
        atol=1e-6,
    )


def test_constant_channel_and_non_finite_values():
    x = torch.full((8, 3, 5, 5), 2.5)
    rs = RunningStats(3, cov_sample_per_batch=10)
    assert bool(rs.update(x))
    s = rs.stats
    assert torch.equal(s.m2, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(s.mean, torch.full((3,), 2.5, dtype=torch.float64))
    for bad in (math.nan, math.inf):
        y = torch.randn(8, 3, 5, 5)
        y[3, 1, 2, 2] = bad
        assert not bool(RunningStats(3, cov_sample_per_batch=10).update(y))


def test_switched_off_or_no_compiler_falls_back(monkeypatch):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("SMART_TRANSFER_NATIVE", "0")
    assert native.kernels() is None
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.delenv("SMART_TRANSFER_NATIVE")
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.kernels() is None
    # the statistics still come (eager path)
    rs = RunningStats(4, cov_sample_per_batch=8)
    assert bool(rs.update(torch.randn(10, 4, 6, 6)))
    assert rs.count == 360


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("SMART_TRANSFER_CACHE", str(tmp_path))
    cc = native._compiler()
    assert cc is not None
    lib = native._build(cc)
    assert lib.parent == tmp_path / "kernels" and lib.exists()
    mtime = lib.stat().st_mtime_ns
    assert native._build(cc) == lib and lib.stat().st_mtime_ns == mtime  # not rebuilt
    # no temporary left behind: the library, the sha256 recorded at build time, the build lock
    names = sorted(p.name for p in lib.parent.iterdir())
    assert names == sorted([lib.name, lib.name + ".sha256", "build.lock"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import ctypes

        ctypes.CDLL(str(lib))


@pytest.mark.parametrize("c", [50, 250, 450])  # one, two and three row blocks
@pytest.mark.parametrize("with_totals", [False, True])
def test_cov_finish_against_numpy(c, with_totals):
    """The one-pass finish of the covariance: (products + float64 totals - n delta delta^T)
    times the scale, from the upper triangle (the blocks the products fill), mirrored below."""
    from smart_transfer.stats import running

    g = torch.Generator().manual_seed(c)
    rows = torch.randn(c, 30, generator=g)
    a32 = torch.full((c, c), float("nan"))  # below-diagonal blocks must never be read
    running._gram_add_(a32, rows, first=True)
    ref = rows.double().numpy() @ rows.double().numpy().T
    a64 = None
    if with_totals:
        more = torch.randn(c, 20, dtype=torch.float64, generator=g)
        a64 = torch.full((c, c), float("nan"), dtype=torch.float64)
        running._gram_add_(a64, more, first=True)
        ref = ref + more.numpy() @ more.numpy().T
    if len(running._gram_blocks(c)) == 2:  # one block: the whole product was written
        assert not bool(a32.isnan().any())
    delta = torch.randn(c, dtype=torch.float64, generator=g) * 0.3
    n, scale = 50.0, 1 / 50
    out = native.cov_finish(a32, a64, delta, n, scale)
    want = (ref - n * np.outer(delta.numpy(), delta.numpy())) * scale
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert bool((out == out.T).all())  # exactly symmetric
