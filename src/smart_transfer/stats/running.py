"""Streaming per-channel statistics of one layer's activations.

The functional core of profiling. :class:`RunningStats` sees one batch of activations at a
time, reduces it to per-channel sums in the activation's own dtype (a centred two-pass on
the batch, so no catastrophic cancellation), and merges those into float64 running totals
with Chan's parallel formulas. The same merge combines two halves of a data set, two
processes, or two saved profiles, so a profile never needs the raw activations and its memory
does not grow with the number of images.

Statistics and their cost per batch:

* count, mean, variance, min/max, fraction of exact zeros: all values, a few fused passes;
* channel covariance: all values, one matmul of the centred batch (its diagonal is the
  variance, so it comes almost for free with the centring);
* mean / variance of log|x| over non-zero values and a fixed-bin histogram: a stratified
  random subsample of at most ``sample_per_batch`` positions per batch (every channel at the
  same positions), because logs and bucketing are far dearer per value than a sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, IncompatibleError, ProfileError
from .profile import LayerProfile

F64 = torch.float64

# Histogram defaults: bins uniform in asinh(x / scale) between -asinh(max/scale) and
# +asinh(max/scale). Near zero the bins are linear (width ~ scale), far from zero they are
# logarithmic (each bin ~25% wider than the last with 128 bins), so one fixed set of edges
# resolves both small and large activations of any layer without looking at the data.
DEFAULT_HIST_BINS = 128
DEFAULT_HIST_SCALE = 1e-2
DEFAULT_HIST_MAX = 1e4
DEFAULT_SAMPLE_PER_BATCH = 4096


def hist_edges(
    bins: int = DEFAULT_HIST_BINS,
    scale: float = DEFAULT_HIST_SCALE,
    max_abs: float = DEFAULT_HIST_MAX,
) -> Tensor:
    """Histogram bin edges in value space (float64, ``bins + 1`` values, symmetric around 0).

    They depend only on the arguments, never on data, so histograms from two profiles made
    with the same settings line up bin by bin. Values beyond ``+-max_abs`` are counted in the
    end bins.
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ConfigError(f"hist_bins must be a positive int (or 0 for no histogram), got {bins!r}")
    if not (scale > 0 and max_abs > 0 and math.isfinite(scale) and math.isfinite(max_abs)):
        raise ConfigError(
            f"hist_scale and hist_max must be positive and finite, got {scale!r} and {max_abs!r}"
        )
    limit = math.asinh(max_abs / scale)
    # Integer grid first so that the edges are exactly symmetric and the middle one is exactly 0.
    grid = (2 * torch.arange(bins + 1, dtype=F64) - bins) / bins
    return scale * torch.sinh(grid * limit)


@dataclass
class ChannelStats:
    """Merge-able sufficient statistics of one layer (all float64, shape (C,) unless noted).

    ``m2`` / ``comoment`` / ``log_m2`` are sums of squared deviations (not yet divided by the
    count), which is what Chan's merge needs. Optional parts are None when not collected.
    """

    count: float  # values per channel; every channel sees the same positions
    mean: Tensor
    m2: Tensor
    comoment: Tensor | None = None  # (C, C)
    min: Tensor | None = None
    max: Tensor | None = None
    zeros: Tensor | None = None  # number of exact zeros
    log_count: Tensor | None = None
    log_mean: Tensor | None = None
    log_m2: Tensor | None = None
    hist: Tensor | None = None  # (C, B)
    hist_count: Tensor | None = None

    @property
    def num_channels(self) -> int:
        return int(self.mean.shape[0])


def _merge_vec(
    n_a: Tensor | float, mean_a: Tensor, m2_a: Tensor, n_b: Tensor | float, mean_b: Tensor, m2_b: Tensor
) -> tuple[Tensor, Tensor]:
    """Chan et al.'s pairwise merge of (count, mean, M2); counts may be per channel and 0."""
    n = n_a + n_b
    delta = mean_b - mean_a
    if isinstance(n, Tensor):
        safe = n.clamp_min(1)  # channels with no values keep mean 0 instead of 0/0
        mean = mean_a + delta * (n_b / safe)
        m2 = m2_a + m2_b + delta * delta * (n_a * n_b / safe)
    else:
        if n == 0:
            return mean_a.clone(), m2_a.clone()
        mean = mean_a + delta * (n_b / n)
        m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return mean, m2


def merge_stats(a: ChannelStats, b: ChannelStats) -> ChannelStats:
    """The statistics of the union of the data behind ``a`` and ``b`` (order does not matter)."""
    if a.num_channels != b.num_channels:
        raise IncompatibleError(
            f"cannot merge statistics of {a.num_channels} and {b.num_channels} channels; "
            "merge profiles of the same model and layers"
        )
    for part in ("comoment", "min", "zeros", "log_count", "hist"):
        if (getattr(a, part) is None) != (getattr(b, part) is None):
            raise IncompatibleError(
                f"one side has the statistic {part!r} and the other has not; "
                "profile both with the same settings"
            )
    if a.hist is not None and b.hist is not None and a.hist.shape != b.hist.shape:
        raise IncompatibleError(
            f"histograms have {a.hist.shape[1]} and {b.hist.shape[1]} bins; "
            "profile both with the same hist_bins"
        )
    n = a.count + b.count
    mean, m2 = _merge_vec(a.count, a.mean, a.m2, b.count, b.mean, b.m2)
    out = ChannelStats(count=n, mean=mean, m2=m2)
    if a.comoment is not None and b.comoment is not None:
        if n > 0:
            delta = b.mean - a.mean
            out.comoment = a.comoment + b.comoment + torch.outer(delta, delta) * (a.count * b.count / n)
        else:
            out.comoment = a.comoment.clone()
    if a.min is not None and b.min is not None and a.max is not None and b.max is not None:
        out.min = torch.minimum(a.min, b.min)
        out.max = torch.maximum(a.max, b.max)
    if a.zeros is not None and b.zeros is not None:
        out.zeros = a.zeros + b.zeros
    if (
        a.log_count is not None
        and a.log_mean is not None
        and a.log_m2 is not None
        and b.log_count is not None
        and b.log_mean is not None
        and b.log_m2 is not None
    ):
        out.log_mean, out.log_m2 = _merge_vec(
            a.log_count, a.log_mean, a.log_m2, b.log_count, b.log_mean, b.log_m2
        )
        out.log_count = a.log_count + b.log_count
    if a.hist is not None and b.hist is not None and a.hist_count is not None and b.hist_count is not None:
        out.hist = a.hist + b.hist
        out.hist_count = a.hist_count + b.hist_count
    return out


class _Scratch:
    """One reusable work buffer shared by all layers of a profiling run.

    Hooks run one after another, so a single buffer suffices. Reusing it avoids allocating
    (and page-faulting) fresh memory for every layer and batch.
    """

    def __init__(self) -> None:
        self._buf: Tensor | None = None

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A flat tensor of ``numel`` elements (contents undefined)."""
        buf = self._buf
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buf = buf
        return buf[:numel]


# Elements per chunk when a (N, C, L) batch is reduced on the CPU: all passes over a chunk of
# ~2 MB run while it is still in cache, instead of streaming the whole activation from memory
# once per statistic (about 20% faster for VGG-sized activations).
CHUNK_ELEMS = 1 << 19


def _as_rows(x: Tensor, channel_dim: int, num_channels: int, name: str) -> Tensor:
    """View activations as (N, C, L) (channels in the middle) or (M, C) (channels last).

    Both are views of the hooked tensor whenever its memory layout allows, so no copy.
    """
    if x.ndim < 2:
        raise ProfileError(f"layer {name!r} produced a {x.ndim}-d output; expected (batch, channels, ...)")
    dim = channel_dim % x.ndim
    if x.shape[dim] != num_channels:
        raise ProfileError(
            f"layer {name!r} output has shape {tuple(x.shape)}, whose dim {dim} is not its "
            f"{num_channels} channels; profile it with point='output' or exclude it"
        )
    if dim == x.ndim - 1:
        return x.reshape(-1, num_channels)
    if dim != 1:
        raise ProfileError(f"layer {name!r}: channels must be dim 1 or the last dim, got dim {dim}")
    x3 = x.flatten(2) if x.ndim > 3 else (x if x.ndim == 3 else x.unsqueeze(-1))
    if x3.shape[2] == 1:
        return x3.reshape(x3.shape[0], num_channels)
    return x3


class RunningStats:
    """Accumulates :class:`ChannelStats` of one layer over batches of activations.

    ``hist_bins`` / ``hist_scale`` / ``hist_max``: the fixed histogram bins of
    :func:`hist_edges` (``hist_bins`` 0 or None: no histogram). ``sample_per_batch``: at most this many
    positions per batch feed the log moments and the histogram (None: all of them).
    ``generator`` draws those positions (seed it for reproducible profiles).
    """

    def __init__(
        self,
        num_channels: int,
        *,
        hist_bins: int | None = DEFAULT_HIST_BINS,
        hist_scale: float = DEFAULT_HIST_SCALE,
        hist_max: float = DEFAULT_HIST_MAX,
        covariance: bool = True,
        sample_per_batch: int | None = DEFAULT_SAMPLE_PER_BATCH,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        scratch: _Scratch | None = None,
    ) -> None:
        if sample_per_batch is not None and (
            not isinstance(sample_per_batch, int) or isinstance(sample_per_batch, bool) or sample_per_batch < 1
        ):
            raise ConfigError(
                f"sample_per_batch must be a positive int or None (all values), got {sample_per_batch!r}"
            )
        c = int(num_channels)
        dev = torch.device(device)
        self.num_channels = c
        self.covariance = covariance
        self.sample_per_batch = sample_per_batch
        self.generator = generator
        self.device = dev
        edges = hist_edges(hist_bins, hist_scale, hist_max) if hist_bins else None
        self.edges = edges
        self._inner_edges = None if edges is None else edges[1:-1].to(dev)
        # Bins are uniform in asinh(x / scale) over [-limit, limit]; used to find bins fast.
        self._asinh_grid = (float(hist_scale), math.asinh(hist_max / hist_scale))
        self._scratch = scratch if scratch is not None else _Scratch()
        self.batches = 0
        self.subsampled = False  # True once a batch had more positions than sample_per_batch
        z = torch.zeros(c, dtype=F64, device=dev)
        self.stats = ChannelStats(
            count=0.0,
            mean=z.clone(),
            m2=z.clone(),
            comoment=torch.zeros(c, c, dtype=F64, device=dev) if covariance else None,
            min=torch.full((c,), math.inf, dtype=F64, device=dev),
            max=torch.full((c,), -math.inf, dtype=F64, device=dev),
            zeros=z.clone(),
            log_count=z.clone(),
            log_mean=z.clone(),
            log_m2=z.clone(),
            hist=None if edges is None else torch.zeros(c, edges.numel() - 1, dtype=F64, device=dev),
            hist_count=None if edges is None else z.clone(),
        )

    # -- one batch -------------------------------------------------------------------------

    def update(self, x: Tensor, channel_dim: int = 1, name: str = "layer") -> Tensor:
        """Add one batch of activations; returns a 0-d bool tensor, False if any was NaN/Inf.

        The flag is returned rather than checked so that a GPU caller can check it once per
        batch instead of synchronising in every hook.
        """
        x = x.detach()
        if not x.is_floating_point():
            raise ProfileError(f"layer {name!r} produced {x.dtype} values; only floating outputs can be profiled")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # half-precision sums over a batch would overflow or lose all digits
        rows = _as_rows(x, channel_dim, self.num_channels, name)
        batch = self._batch_stats(rows)
        self.stats = merge_stats(self.stats, batch)
        self.batches += 1
        return torch.isfinite(batch.mean).all()

    def _batch_stats(self, x: Tensor) -> ChannelStats:
        ncl = x.ndim == 3  # (N, C, L); otherwise (M, C)
        n = x.shape[0] * x.shape[2] if ncl else x.shape[0]
        if n == 0:
            return _empty_like(self.stats)
        out = self._moments_ncl(x) if ncl else self._moments_rows(x)
        self._sample_stats(x, n, out)
        return out

    def _moments_ncl(self, x: Tensor) -> ChannelStats:
        """Moments of an (N, C, L) batch: per-image two-pass partials, combined in float64.

        Each image is centred on its own mean; the images are then combined exactly with the
        parallel-variance identity  M2 = sum_i M2_i + L * sum_i (m_i - m)(m_i - m)^T.
        """
        num, c, length = x.shape
        dt, dev = x.dtype, x.device
        sums = torch.empty(num, c, dtype=dt, device=dev)
        mins, maxs, nonzero = torch.empty_like(sums), torch.empty_like(sums), torch.empty_like(sums)
        step = num if dev.type != "cpu" else max(1, min(num, CHUNK_ELEMS // (c * length)))
        work = self._scratch.get(step * c * length, dt, dev)
        comoment = torch.zeros(c, c, dtype=F64, device=dev) if self.covariance else None
        m2_img = None if self.covariance else torch.empty_like(sums)
        for i in range(0, num, step):
            j = slice(i, min(i + step, num))
            xs = x[j]
            k = xs.shape[0]
            torch.sum(xs, 2, out=sums[j])
            torch.amin(xs, 2, out=mins[j])
            torch.amax(xs, 2, out=maxs[j])
            # Non-zeros as 1.0/0.0: a float sum is much faster than summing a bool tensor, and
            # exact (sums of fewer than 2**24 ones are exact in float32).
            flat = work[: k * c * length].view(k, c, length)
            torch.ne(xs, 0, out=flat)
            torch.sum(flat, 2, out=nonzero[j])
            # Second pass: centre each image on its own mean. For the covariance the centred
            # values are laid out channel-major, (C, k*L), so one matmul gives the (C, C) sum.
            img_mean = (sums[j] / length).unsqueeze(2)
            if comoment is not None:
                centred = work[: k * c * length].view(c, k, length)
                torch.sub(xs, img_mean, out=centred.permute(1, 0, 2))
                flat2 = centred.view(c, k * length)
                comoment += (flat2 @ flat2.T).to(F64)
            else:
                torch.sub(xs, img_mean, out=flat)
                flat.mul_(flat)
                torch.sum(flat, 2, out=m2_img[j])  # type: ignore[index]
        sums64 = sums.to(F64)
        n = num * length
        mean = sums64.sum(0) / n
        dev_img = (sums / length).to(F64) - mean  # the centres actually used, minus the total mean
        if comoment is not None:
            comoment += length * (dev_img.T @ dev_img)
            comoment = 0.5 * (comoment + comoment.T)  # exact symmetry for downstream linear algebra
            m2 = comoment.diagonal().clone()
        else:
            m2 = m2_img.to(F64).sum(0) + length * (dev_img * dev_img).sum(0)  # type: ignore[union-attr]
        return ChannelStats(
            count=float(n),
            mean=mean,
            m2=m2,
            comoment=comoment,
            min=mins.amin(0).to(F64),
            max=maxs.amax(0).to(F64),
            zeros=n - nonzero.to(F64).sum(0),
        )

    def _moments_rows(self, x: Tensor) -> ChannelStats:
        """Moments of an (M, C) batch (linear outputs): a plain centred two-pass."""
        m, c = x.shape
        mean64 = x.sum(0).to(F64) / m
        work = self._scratch.get(m * c, x.dtype, x.device).view(m, c)
        torch.ne(x, 0, out=work)
        nonzero = work.sum(0).to(F64)
        torch.sub(x, mean64.to(x.dtype), out=work)
        comoment: Tensor | None = None
        if self.covariance:
            comoment = (work.T @ work).to(F64)
            comoment = 0.5 * (comoment + comoment.T)
            m2 = comoment.diagonal().clone()
        else:
            m2 = (work * work).sum(0).to(F64)
        return ChannelStats(
            count=float(m),
            mean=mean64,
            m2=m2,
            comoment=comoment,
            min=x.amin(0).to(F64),
            max=x.amax(0).to(F64),
            zeros=m - nonzero,
        )

    def _sample_stats(self, x: Tensor, n: int, out: ChannelStats) -> None:
        """Log moments and histogram counts on a stratified subsample of positions."""
        k = self.sample_per_batch
        ncl = x.ndim == 3
        if k is None or n <= k:
            sub = x.transpose(1, 2).reshape(-1, self.num_channels) if ncl else x
        else:
            self.subsampled = True
            # One position from each of k equal stretches of the batch: without replacement,
            # spread over every image, and O(k) to draw (a permutation of n would be O(n)).
            starts = torch.arange(k, dtype=F64) * (n / k)
            ends = torch.arange(1, k + 1, dtype=F64) * (n / k)
            lo, hi = starts.floor(), ends.floor()
            u = torch.rand(k, dtype=F64, generator=self.generator)
            pos = (lo + (u * (hi - lo)).floor()).long().clamp_(0, n - 1).to(x.device)
            if ncl:
                length = x.shape[2]
                sub = x[pos // length, :, pos % length]
            else:
                sub = x[pos]
        # Logs in the activation dtype (relative error ~1e-7, far below sampling noise); the
        # per-batch sums go to float64 before they are merged. Zeros are masked by adding 1
        # before the log (log 1 = 0) and weighting them 0, all in float arithmetic.
        is_nz = torch.ne(sub, 0).to(sub.dtype)
        logs = (sub.abs() + (1 - is_nz)).log_()
        cnt = is_nz.sum(0).to(F64)
        lmean = logs.sum(0).to(F64) / cnt.clamp_min(1)
        dev = (logs - lmean.to(sub.dtype)).mul_(is_nz)
        out.log_count, out.log_mean, out.log_m2 = cnt, lmean, (dev * dev).sum(0).to(F64)
        if self._inner_edges is not None:
            idx = self._bin_index(sub)
            bins = self._inner_edges.numel() + 1
            idx += torch.arange(self.num_channels, device=sub.device) * bins
            counts = torch.bincount(idx.flatten(), minlength=self.num_channels * bins)
            out.hist = counts.view(self.num_channels, bins).to(F64)
            out.hist_count = torch.full((self.num_channels,), float(sub.shape[0]), dtype=F64, device=sub.device)

    def _bin_index(self, v: Tensor) -> Tensor:
        """Bin of each value: ``i`` with ``edges[i] <= v < edges[i+1]``, end bins open-ended.

        Exactly ``bucketize`` against the float64 edges, but on the CPU a binary search per
        value is slow, so the bin is computed from asinh (the edges are uniform in asinh) and
        only values within rounding distance of an edge are looked up exactly.
        """
        inner = self._inner_edges
        if inner is None or self.edges is None:
            raise ProfileError("no histogram bins configured")
        if v.device.type != "cpu":
            return torch.bucketize(v.to(F64), inner, right=True)
        bins = inner.numel() + 1
        scale, limit = self._asinh_grid
        y = v.abs().mul_(1.0 / scale)
        # asinh(y) = log(y + sqrt(y^2 + 1)), written out because torch's CPU asinh is not vectorised
        y = (y + (y * y + 1).sqrt_()).log_().copysign_(v)
        pos = y.add_(limit).mul_(bins / (2 * limit))
        idx = pos.floor()
        frac = pos - idx
        near = (frac < 1e-3) | (frac > 1 - 1e-3)  # computed bin may be off by one only here
        idx = idx.clamp_(0, bins - 1).long()
        if bool(near.any()):
            idx[near] = torch.bucketize(v[near].to(F64), inner, right=True)
        return idx

    # -- results ---------------------------------------------------------------------------

    def merge_(self, other: RunningStats) -> RunningStats:
        """Fold another accumulator of the same layer into this one (in place)."""
        self.stats = merge_stats(self.stats, other.stats)
        self.batches += other.batches
        self.subsampled = self.subsampled or other.subsampled
        return self

    def to_layer_profile(self, name: str, kind: str, params: dict[str, tuple[int, ...]]) -> LayerProfile:
        """Finished statistics on the CPU as a :class:`LayerProfile`."""
        return to_layer_profile(self.stats, name, kind, params, self.edges)


def _empty_like(s: ChannelStats) -> ChannelStats:
    z = torch.zeros_like(s.mean)
    return ChannelStats(
        count=0.0,
        mean=z.clone(),
        m2=z.clone(),
        comoment=None if s.comoment is None else torch.zeros_like(s.comoment),
        min=None if s.min is None else torch.full_like(z, math.inf),
        max=None if s.max is None else torch.full_like(z, -math.inf),
        zeros=None if s.zeros is None else z.clone(),
        log_count=None if s.log_count is None else z.clone(),
        log_mean=None if s.log_mean is None else z.clone(),
        log_m2=None if s.log_m2 is None else z.clone(),
        hist=None if s.hist is None else torch.zeros_like(s.hist),
        hist_count=None if s.hist_count is None else z.clone(),
    )


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", F64).clone()


def to_layer_profile(
    s: ChannelStats,
    name: str,
    kind: str,
    params: dict[str, tuple[int, ...]],
    edges: Tensor | None = None,
) -> LayerProfile:
    """Divide the sums by their counts: population variance/covariance, zero fraction."""
    c = s.num_channels
    n = s.count
    inv = 1.0 / n if n > 0 else 0.0
    var = (s.m2 * inv).clamp_min(0)  # rounding can leave -1e-20 for a constant channel
    cov = None
    if s.comoment is not None:
        cov = s.comoment * inv
        cov.diagonal().copy_(var)  # the diagonal *is* the variance; keep them identical
    log_var = None
    if s.log_count is not None and s.log_m2 is not None:
        log_var = (s.log_m2 / s.log_count.clamp_min(1)).clamp_min(0)
    return LayerProfile(
        name=name,
        kind=kind,
        num_channels=c,
        params=dict(params),
        count=torch.full((c,), float(n), dtype=F64),
        mean=_cpu(s.mean),  # type: ignore[arg-type]
        var=_cpu(var),  # type: ignore[arg-type]
        min=_cpu(s.min),
        max=_cpu(s.max),
        zero_frac=None if s.zeros is None else _cpu(s.zeros * inv),
        log_count=_cpu(s.log_count),
        log_mean=_cpu(s.log_mean),
        log_var=_cpu(log_var),
        hist=_cpu(s.hist),
        hist_edges=None if s.hist is None or edges is None else _cpu(edges),
        hist_count=_cpu(s.hist_count),
        cov=_cpu(cov),
    )


def from_layer_profile(lp: LayerProfile) -> ChannelStats:
    """Sufficient statistics back from a finished profile (inverse of :func:`to_layer_profile`)."""
    n = float(lp.count[0]) if lp.count.numel() else 0.0
    if not math.isfinite(n):
        raise IncompatibleError(
            f"layer {lp.name!r} comes from BatchNorm running statistics (unknown count) and cannot "
            "be merged; merge only profiles made by st.profile from data"
        )
    f = lp.mean.to(F64)
    return ChannelStats(
        count=n,
        mean=f.clone(),
        m2=lp.var.to(F64) * n,
        comoment=None if lp.cov is None else lp.cov.to(F64) * n,
        min=None if lp.min is None else lp.min.to(F64).clone(),
        max=None if lp.max is None else lp.max.to(F64).clone(),
        zeros=None if lp.zero_frac is None else (lp.zero_frac.to(F64) * n).round(),
        log_count=None if lp.log_count is None else lp.log_count.to(F64).clone(),
        log_mean=None if lp.log_mean is None else lp.log_mean.to(F64).clone(),
        log_m2=None
        if lp.log_var is None or lp.log_count is None
        else lp.log_var.to(F64) * lp.log_count.to(F64),
        hist=None if lp.hist is None else lp.hist.to(F64).clone(),
        hist_count=None if lp.hist_count is None else lp.hist_count.to(F64).clone(),
    )
