"""Every measure against an independent numpy/scipy computation on the same samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, linalg, stats
from scipy.spatial.distance import jensenshannon

from smart_transfer.measures import compare
from smart_transfer.measures.histogram import js, ks, wasserstein
from smart_transfer.measures.kl import ZERO_FRAC_EPS, gaussian_kl, lognormal_kl
from smart_transfer.measures.layer import frechet, gram
from smart_transfer.measures.welch import welch_t


def _kl_by_quadrature(pdf_p, pdf_q, lo: float, hi: float) -> float:
    """KL(p || q) = int p log(p / q) by numerical integration."""

    def f(x: float) -> float:
        p = pdf_p(x)
        return 0.0 if p <= 0 else p * (np.log(p) - np.log(pdf_q(x)))

    return integrate.quad(f, lo, hi, limit=400, points=None)[0]


def _zero_inflated(rng: np.random.Generator, n: int, z: float, mu: float, s: float) -> np.ndarray:
    x = rng.lognormal(mean=mu, sigma=s, size=n)
    x[rng.random(n) < z] = 0.0
    return x


@pytest.fixture
def lognormal_pair(pf, rng):
    params_pre = [(0.3, 0.0, 1.0), (0.6, -0.5, 0.7), (0.1, 0.4, 1.5)]
    params_new = [(0.5, 0.3, 0.8), (0.6, -0.5, 0.7), (0.05, -0.2, 1.2)]
    pre = np.stack([_zero_inflated(rng, 5000, *p) for p in params_pre], axis=1)
    new = np.stack([_zero_inflated(rng, 4000, *p) for p in params_new], axis=1)
    return pre, new, pf.layer(pre), pf.layer(new)


def _fit(x: np.ndarray) -> tuple[float, float, float]:
    """(zero fraction, mean and population std of log x over x > 0) from samples."""
    nz = x[x > 0]
    return float((x == 0).mean()), float(np.log(nz).mean()), float(np.log(nz).std())


def test_lognormal_kl_matches_quadrature_of_the_mixture(lognormal_pair):
    pre, new, lp_pre, lp_new = lognormal_pair
    got = lognormal_kl(lp_pre, lp_new)
    assert got.dtype == torch.float64
    for c in range(pre.shape[1]):
        zp, mp, sp = _fit(pre[:, c])
        zn, mn, sn = _fit(new[:, c])
        # KL of the mixtures: the atom at 0 against the atom, the continuous parts by quadrature.
        atom = zn * np.log(zn / zp)
        f_p = stats.lognorm(s=sp, scale=np.exp(mp)).pdf
        f_n = stats.lognorm(s=sn, scale=np.exp(mn)).pdf
        cont = _kl_by_quadrature(
            lambda x, f_n=f_n, zn=zn: (1 - zn) * f_n(x),
            lambda x, f_p=f_p, zp=zp: (1 - zp) * f_p(x),
            0.0,
            np.inf,
        )
        assert got[c].item() == pytest.approx(atom + cont, rel=1e-6, abs=1e-9)


def test_lognormal_kl_direction_and_symmetric_option(lognormal_pair):
    _, _, lp_pre, lp_new = lognormal_pair
    forward = lognormal_kl(lp_pre, lp_new)
    backward = lognormal_kl(lp_new, lp_pre)
    assert not torch.allclose(forward[0], backward[0])  # KL is not symmetric
    sym = lognormal_kl(lp_pre, lp_new, symmetric=True)
    torch.testing.assert_close(sym, 0.5 * (forward + backward), rtol=1e-12, atol=1e-15)
    # compare() computes KL(new || pre): D_pre is the reference distribution.
    torch.testing.assert_close(compare_raw(lp_pre, lp_new, "lognormal_kl"), forward)


def compare_raw(lp_pre, lp_new, measure: str, **options) -> torch.Tensor:
    from smart_transfer.stats.profile import ActivationProfile

    sim = compare(
        ActivationProfile({lp_pre.name: lp_pre}),
        ActivationProfile({lp_new.name: lp_new}),
        measure,
        **options,
    )
    return sim.raw[lp_new.name]


def test_lognormal_kl_counts_zeros_as_a_point_mass(pf):
    # Same non-zero values, different sparsity: a measure that dropped the zeros would see
    # identical distributions.
    rng = np.random.default_rng(0)
    vals = rng.lognormal(size=(2000, 1))
    sparse = vals.copy()
    sparse[:1000] = 0.0
    lp_dense = pf.layer(np.concatenate([vals[1000:], vals[1000:]]))
    lp_sparse = pf.layer(sparse)
    got = lognormal_kl(lp_dense, lp_sparse).item()
    eps = ZERO_FRAC_EPS  # the dense profile's zero fraction 0 is smoothed to eps
    expected = 0.5 * np.log(0.5 / eps) + 0.5 * np.log(0.5 / (1 - eps))
    assert got == pytest.approx(expected, rel=1e-9)


def test_gaussian_kl_matches_quadrature(pf, rng):
    pre = rng.normal([0.0, 1.0, -2.0], [1.0, 0.5, 2.0], size=(3000, 3))
    new = rng.normal([0.5, 1.0, -1.0], [1.5, 0.4, 2.0], size=(2000, 3))
    got = gaussian_kl(pf.layer(pre), pf.layer(new))
    for c in range(3):
        q = stats.norm(pre[:, c].mean(), pre[:, c].std())
        p = stats.norm(new[:, c].mean(), new[:, c].std())
        lo, hi = min(p.ppf(1e-12), q.ppf(1e-12)), max(p.isf(1e-12), q.isf(1e-12))
        assert got[c].item() == pytest.approx(_kl_by_quadrature(p.pdf, q.pdf, lo, hi), rel=1e-6)


def test_welch_t_matches_scipy(pf, rng):
    pre = rng.normal([0.0, 1.0, 3.0, 0.0], [1.0, 2.0, 0.5, 1.0], size=(300, 4))
    new = rng.normal([0.1, 1.5, 3.0, 0.0], [1.5, 1.0, 0.5, 1.0], size=(120, 4))
    got = welch_t(pf.layer(pre), pf.layer(new)).numpy()
    on_samples = stats.ttest_ind(new, pre, axis=0, equal_var=False).pvalue
    np.testing.assert_allclose(got, on_samples, rtol=1e-9)
    from_stats = stats.ttest_ind_from_stats(
        new.mean(0),
        new.std(0, ddof=1),
        len(new),
        pre.mean(0),
        pre.std(0, ddof=1),
        len(pre),
        equal_var=False,
    ).pvalue
    np.testing.assert_allclose(got, from_stats, rtol=1e-9)
    assert (got > 0).all() and (got <= 1).all()


def _hist_pair(pf, rng, edges=None):
    edges = pf.EDGES if edges is None else edges
    pre = rng.normal([0.0, 1.0, 2.0], [1.0, 0.5, 1.0], size=(3000, 3))
    new = np.concatenate([rng.normal([0.3, 1.0, -1.0], [1.0, 0.8, 0.3], size=(1500, 3))], axis=0)
    return pre, new, pf.layer(pre, edges=edges), pf.layer(new, edges=edges), edges


@pytest.mark.parametrize("uniform", [True, False])
def test_wasserstein_matches_scipy(pf, rng, uniform):
    edges = None if uniform else np.sinh(np.linspace(-2.5, 2.8, 90))  # uneven bins
    pre, new, lp_pre, lp_new, edges = _hist_pair(pf, rng, edges)
    out = wasserstein(lp_pre, lp_new)
    centres = 0.5 * (edges[1:] + edges[:-1])
    hp, hn = lp_pre.hist.numpy(), lp_new.hist.numpy()
    for c in range(3):
        ref = stats.wasserstein_distance(centres, centres, hp[c], hn[c])
        assert out.raw[c].item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    scale = np.maximum(np.sqrt((pre.var(0) + new.var(0)) / 2), np.diff(edges).min())
    np.testing.assert_allclose(out.score.numpy(), np.exp(-out.raw.numpy() / scale), rtol=1e-12)


def test_ks_matches_numpy_and_binned_ks_2samp(pf, rng):
    pre, new, lp_pre, lp_new, edges = _hist_pair(pf, rng)
    out = ks(lp_pre, lp_new)
    hp, hn = lp_pre.hist.numpy(), lp_new.hist.numpy()
    cdf_gap = np.abs(
        np.cumsum(hp / hp.sum(1, keepdims=True), 1) - np.cumsum(hn / hn.sum(1, keepdims=True), 1)
    )
    np.testing.assert_allclose(out.raw.numpy(), cdf_gap.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(out.score.numpy(), 1 - out.raw.numpy(), rtol=1e-12)
    for c in range(3):
        # ks_2samp of the binned samples is exactly the histogram statistic...
        bins_pre = np.digitize(pre[:, c], edges)
        bins_new = np.digitize(new[:, c], edges)
        binned = stats.ks_2samp(bins_pre, bins_new).statistic
        assert out.raw[c].item() == pytest.approx(binned, abs=1e-12)
        # ...and a lower bound of the statistic of the raw samples.
        assert out.raw[c].item() <= stats.ks_2samp(pre[:, c], new[:, c]).statistic + 1e-12


def test_js_matches_scipy(pf, rng):
    _, _, lp_pre, lp_new, _ = _hist_pair(pf, rng)
    out = js(lp_pre, lp_new)
    hp, hn = lp_pre.hist.numpy(), lp_new.hist.numpy()
    ref = np.array([jensenshannon(hp[c], hn[c], base=2) for c in range(3)])
    np.testing.assert_allclose(out.raw.numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out.score.numpy(), 1 - ref, rtol=1e-9, atol=1e-12)
    assert (ref > 0.05).all()  # the pair really differs


def test_histogram_measures_reject_different_bins(pf, rng):
    from smart_transfer.errors import IncompatibleError

    x = rng.normal(size=(200, 2))
    a = pf.layer(x)
    b = pf.layer(x, edges=np.linspace(-6.0, 8.0, 71))
    for fn in (wasserstein, ks, js):
        with pytest.raises(IncompatibleError, match="same hist settings"):
            fn(a, b)


def _correlated(rng, n, c, shift=0.0, scale=1.0):
    a = rng.normal(size=(c, c))
    return (rng.normal(size=(n, c)) @ a) * scale + shift + np.linspace(0, 1, c)


def test_gram_matches_numpy_second_moments(pf, rng):
    pre, new = _correlated(rng, 2000, 6), _correlated(rng, 1500, 6, shift=0.3, scale=1.2)
    out = gram(pf.layer(pre), pf.layer(new))
    g_pre, g_new = pre.T @ pre / len(pre), new.T @ new / len(new)  # E[x x^T] directly
    d = np.linalg.norm(g_new - g_pre) / (np.linalg.norm(g_new) + np.linalg.norm(g_pre))
    assert out.layer_raw == pytest.approx(d, rel=1e-9)
    assert out.layer_score == pytest.approx(1 - d, rel=1e-9)
    rows = np.linalg.norm(g_new - g_pre, axis=1) / (
        np.linalg.norm(g_new, axis=1) + np.linalg.norm(g_pre, axis=1)
    )
    np.testing.assert_allclose(out.raw.numpy(), rows, rtol=1e-9)
    np.testing.assert_allclose(out.score.numpy(), 1 - rows, rtol=1e-9)


def _frechet_scipy(mu1, s1, mu2, s2) -> float:
    covmean = linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean)))


def test_frechet_matches_scipy_sqrtm(pf, rng):
    pre, new = _correlated(rng, 3000, 12), _correlated(rng, 2000, 12, shift=0.2, scale=0.9)
    out = frechet(pf.layer(pre), pf.layer(new))
    mu_p, mu_n = pre.mean(0), new.mean(0)
    s_p, s_n = np.cov(pre, rowvar=False, bias=True), np.cov(new, rowvar=False, bias=True)
    ref = _frechet_scipy(mu_n, s_n, mu_p, s_p)
    assert out.layer_raw == pytest.approx(ref, rel=1e-7)
    den = np.sum((mu_n - mu_p) ** 2) + np.trace(s_n) + np.trace(s_p)
    assert out.layer_score == pytest.approx(1 - ref / den, rel=1e-7)
    assert out.meta["covariance"] == "full"
    # Per channel: the Frechet distance of each marginal, again via scipy's sqrtm (1x1).
    marg = [
        _frechet_scipy(mu_n[[c]], s_n[[c]][:, [c]], mu_p[[c]], s_p[[c]][:, [c]]) for c in range(12)
    ]
    np.testing.assert_allclose(out.raw.numpy(), marg, rtol=1e-9, atol=1e-12)


def test_frechet_without_covariance_uses_the_diagonal(pf, rng):
    pre, new = _correlated(rng, 3000, 5), _correlated(rng, 2000, 5, shift=0.5)
    bn = pf.batchnorm_layer(pre.mean(0), pre.var(0))
    out = frechet(bn, pf.layer(new))
    ref = _frechet_scipy(new.mean(0), np.diag(new.var(0)), pre.mean(0), np.diag(pre.var(0)))
    assert out.layer_raw == pytest.approx(ref, rel=1e-9)
    assert out.meta["covariance"] == "diagonal"
    # With the full covariance available the value differs (the correlations count).
    full = frechet(pf.layer(pre), pf.layer(new))
    assert full.layer_raw != pytest.approx(ref, rel=1e-3)
