"""Per-channel moments of activations and their merge-able sufficient statistics.

The functional core of profiling. A batch of activations is reduced to per-channel sums in
the activation's own dtype (a centred two-pass, so no catastrophic cancellation), folded into
float64 running totals with Chan's parallel formulas. :func:`merge_stats` applies the same
formulas to two finished halves (two data sets, two processes, two saved profiles), so a
profile never needs the raw activations and its memory does not grow with the number of
images. Count, mean, variance, min/max and the fraction of exact zeros use every value, in a
handful of passes over each cache-sized chunk of images; the log moments (mean / variance of
log|x| over non-zero values) use the sampled positions of :mod:`.sampling`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import IncompatibleError, ProfileError
from .covariance import _gram_add_, _mirror_blocks_
from .profile import LayerProfile

F64 = torch.float64

# Elements per chunk and thread when a (N, C, L) batch is reduced on the CPU: all passes over
# a chunk of ~2 MB run while it is still in cache, instead of streaming the whole activation
# from memory once per statistic (about 20% faster for VGG-sized activations).
CHUNK_ELEMS = 1 << 19
# Maps with fewer positions than this are reduced over the images first (see
# moments_small_maps).
SMALL_MAP = 64
# Raw (uncentred) sums of squares are used where they exceed the centred ones at most this
# many times: float32 rounding then costs at most ~1e-5 of the variance.
RAW_MOMENT_LIMIT = 32.0


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
    cov_count: Tensor | None = None  # positions behind the off-diagonal covariance entries

    @property
    def num_channels(self) -> int:
        return int(self.mean.shape[0])


def _merge_vec(
    n_a: Tensor | float,
    mean_a: Tensor,
    m2_a: Tensor,
    n_b: Tensor | float,
    mean_b: Tensor,
    m2_b: Tensor,
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
    out = dataclasses.replace(
        a,
        **{  # type: ignore[arg-type]  # only the tensor fields are replaced
            f.name: v.clone()
            for f in dataclasses.fields(a)
            if isinstance(v := getattr(a, f.name), Tensor)
        },
    )
    _merge_into_(out, b)
    return out


def _merge_into_(s: ChannelStats, b: ChannelStats) -> None:
    """Fold ``b`` into ``s`` in place (Chan's pairwise update of every statistic).

    In place because for wide layers the (C, C) covariance is as large as a batch itself, and
    every fresh C x C temporary would cost as much as a pass over the data.
    """
    n_a, n_b = s.count, b.count
    n = n_a + n_b
    if n == 0:
        return
    delta = b.mean - s.mean
    weight = n_a * n_b / n
    s.mean.add_(delta, alpha=n_b / n)
    s.m2.add_(b.m2).addcmul_(delta, delta, value=weight)
    if s.comoment is not None and b.comoment is not None:
        s.comoment.add_(b.comoment)
        if weight:
            s.comoment.addr_(delta, delta, alpha=weight)
    if s.min is not None and b.min is not None and s.max is not None and b.max is not None:
        torch.minimum(s.min, b.min, out=s.min)
        torch.maximum(s.max, b.max, out=s.max)
    if s.zeros is not None and b.zeros is not None:
        s.zeros.add_(b.zeros)
    if (
        s.log_count is not None
        and s.log_mean is not None
        and s.log_m2 is not None
        and b.log_count is not None
        and b.log_mean is not None
        and b.log_m2 is not None
    ):
        s.log_mean, s.log_m2 = _merge_vec(
            s.log_count, s.log_mean, s.log_m2, b.log_count, b.log_mean, b.log_m2
        )
        s.log_count.add_(b.log_count)
    if (
        s.hist is not None
        and b.hist is not None
        and s.hist_count is not None
        and b.hist_count is not None
    ):
        s.hist.add_(b.hist)
        s.hist_count.add_(b.hist_count)
    if s.cov_count is not None and b.cov_count is not None:
        s.cov_count.add_(b.cov_count)
    s.count = n


class Scratch:
    """Reusable work buffers shared by all layers of a profiling run.

    Hooks run one after another, so one set of buffers suffices. Reusing them matters on the
    CPU: a fresh tensor of a few MB is a fresh mapping whose pages fault in on first touch,
    which costs more than the arithmetic done on it.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(
        self, numel: int, dtype: torch.dtype, device: torch.device, name: str = "work"
    ) -> Tensor:
        """A flat tensor of ``numel`` elements (contents undefined), reused across calls."""
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf[:numel]


_Scratch = Scratch  # the previous private name


def _as_rows(x: Tensor, channel_dim: int, num_channels: int, name: str) -> Tensor:
    """View activations as (N, C, L) (channels in the middle) or (M, C) (channels last).

    Both are views of the hooked tensor whenever its memory layout allows, so no copy.
    """
    if x.ndim < 2:
        raise ProfileError(
            f"layer {name!r} produced a {x.ndim}-d output; expected (batch, channels, ...)"
        )
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


def _channel_sum(t: Tensor) -> Tensor:
    """Per-channel float64 sums of an (N, C, L) or (M, C) tensor.

    Sums over the images first, then over the positions of the (C, L) result: a reduction
    along contiguous rows runs vectorised, where one over dims (0, 2) at once is slow for the
    short rows of small feature maps.
    """
    if t.ndim == 3:
        return t.sum(0).sum(1, dtype=F64)
    return t.sum(0, dtype=F64)


def moments_ncl(x: Tensor, scratch: Scratch, with_gram: bool) -> ChannelStats:
    """Moments of an (N, C, L) batch: per-image centred two-pass partials, then combined.

    Each image is centred on its own mean, so that every statistic of a chunk of images is
    computed while the chunk is in cache (one pass over memory instead of two). The images
    are combined exactly with the parallel-variance identity
    ``M2 = sum_i M2_i + L * sum_i (m_i - m)(m_i - m)^T``.
    The covariance comes back in the activation dtype in a scratch buffer (valid until the
    next layer's update), to be added into the float64 totals.
    """
    num, c, length = x.shape
    if not with_gram and length < SMALL_MAP and x.is_contiguous():
        return moments_small_maps(x, scratch)
    dt, dev = x.dtype, x.device
    n = num * length
    sums = torch.empty(num, c, dtype=dt, device=dev)
    mins, maxs, nonzero = torch.empty_like(sums), torch.empty_like(sums), torch.empty_like(sums)
    # On the CPU each intra-op thread gets about CHUNK_ELEMS of the chunk; elsewhere (GPU)
    # cache blocking does not pay for the extra kernel launches.
    chunk = CHUNK_ELEMS * max(1, torch.get_num_threads())
    step = num if dev.type != "cpu" else max(1, min(num, chunk // (c * length)))
    work = scratch.get(step * c * length, dt, dev)
    gram = scratch.get(c * c, dt, dev, "gram").view(c, c) if with_gram else None
    sq = None if gram is not None else torch.empty_like(sums)
    # Narrow layers with large maps: one small matmul per image (bmm) keeps every intra-op
    # thread busy, where a single (C, k*L) x (k*L, C) product with C <= 64 scales poorly
    # across threads (measured 1.4x faster with 2 threads, the same with 1).
    per_image = None
    if gram is not None and dev.type == "cpu" and c < 128 and length >= 256:
        per_image = scratch.get(step * c * c, dt, dev, "per_image")
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
        # Second pass: values centred on their image's mean. For the covariance they are laid
        # out channel-major, (C, k*L), so that one matmul adds the chunk's (C, C) sum.
        centre = (sums[j] / length).unsqueeze(2)
        if gram is not None and per_image is not None:
            torch.sub(xs, centre, out=flat)
            products = per_image[: k * c * c].view(k, c, c)
            torch.bmm(flat, flat.transpose(1, 2), out=products)
            if i == 0:
                torch.sum(products, 0, out=gram)
            else:
                gram.add_(products.sum(0))
        elif gram is not None:
            centred = work[: k * c * length].view(c, k, length)
            torch.sub(xs, centre, out=centred.permute(1, 0, 2))
            _gram_add_(gram, centred.view(c, k * length), first=i == 0)
        else:
            # Without a covariance, a one-pass norm gives the raw sums of squares; the
            # few channels where that loses digits are redone centred below.
            torch.linalg.vector_norm(xs, 2, dim=2, out=sq[j])  # type: ignore[index]
    mean64 = sums.to(F64).sum(0) / n
    # Offsets of the centres actually used (float32 image means) from the batch mean.
    offsets = (sums / length).to(F64) - mean64
    if gram is not None:
        _gram_add_(gram, (offsets * math.sqrt(length)).T.to(dt), first=False)
        _mirror_blocks_(gram)
        m2 = gram.diagonal().to(F64)
    else:
        m2 = m2_from_raw(x, sums, sq, mean64)  # type: ignore[arg-type]
    return ChannelStats(
        count=float(n),
        mean=mean64,
        m2=m2,
        comoment=gram,
        min=mins.amin(0).to(F64),
        max=maxs.amax(0).to(F64),
        zeros=n - nonzero.to(F64).sum(0),
    )


def moments_small_maps(x: Tensor, scratch: Scratch) -> ChannelStats:
    """Moments of an (N, C, L) batch with small maps (few positions per image).

    Reductions along rows of L < SMALL_MAP values run far below memory speed, so every
    statistic is reduced over the images first, as (N, C*L) rows, then over the L
    positions of the (C, L) result. The sum of squares is raw (one pass, no centring);
    channels where that would lose digits are recomputed centred.
    """
    num, c, length = x.shape
    n = num * length
    flat = x.view(num, c * length)
    s = flat.sum(0).view(c, length).sum(1, dtype=F64)
    work = scratch.get(flat.numel(), x.dtype, x.device).view(num, c * length)
    # Squares, then a column sum: a norm down the columns (dim 0) runs ~20x slower.
    ss = torch.mul(flat, flat, out=work).sum(0).view(c, length).sum(1, dtype=F64)
    mins = flat.amin(0).view(c, length).amin(1).to(F64)
    maxs = flat.amax(0).view(c, length).amax(1).to(F64)
    nonzero = torch.ne(flat, 0, out=work).sum(0).view(c, length).sum(1, dtype=F64)
    mean = s / n
    m2 = (ss - s * mean).clamp_min_(0)
    bad = (m2 * RAW_MOMENT_LIMIT < ss).nonzero().squeeze(1)
    if bad.numel():
        xb = x.index_select(1, bad.to(x.device))
        d = xb - mean[bad].to(x.dtype).view(1, -1, 1)
        m2[bad] = d.mul_(d).sum(0).sum(1, dtype=F64)
    return ChannelStats(count=float(n), mean=mean, m2=m2, min=mins, max=maxs, zeros=n - nonzero)


def m2_from_raw(x: Tensor, sums: Tensor, norms: Tensor, mean: Tensor) -> Tensor:
    """Sum of squared deviations per channel from per-image sums and norms of an (N, C, L) batch.

    Per image ``M2_i = sum x^2 - (sum x)^2 / L`` in float64. The float32 sum of squares is
    good to a few parts in 1e7 of itself, so where it exceeds ``M2_i`` by more than
    RAW_MOMENT_LIMIT (a mean large against the spread) the difference would keep too few
    digits; those channels are recomputed from values centred on each image's mean.
    """
    length = x.shape[2]
    s64 = sums.to(F64)
    ss = norms.to(F64).square_()
    m2_img = ss - s64 * s64 / length
    bad = (m2_img * RAW_MOMENT_LIMIT < ss).any(0).nonzero().squeeze(1)
    if bad.numel():
        xb = x.index_select(1, bad.to(x.device))
        d = xb - (sums.index_select(1, bad.to(x.device)) / length).unsqueeze(2)
        m2_img[:, bad] = d.mul_(d).sum(2).to(F64)
    offsets = s64 / length - mean
    return m2_img.sum(0) + length * (offsets * offsets).sum(0)


def log_moments(v: Tensor, m: int, buf: Callable[..., Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Count, mean and sum of squared deviations of log|x| over the non-zero values of ``v``
    ((N, C, L) or (k, C); ``m`` positions per channel). ``buf(name)`` hands out work buffers
    shaped like ``v``.

    Logs in the activation dtype (relative error ~1e-7, far below sampling noise). A zero gets
    log(0 + 1) = 0, so it adds nothing to the sums of logs and no -inf appears (log(0) is also
    a slow path on the CPU); the zeros are counted to leave them out.
    """
    dims: tuple[int, ...] = (0, 2) if v.ndim == 3 else (0,)
    dt, dev = v.dtype, v.device
    zeros = torch.eq(v, 0, out=buf("zeros"))  # 1.0 / 0.0
    logs = torch.abs(v, out=buf("logs")).add_(zeros).log_()
    cnt = m - _channel_sum(zeros)
    s1 = _channel_sum(logs)
    lmean = s1 / cnt.clamp_min(1)
    s2 = _channel_sum(logs.mul_(logs))
    m2 = (s2 - s1 * lmean).clamp_min_(0).masked_fill_(cnt <= 1, 0.0)
    bad = (m2 * RAW_MOMENT_LIMIT < s2) & (cnt > 1)  # logs nearly constant: redo centred
    if bool(bad.any()):
        idx = bad.nonzero().squeeze(1).to(dev)
        vb = v.index_select(1, idx)
        lb = torch.abs(vb).add_(torch.eq(vb, 0)).log_()
        d = lb.sub_(lmean[idx].to(dt).view((1, -1) + (1,) * (vb.ndim - 2)))
        d.mul_(torch.ne(vb, 0))
        m2[idx] = d.mul_(d).sum(dims, dtype=F64)
    return cnt, lmean, m2


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", F64).clone()


def to_layer_profile(
    s: ChannelStats,
    name: str,
    kind: str,
    params: dict[str, tuple[int, ...]],
    edges: Tensor | None = None,
    *,
    _owned: bool = False,
    _cov_scaled: bool = False,
) -> LayerProfile:
    """Divide the sums by their counts: population variance/covariance, zero fraction.

    ``_owned``: ``s.comoment`` is a fresh tensor that may be divided in place (for wide layers
    a (C, C) copy costs as much as a batch's statistics); ``_cov_scaled``: it is already
    divided by the count (and owned)."""
    c = s.num_channels
    n = s.count
    denom = n if n > 0 else 1.0  # an empty accumulator reports zeros, not NaN
    mean = s.mean
    var = (s.m2 / denom).clamp_min(0)  # rounding can leave -1e-20 for a constant channel
    if s.min is not None and s.max is not None:
        # A channel whose min equals its max is constant: its variance is exactly 0 and its
        # mean exactly that value, whatever rounding the float32 sums left behind.
        const = s.min == s.max
        mean = torch.where(const, s.min, mean)
        var = torch.where(const, torch.zeros_like(var), var)
    cov = None
    if s.comoment is not None:
        # Exactly symmetric already: co-moments are built from mirrored blocks and outer
        # products delta * delta^T, whose (i, j) and (j, i) entries are the same product.
        cov = s.comoment.to("cpu", F64)
        if not _cov_scaled:
            cov = cov.div_(denom) if _owned or cov is not s.comoment else cov / denom
        if s.min is not None and s.max is not None:
            const = (s.min == s.max).cpu()
            if bool(const.any()):
                cov[const] = 0.0
                cov[:, const] = 0.0
        cov.diagonal().copy_(var)  # the diagonal *is* the variance; keep them identical
    log_var = None
    if s.log_count is not None and s.log_m2 is not None:
        log_var = (s.log_m2 / s.log_count.clamp_min(1)).clamp_min(0)
        if s.min is not None and s.max is not None:
            log_var = torch.where(s.min == s.max, torch.zeros_like(log_var), log_var)
    return LayerProfile(
        name=name,
        kind=kind,
        num_channels=c,
        params=dict(params),
        count=torch.full((c,), float(n), dtype=F64),
        mean=_cpu(mean),  # type: ignore[arg-type]
        var=_cpu(var),  # type: ignore[arg-type]
        min=_cpu(s.min),
        max=_cpu(s.max),
        zero_frac=None if s.zeros is None else _cpu(s.zeros / denom),
        log_count=_cpu(s.log_count),
        log_mean=_cpu(s.log_mean),
        log_var=_cpu(log_var),
        hist=_cpu(s.hist),
        hist_edges=None if s.hist is None or edges is None else _cpu(edges),
        hist_count=_cpu(s.hist_count),
        cov=cov,
        cov_count=None if cov is None else _cpu(s.cov_count),
    )


def from_layer_profile(lp: LayerProfile) -> ChannelStats:
    """Sufficient statistics back from a finished profile (inverse of :func:`to_layer_profile`)."""
    n = float(lp.count[0]) if lp.count.numel() else 0.0
    if not math.isfinite(n):
        raise IncompatibleError(
            f"layer {lp.name!r} comes from BatchNorm running statistics (unknown count) and cannot "
            "be merged; merge only profiles made by st.profile from data"
        )
    return ChannelStats(
        count=n,
        mean=lp.mean.to(F64).clone(),
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
        cov_count=None if lp.cov_count is None else lp.cov_count.to(F64).clone(),
    )
