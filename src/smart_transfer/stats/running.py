"""Streaming per-channel statistics of one layer's activations.

The functional core of profiling. :class:`RunningStats` sees one batch of activations at a
time, reduces it to per-channel sums in the activation's own dtype (a centred two-pass, so no
catastrophic cancellation), and folds those into float64 running totals with Chan's parallel
formulas. :func:`merge_stats` applies the same formulas to two finished halves (two data sets,
two processes, two saved profiles), so a profile never needs the raw activations and its
memory does not grow with the number of images.

Statistics and their cost per batch:

* count, mean, variance, min/max, fraction of exact zeros: every value, a handful of passes
  over each cache-sized chunk of images;
* channel covariance: its diagonal is the variance (every value); the off-diagonal entries
  come from a stratified random subsample of at most ``cov_sample_per_batch`` positions per
  batch (every position when the batch has no more), centred on the exact batch means and
  weighted by the inverse inclusion probability, so the estimate is unbiased. A (C, C)
  product costs C times more per position than any per-channel statistic, and for the wide
  layers of mobile networks it would cost several times the network's own forward pass;
* mean / variance of log|x| over non-zero values: by default a quarter of the positions of each
  batch (every channel at the same positions), in blocks of 16 consecutive positions (every
  4th block from a random one on; at least MIN_LOG_POSITIONS positions of a batch), because a
  log costs far more per value than a sum and a block is read where the pass over the batch
  already has it; the fixed-bin histogram: 1,024 stratified random positions of each batch
  (every position of a batch of at most 2,048). Scattered positions carry more information
  per value than blocks of neighbours, so at the same cost the histogram plans agree more
  closely with exact ones than one block in 32 did (benchmarks/bench_sampling.py). A fraction
  setting takes that share of the blocks instead (at least MIN_LOG_POSITIONS /
  MIN_HIST_POSITIONS positions of a batch), an int that many stratified random positions.

Every subsample draws each position with the same probability, so sample means are unbiased
estimates of the batch's; the sample sizes are in each layer's ``log_count``, ``hist_count``
and ``cov_count``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, IncompatibleError, ProfileError
from . import native as _native
from .profile import LayerProfile

F64 = torch.float64

# Histogram defaults: bins uniform in asinh(x / scale) between -asinh(max/scale) and
# +asinh(max/scale). Near zero the bins are linear (width ~ scale), far from zero they are
# logarithmic (each bin ~25% wider than the last with 128 bins), so one fixed set of edges
# resolves both small and large activations of any layer without looking at the data.
DEFAULT_HIST_BINS = 128
DEFAULT_HIST_SCALE = 1e-2
DEFAULT_HIST_MAX = 1e4
# The log moments: a quarter of the positions of every batch, in blocks of 16 (see
# block_positions in native.py); the histogram: 1,024 stratified random positions a batch.
DEFAULT_SAMPLE_PER_BATCH: int | float | None = 0.25
DEFAULT_HIST_SAMPLE_PER_BATCH: int | float | None = 1024
# Positions per batch behind the off-diagonal covariance entries (see the module docstring).
DEFAULT_COV_SAMPLE_PER_BATCH = 128


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


@functools.lru_cache(maxsize=8)
def _float32_bin_table(bins: int, scale: float, max_abs: float) -> tuple[Tensor, Tensor] | None:
    """Bins of every float32, indexed by its upper 16 bits (sign, exponent, 7 mantissa bits).

    Entry ``h + 32768`` describes the floats whose bit pattern starts with ``h`` (a "cell"):
    ``low[h]`` is the bin of the cell's values below the edge that lies inside it, and
    ``cut[h]`` the smallest float32 at or above that edge (NaN when no edge lies inside), so
    the bin of ``v`` is ``low + (v >= cut)``. A cell spans 2**-7 of its magnitude, narrower
    than the bins of any sensible setting; None when some cell holds two edges (thousands of
    bins), and the caller then searches the edges for every value.
    """
    inner = hist_edges(bins, scale, max_abs)[1:-1]
    high = torch.arange(-32768, 32768, dtype=torch.int32) << 16
    a = torch.bucketize(high.view(torch.float32).to(F64), inner, right=True)
    b = torch.bucketize((high | 0xFFFF).view(torch.float32).to(F64), inner, right=True)
    low, top = torch.minimum(a, b), torch.maximum(a, b)
    # Cells of +-inf and NaN bit patterns: the bin of their first value (inf's end bin).
    special = ~torch.isfinite((high | 0xFFFF).view(torch.float32))
    low, top = torch.where(special, a, low), torch.where(special, a, top)
    if int((top - low).max()) > 1:
        return None
    cut = torch.full((65536,), math.nan, dtype=torch.float32)  # v >= NaN is never true
    split = (top > low).nonzero().squeeze(1)
    if split.numel():
        edge = inner[low[split]]  # the one edge inside each split cell (edges ascend)
        t = edge.to(torch.float32)
        t = torch.where(t.to(F64) < edge, torch.nextafter(t, torch.tensor(math.inf)), t)
        cut[split] = t
    return low.to(torch.int32), cut


@functools.lru_cache(maxsize=8)
def _native_bin_table(bins: int, scale: float, max_abs: float) -> tuple[Tensor, Tensor] | None:
    """:func:`_float32_bin_table` for the C kernels: +inf instead of NaN in the cells with no
    edge (they are compiled with finite-math flags, where a comparison with NaN is undefined)."""
    tables = _float32_bin_table(bins, scale, max_abs)
    if tables is None:
        return None
    low, cut = tables
    return low, torch.nan_to_num(cut, nan=math.inf)


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


class _Scratch:
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


# Elements per chunk and thread when a (N, C, L) batch is reduced on the CPU: all passes over
# a chunk of ~2 MB run while it is still in cache, instead of streaming the whole activation
# from memory once per statistic (about 20% faster for VGG-sized activations).
CHUNK_ELEMS = 1 << 19
# Maps with fewer positions than this are reduced over the images first (see
# _moments_small_maps).
SMALL_MAP = 64
# Batches whose sampled (C, C) products are summed in the activation dtype before they are
# added to the float64 totals (fewer passes over a matrix that can be as large as a batch).
COV_FLUSH_BATCHES = 16
# Batches whose covariance sample rows go into one (C, C) product.
COV_GEMM_BATCHES = 4
# Raw (uncentred) sums of squares are used where they exceed the centred ones at most this
# many times: float32 rounding then costs at most ~1e-5 of the variance.
RAW_MOMENT_LIMIT = 32.0


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


def _gather_positions(x: Tensor, pos: Tensor) -> Tensor:
    """Rows ``pos`` of the flattened positions of an (N, C, L) or (M, C) batch, as (k, C)."""
    if x.ndim == 3:
        length = x.shape[2]
        return x[pos // length, :, pos % length]
    return x[pos]


def _gram_blocks(c: int) -> list[int]:
    """Row-block boundaries for a (C, C) Gram matrix: 1, 2 or 3 blocks by width."""
    b = 1 if c < 192 else (2 if c < 384 else 3)
    return [c * i // b for i in range(b + 1)]


def _gram_add_(gram: Tensor, a: Tensor, first: bool) -> None:
    """``gram (+)= a @ a.T``, computing only the blocks on and above the diagonal.

    For wide layers the covariance matmul costs more than the layer itself; the Gram matrix
    is symmetric, so with 3 row blocks 6 of 9 block products suffice (about 25% less time;
    a single block for narrow layers, where smaller products would run less efficiently).
    The blocks below the diagonal are filled in by :func:`_mirror_blocks_`.
    """
    e = _gram_blocks(gram.shape[0])
    if len(e) == 2:
        if first:
            torch.mm(a, a.T, out=gram)
        else:
            gram.addmm_(a, a.T)
        return
    if first:
        gram.zero_()
    for i in range(len(e) - 1):
        for j in range(i, len(e) - 1):
            gram[e[i] : e[i + 1], e[j] : e[j + 1]].addmm_(a[e[i] : e[i + 1]], a[e[j] : e[j + 1]].T)


def _mirror_blocks_(gram: Tensor) -> None:
    """Copy the upper blocks written by :func:`_gram_add_` into the lower ones."""
    e = _gram_blocks(gram.shape[0])
    for i in range(len(e) - 1):
        for j in range(i + 1, len(e) - 1):
            gram[e[j] : e[j + 1], e[i] : e[i + 1]].copy_(gram[e[i] : e[i + 1], e[j] : e[j + 1]].T)


def check_sample(what: str, value: object, fraction: bool = True) -> int | None:
    """Validate a sample setting: a positive int (positions per batch), None (every value) or,
    where ``fraction``, a float in (0, 1]: that share of each batch's positions in blocks,
    every ``round(1 / value)``-th block of 16 positions. Returns that block rate (1: every
    block), or None for an int / None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    if fraction and isinstance(value, float) and 0.0 < value <= 1.0:
        return max(1, round(1.0 / value))
    allowed = "a positive int (positions per batch), a fraction in (0, 1]" if fraction else (
        "a positive int"
    )
    raise ConfigError(f"{what} must be {allowed} or None (all values), got {value!r}")


# A block sample keeps at least this many positions of a batch (all of a smaller one): in
# small feature maps a block spans a whole image, and a few images would be a poor sample.
MIN_LOG_POSITIONS = 4096
MIN_HIST_POSITIONS = 1024


def _block_rate(rate: int | None, n: int, keep: int) -> int:
    """The block rate used for a batch of ``n`` positions: ``rate`` at most, and at least
    ``keep`` positions kept (rate 1: every position). 0 for an int / None setting."""
    if rate is None:
        return 0
    return max(1, min(rate, n // keep))


@dataclass
class _Draw:
    """Where one batch's log moments and histogram come from (see :meth:`RunningStats._draw`).

    ``log_rate``: 1 every position, ``R > 1`` every R-th block from ``log_phase`` on, 0 the
    positions ``log_pos``. The histogram: every ``hist_step``-th position of the log sample
    when set, else the positions ``hist_pos`` when set, else every ``hist_rate``-th block (1:
    every position) from ``hist_phase`` on.
    """

    log_rate: int = 1
    log_phase: int = 0
    log_pos: Tensor | None = None
    hist_rate: int = 1
    hist_phase: int = 0
    hist_pos: Tensor | None = None
    hist_step: int | None = None


class RunningStats:
    """Accumulates :class:`ChannelStats` of one layer over batches of activations.

    ``hist_bins`` / ``hist_scale`` / ``hist_max``: the fixed histogram bins of
    :func:`hist_edges` (``hist_bins`` 0 or None: no histogram). ``sample_per_batch``: at most this many
    positions per batch feed the log moments (None: all of them); ``hist_sample_per_batch``
    the histogram (None: all of those).
    ``cov_sample_per_batch``: at most this many positions per batch feed the off-diagonal
    covariance entries (None: all of them; the diagonal always uses every value).
    ``generator`` draws those positions (seed it for reproducible profiles). ``native``: float32
    batches on the CPU go through the fused C statistics of :mod:`.native` where they can be
    built (the same values as the eager torch path, much faster); False forces the eager path.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        hist_bins: int | None = DEFAULT_HIST_BINS,
        hist_scale: float = DEFAULT_HIST_SCALE,
        hist_max: float = DEFAULT_HIST_MAX,
        covariance: bool = True,
        sample_per_batch: float | None = DEFAULT_SAMPLE_PER_BATCH,
        cov_sample_per_batch: int | None = DEFAULT_COV_SAMPLE_PER_BATCH,
        hist_sample_per_batch: float | None = DEFAULT_HIST_SAMPLE_PER_BATCH,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        scratch: _Scratch | None = None,
        native: bool = True,
    ) -> None:
        check_sample("cov_sample_per_batch", cov_sample_per_batch, fraction=False)
        self._log_rate = check_sample("sample_per_batch", sample_per_batch)
        self._hist_rate = check_sample("hist_sample_per_batch", hist_sample_per_batch)
        c = int(num_channels)
        dev = torch.device(device)
        self.num_channels = c
        self.covariance = covariance
        self.sample_per_batch = sample_per_batch
        self.cov_sample_per_batch = cov_sample_per_batch
        self.hist_sample_per_batch = hist_sample_per_batch
        self.generator = generator
        self.device = dev
        self.native = native
        edges = hist_edges(hist_bins, hist_scale, hist_max) if hist_bins else None
        self.edges = edges
        self._inner_edges = None if edges is None else edges[1:-1].to(dev)
        self._hist_settings = (
            (int(hist_bins or 0), float(hist_scale), float(hist_max)) if edges is not None else None
        )
        self._scratch = scratch if scratch is not None else _Scratch()
        self.batches = 0
        self.subsampled = False  # True once a batch had more positions than sample_per_batch
        self.cov_subsampled = False  # the same for cov_sample_per_batch
        # (n, k) -> (stretch starts, widths) of the stratified samples, per batch shape
        self._strata: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        # Co-moment about a fixed reference (the first batch's mean), so that a batch adds its
        # (C, C) product with no correction term: float32 totals in the activation dtype,
        # folded into float64 every COV_FLUSH_BATCHES batches.
        self._cov_ref: Tensor | None = None
        self._cov_ref_dt: Tensor | None = None  # the same in the sample's dtype
        self._cov_acc: Tensor | None = None
        self._cov_acc64: Tensor | None = None
        self._cov_pending = 0
        self._cov_rows: Tensor | None = None  # sample rows of the last batches, not yet multiplied
        self._cov_used = 0
        z = torch.zeros(c, dtype=F64, device=dev)
        self._totals = ChannelStats(
            count=0.0,
            mean=z.clone(),
            m2=z.clone(),
            comoment=None,  # kept apart, about a fixed reference (see _add_comoment)
            min=torch.full((c,), math.inf, dtype=F64, device=dev),
            max=torch.full((c,), -math.inf, dtype=F64, device=dev),
            zeros=z.clone(),
            log_count=z.clone(),
            log_mean=z.clone(),
            log_m2=z.clone(),
            hist=None
            if edges is None
            else torch.zeros(c, edges.numel() - 1, dtype=F64, device=dev),
            hist_count=None if edges is None else z.clone(),
            cov_count=z.clone() if covariance else None,
        )

    # -- one batch -------------------------------------------------------------------------

    def update(self, x: Tensor, channel_dim: int = 1, name: str = "layer") -> Tensor:
        """Add one batch of activations; returns a 0-d bool tensor, False if any was NaN/Inf.

        The flag is returned rather than checked so that a GPU caller can check it once per
        batch instead of synchronising in every hook.
        """
        x = x.detach()
        if not x.is_floating_point():
            raise ProfileError(
                f"layer {name!r} produced {x.dtype} values; only floating outputs can be profiled"
            )
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # half-precision sums over a batch would overflow or lose all digits
        rows = _as_rows(x, channel_dim, self.num_channels, name)
        v = self._native_view(rows, x)
        if v is not None:
            return self._update_native(v)
        if rows.ndim == 2 and x.ndim >= 3 and rows.shape[0] > x.shape[0]:
            # Channels-last outputs with positions (a ViT's tokens, ConvNeXt's (N, H, W, C)
            # MLP): per-channel reductions down the long columns of an (M, C) view run several
            # times slower than along rows, so the batch is laid out as (N, C, L) once (one
            # copy; measured 2.5x faster for the default statistics of a (12544, 1536) batch).
            rows = rows.view(x.shape[0], -1, self.num_channels).transpose(1, 2).contiguous()
        n = rows.shape[0] * rows.shape[2] if rows.ndim == 3 else rows.shape[0]
        if n == 0:
            return torch.ones((), dtype=torch.bool, device=x.device)
        # An (M, C) batch of linear outputs is one 'image' of M positions: (1, C, M).
        k_cov = self.cov_sample_per_batch
        exact_cov = self.covariance and (k_cov is None or n <= k_cov)
        batch = self._moments_ncl(rows if rows.ndim == 3 else rows.T.unsqueeze(0), exact_cov)
        self._sample_stats(rows, n, batch)
        return self._finish(batch, rows, n, exact_cov)

    def _finish(
        self, batch: ChannelStats, x: Tensor, n: int, exact_cov: bool, sub: Tensor | None = None
    ) -> Tensor:
        """Add the batch's co-moment, fold the batch into the totals, return the finite flag.

        ``sub``: the covariance sample's values when they were already gathered."""
        if self.covariance:
            self._add_comoment(x, n, batch, exact_cov, sub)
            self._totals.cov_count.add_(float(min(n, self.cov_sample_per_batch or n)))  # type: ignore[union-attr]
            batch.comoment = None
        self._accumulate(batch)
        self.batches += 1
        return torch.isfinite(batch.mean).all()

    # -- the fused C statistics (CPU, float32) ------------------------------------------------

    def _native_view(self, rows: Tensor, x: Tensor) -> Tensor | None:
        """The batch as an (N, C, L) view (no copy, channels-last outputs included) when it goes
        through :mod:`.native`, else None (see :meth:`_update_native`)."""
        if not self.native or x.dtype != torch.float32 or x.device.type != "cpu":
            return None
        n = rows.shape[0] * rows.shape[2] if rows.ndim == 3 else rows.shape[0]
        k_cov = self.cov_sample_per_batch
        if n == 0 or (self.covariance and (k_cov is None or n <= k_cov)):
            return None  # the exact covariance of a small batch comes with the eager moments
        if self._hist_settings is not None and _native_bin_table(*self._hist_settings) is None:
            return None
        if rows.ndim == 3:
            v = rows
        elif x.ndim >= 3 and rows.shape[0] > x.shape[0]:  # (N, ..., C) with positions
            v = rows.view(x.shape[0], -1, rows.shape[1]).transpose(1, 2)
        else:  # an (M, C) batch of linear outputs: one image of M positions
            v = rows.T.unsqueeze(0)
        return v if _native.kernels() is not None and _native.supported(v) else None

    def _update_native(self, v: Tensor) -> Tensor:
        """:meth:`update` of an (N, C, L) view with every per-value statistic from the fused C
        kernels: one pass per channel for the moments, the logs, the histogram of its sampled
        positions and the values of the covariance sample.

        The same statistics from the same positions as the eager path (the random draws come in
        the same order), so the two agree up to float rounding.
        """
        num, c, length = v.shape
        n = num * length
        cpu = torch.device("cpu")
        d = self._draw(num, length)
        off = None if d.log_pos is None else _native.offsets(v, d.log_pos)
        hist = None
        if self._inner_edges is not None:
            low, cut = _native_bin_table(*self._hist_settings)  # type: ignore[misc]
            assert self._totals.hist is not None and self._totals.hist.is_contiguous()
            if d.hist_step is not None or d.hist_pos is not None:  # positions, not blocks
                hoff = (
                    off[:: d.hist_step].contiguous()  # type: ignore[index]
                    if d.hist_step is not None
                    else _native.offsets(v, d.hist_pos)  # type: ignore[arg-type]
                )
                hist, count = (0, 0, hoff, low, cut, self._totals.hist), hoff.numel()
            else:
                hist = (d.hist_rate, d.hist_phase, None, low, cut, self._totals.hist)
                count = _native.block_count(num, length, d.hist_rate, d.hist_phase)
            self._totals.hist_count.add_(float(count))  # type: ignore[union-attr]
        cov = None
        if self.covariance:  # a sample: an exact covariance never comes this way
            kc = int(self.cov_sample_per_batch)  # type: ignore[arg-type]
            pos = self._stratified(n, kc, cpu)
            sub = self._scratch.get(kc * c, torch.float32, cpu, "cov_gather").view(kc, c)
            cov = (_native.offsets(v, pos), sub)
        out = _native.moments(v, d.log_rate, d.log_phase, hist=hist, cov=cov)
        if off is not None:
            _native.sample_logs(v, off, out)
        t = self._totals
        finite = _native.merge(  # into the totals in one call; out[0]: the batch means
            out, n, t.count,
            (t.mean, t.m2, t.min, t.max, t.zeros, t.log_count, t.log_mean, t.log_m2),
        )
        if cov is not None:
            self._add_sampled_comoment(n, out[0], cov[1])
            t.cov_count.add_(float(min(n, kc)))  # type: ignore[union-attr]
        t.count += n
        self.batches += 1
        return torch.tensor(finite)

    def _accumulate(self, b: ChannelStats) -> None:
        """Fold one batch into the running totals, in place."""
        _merge_into_(self._totals, b)

    def _phase(self, rate: int) -> int:
        return int(torch.randint(rate, (1,), generator=self.generator))

    def _draw(self, num: int, length: int) -> _Draw:
        """The positions of one (N, C, L) batch behind the log moments and the histogram,
        drawn in a fixed order (logs, then histogram; the covariance after both), so that the
        eager and fused statistics see the same ones."""
        n = num * length
        k = self.sample_per_batch
        d = _Draw()
        log_rate = _block_rate(self._log_rate, n, MIN_LOG_POSITIONS)
        if log_rate > 1:
            self.subsampled = True
            d.log_rate, d.log_phase = log_rate, self._phase(log_rate)
        elif self._log_rate is None and k is not None and 2 * int(k) < n:  # int: positions
            self.subsampled = True
            d.log_rate, d.log_pos = 0, self._stratified(n, int(k), torch.device("cpu"))
        if self._inner_edges is None:
            return d
        if self._hist_rate is not None:
            hist_rate = _block_rate(self._hist_rate, n, MIN_HIST_POSITIONS)
            if hist_rate > 1:
                self.subsampled = True
                d.hist_rate, d.hist_phase = hist_rate, self._phase(hist_rate)
            return d
        kh = self.hist_sample_per_batch
        m = n if d.log_pos is None else d.log_pos.numel()
        if kh is not None and 2 * int(kh) < m:
            self.subsampled = True
            if d.log_pos is None:
                d.hist_pos = self._stratified(n, int(kh), torch.device("cpu"))
            else:  # every m-th position of an equal-probability sample is one as well
                d.hist_step = -(-m // int(kh))
        elif d.log_pos is not None:
            d.hist_step = 1  # the whole log sample
        return d

    def _stratified(self, n: int, k: int, device: torch.device) -> Tensor:
        """``k`` of ``n`` positions: one uniformly from each of ``k`` near-equal stretches.

        Without replacement, spread over every image, and O(k) to draw (a permutation of n
        would be O(n)). The stretches are rotated by a random offset (modulo ``n``) on every
        call: stretches of ``floor(n/k)`` and ``ceil(n/k)`` positions alternate in a fixed
        pattern, and without the rotation the positions in the shorter ones would always be
        drawn more often, the same positions in every batch. With it, every position is drawn
        with probability exactly ``k / n``, so a sample mean is an unbiased estimate of the
        batch mean.
        """
        strata = self._strata.get((n, k))
        if strata is None:  # same batch shape: same stretches
            bounds = (torch.arange(k + 1, dtype=F64) * (n / k)).floor()
            strata = self._strata[(n, k)] = (bounds[:-1], bounds[1:] - bounds[:-1])
        lo, width = strata
        u = torch.rand(k + 1, dtype=F64, generator=self.generator)
        pos = lo.addcmul(u[:k], width).floor_().add_((u[k] * n).floor()).long()
        return pos.remainder_(n).to(device)

    def _add_comoment(
        self, x: Tensor, n: int, batch: ChannelStats, exact: bool, sub: Tensor | None = None
    ) -> None:
        """Add the batch's (C, C) co-moment about the reference to the running totals.

        ``exact``: ``batch.comoment`` holds the co-moment about the batch mean over every
        position. Otherwise an unbiased estimate comes from a sample of
        ``cov_sample_per_batch`` positions, each drawn with probability k / n and weighted by
        n / k; the diagonal is later replaced by the exact sums of squares. ``sub``: the sampled
        positions' values, (k, C), when the caller drew and gathered them.
        """
        c, dev = self.num_channels, x.device
        if self._cov_ref is None:
            self._cov_ref = batch.mean.clone()
        if exact:
            gram = batch.comoment
            assert gram is not None
            delta = batch.mean - self._cov_ref
            if self._cov_acc64 is None:
                self._cov_acc64 = torch.zeros(c, c, dtype=F64, device=dev)
            self._cov_acc64.add_(gram).addr_(delta, delta, alpha=batch.count)
            return
        if sub is None:
            k = int(self.cov_sample_per_batch or n)
            sub = _gather_positions(x, self._stratified(n, k, dev))  # (k, C)
        self._add_sampled_comoment(n, batch.mean, sub)

    def _add_sampled_comoment(self, n: int, mean: Tensor, sub: Tensor) -> None:
        """Add the product of ``sub``'s k sampled positions of a batch of ``n`` (whose channel
        means are ``mean``), weighted by n / k (see :meth:`_add_comoment`)."""
        c, dev, k = self.num_channels, sub.device, sub.shape[0]
        if self._cov_ref is None:
            self._cov_ref = mean.clone()
        self.cov_subsampled = True
        dt = sub.dtype
        if self._cov_acc is None or self._cov_acc.dtype != dt:
            self._flush_comoment()
            self._cov_acc = torch.zeros(c, c, dtype=dt, device=dev)
            self._cov_rows = torch.empty(COV_GEMM_BATCHES * k, c, dtype=dt, device=dev)
        assert self._cov_rows is not None
        if self._cov_used + k > self._cov_rows.shape[0]:
            self._gemm_rows()
        d = self._cov_rows[self._cov_used : self._cov_used + k]
        if self._cov_ref_dt is None or self._cov_ref_dt.dtype != dt:
            self._cov_ref_dt = self._cov_ref.to(dt)
        torch.sub(sub, self._cov_ref_dt, out=d).mul_(math.sqrt(n / k))
        self._cov_used += k
        self._cov_pending += 1
        if self._cov_pending >= COV_FLUSH_BATCHES:
            self._flush_comoment()

    def _gemm_rows(self) -> None:
        """Add the buffered sample rows' product to the float32 co-moment (upper blocks;
        mirrored when finished): one product over several batches' rows runs several times
        faster than one per batch, whose (C, C) result would be read and written each time."""
        if self._cov_used:
            assert self._cov_acc is not None and self._cov_rows is not None
            _gram_add_(self._cov_acc, self._cov_rows[: self._cov_used].T, first=False)
            self._cov_used = 0

    def _flush_comoment(self) -> None:
        if self._cov_acc is not None and self._cov_pending:
            self._gemm_rows()
            if self._cov_acc64 is None:  # created here, not zeroed up front: a pass saved
                self._cov_acc64 = self._cov_acc.to(F64)
            else:
                self._cov_acc64.add_(self._cov_acc)
            self._cov_acc.zero_()
        self._cov_pending = 0

    def _moments_ncl(self, x: Tensor, with_gram: bool | None = None) -> ChannelStats:
        """Moments of an (N, C, L) batch: per-image centred two-pass partials, then combined.

        Each image is centred on its own mean, so that every statistic of a chunk of images is
        computed while the chunk is in cache (one pass over memory instead of two). The images
        are combined exactly with the parallel-variance identity
        ``M2 = sum_i M2_i + L * sum_i (m_i - m)(m_i - m)^T``.
        The covariance comes back in the activation dtype in a scratch buffer (valid until the
        next layer's update), to be added into the float64 totals by :meth:`_accumulate`.
        """
        if with_gram is None:
            with_gram = self.covariance
        num, c, length = x.shape
        if not with_gram and length < SMALL_MAP and x.is_contiguous():
            return self._moments_small_maps(x)
        dt, dev = x.dtype, x.device
        n = num * length
        sums = torch.empty(num, c, dtype=dt, device=dev)
        mins, maxs, nonzero = torch.empty_like(sums), torch.empty_like(sums), torch.empty_like(sums)
        # On the CPU each intra-op thread gets about CHUNK_ELEMS of the chunk; elsewhere (GPU)
        # cache blocking does not pay for the extra kernel launches.
        chunk = CHUNK_ELEMS * max(1, torch.get_num_threads())
        step = num if dev.type != "cpu" else max(1, min(num, chunk // (c * length)))
        work = self._scratch.get(step * c * length, dt, dev)
        gram = self._scratch.get(c * c, dt, dev, "gram").view(c, c) if with_gram else None
        sq = None if gram is not None else torch.empty_like(sums)
        # Narrow layers with large maps: one small matmul per image (bmm) keeps every intra-op
        # thread busy, where a single (C, k*L) x (k*L, C) product with C <= 64 scales poorly
        # across threads (measured 1.4x faster with 2 threads, the same with 1).
        per_image = None
        if gram is not None and dev.type == "cpu" and c < 128 and length >= 256:
            per_image = self._scratch.get(step * c * c, dt, dev, "per_image")
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
            m2 = self._m2_from_raw(x, sums, sq, mean64)  # type: ignore[arg-type]
        return ChannelStats(
            count=float(n),
            mean=mean64,
            m2=m2,
            comoment=gram,
            min=mins.amin(0).to(F64),
            max=maxs.amax(0).to(F64),
            zeros=n - nonzero.to(F64).sum(0),
        )

    def _moments_small_maps(self, x: Tensor) -> ChannelStats:
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
        work = self._scratch.get(flat.numel(), x.dtype, x.device).view(num, c * length)
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
        return ChannelStats(
            count=float(n), mean=mean, m2=m2, min=mins, max=maxs, zeros=n - nonzero
        )

    @staticmethod
    def _m2_from_raw(x: Tensor, sums: Tensor, norms: Tensor, mean: Tensor) -> Tensor:
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

    def _sample_stats(self, x: Tensor, n: int, out: ChannelStats) -> None:
        """Log moments and histogram counts on stratified subsamples of positions.

        The positions come from :meth:`_draw` (the same draws as the fused statistics). A
        batch with at most twice as many positions as an int sample is used whole, in its own
        layout: gathering scattered positions costs more per value than the statistics
        themselves.
        """
        c = self.num_channels
        num, length = (x.shape[0], x.shape[2]) if x.ndim == 3 else (1, x.shape[0])
        draw = self._draw(num, length)
        if draw.log_rate == 1:
            v = x  # (N, C, L) or (M, C): every position
        else:
            pos = draw.log_pos if draw.log_pos is not None else _native.block_positions(
                num, length, draw.log_rate, draw.log_phase)
            v = _gather_positions(x, pos.to(x.device))  # (k, C)
        m = n if v is x else v.shape[0]
        dims: tuple[int, ...] = (0, 2) if v.ndim == 3 else (0,)
        shape, size, dt, dev = v.shape, v.numel(), v.dtype, v.device

        def buf(name: str, dtype: torch.dtype = dt) -> Tensor:
            return self._scratch.get(size, dtype, dev, name).view(shape)

        # Logs in the activation dtype (relative error ~1e-7, far below sampling noise). A zero
        # gets log(0 + 1) = 0, so it adds nothing to the sums of logs and no -inf appears
        # (log(0) is also a slow path on the CPU); the zeros are counted to leave them out.
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
        out.log_count, out.log_mean, out.log_m2 = cnt, lmean, m2
        if self._inner_edges is not None:
            if draw.hist_step is not None:  # every m-th of the log sample
                hv = v[:: draw.hist_step]
            elif draw.hist_pos is not None:
                hv = _gather_positions(x, draw.hist_pos.to(x.device))
            elif draw.hist_rate > 1:
                hv = _gather_positions(x, _native.block_positions(
                    num, length, draw.hist_rate, draw.hist_phase).to(x.device))
            else:
                hv = x
            hv = hv.contiguous()

            def hbuf(name: str, dtype: torch.dtype = dt) -> Tensor:
                return self._scratch.get(hv.numel(), dtype, dev, "hist_" + name).view(hv.shape)

            idx = self._bin_index(hv, hbuf)
            bins = self._inner_edges.numel() + 1
            offsets = torch.arange(c, device=dev, dtype=idx.dtype) * bins
            idx += offsets.view((1, -1) + (1,) * (hv.ndim - 2))
            hist = self._totals.hist
            assert hist is not None
            counts = torch.bincount(idx.view(-1), minlength=hist.numel())
            hist.view(-1).add_(counts)
            self._totals.hist_count.add_(float(hv.numel() // c))  # type: ignore[union-attr]

    def _bin_index(self, v: Tensor, buf: Callable[..., Tensor] | None = None) -> Tensor:
        """Bin of each value: ``i`` with ``edges[i] <= v < edges[i+1]``, end bins open-ended.

        Exactly ``bucketize`` against the float64 edges. For float32 on the CPU, where a binary
        search per value is slow, the bin is read from tables indexed by the upper 16 bits of the
        float (see :func:`_float32_bin_table`): two lookups and one comparison per value.
        ``buf(name, dtype)`` hands out work buffers shaped like ``v``.
        """
        inner = self._inner_edges
        if inner is None or self._hist_settings is None:
            raise ProfileError("no histogram bins configured")
        tables = _float32_bin_table(*self._hist_settings)
        if v.dtype != torch.float32 or v.device.type != "cpu" or tables is None:
            return torch.bucketize(v.to(F64), inner, right=True)
        if buf is None:

            def buf(name: str, dtype: torch.dtype = v.dtype) -> Tensor:
                return torch.empty(v.shape, dtype=dtype, device=v.device)

        low, cut = tables
        flat = v.contiguous().view(-1)
        key = buf("key", torch.int32).view(-1)
        if sys.byteorder == "little":  # the upper 16 bits are the second int16 half
            key.copy_(flat.view(torch.int16).view(-1, 2)[:, 1])
        else:
            torch.bitwise_right_shift(flat.view(torch.int32), 16, out=key)
        key.add_(32768)
        out = torch.index_select(low, 0, key, out=buf("bin", torch.int32).view(-1))
        cuts = torch.index_select(cut, 0, key, out=buf("cut", torch.float32).view(-1))
        out.add_(torch.ge(flat, cuts, out=buf("above", torch.bool).view(-1)))
        return out.view(v.shape)

    # -- results ---------------------------------------------------------------------------

    def to_layer_profile(
        self, name: str, kind: str, params: dict[str, tuple[int, ...]]
    ) -> LayerProfile:
        """Finished statistics on the CPU as a :class:`LayerProfile`."""
        n = self._totals.count
        s = self._finished(1.0 / n if n > 0 else 1.0)
        return to_layer_profile(s, name, kind, params, self.edges, _owned=True, _cov_scaled=True)

    @property
    def count(self) -> float:
        """Values per channel so far (cheap: no statistic is finished)."""
        return self._totals.count

    @property
    def stats(self) -> ChannelStats:
        """The statistics so far, with the co-moment about the mean (a new object each time)."""
        return self._finished(1.0)

    def _finished(self, scale: float) -> ChannelStats:
        """:attr:`stats` with the co-moment times ``scale`` (``1 / count``: the covariance)."""
        out = dataclasses.replace(self._totals)
        if not self.covariance:
            return out
        c = self.num_channels
        if self._cov_ref is None:
            out.comoment = torch.zeros(c, c, dtype=F64, device=self.device)
            return out
        # The float64 totals plus the float32 products not yet added to them (the state is
        # left as it is), centred and scaled, the blocks below the diagonal mirrored: one pass
        # in the C kernels (native.cov_finish), else two and a third in torch; the diagonal is
        # the exact sum of squares.
        self._gemm_rows()
        a32, a64 = (self._cov_acc if self._cov_pending else None), self._cov_acc64
        delta = self._totals.mean - self._cov_ref
        if (
            a32 is not None and a32.dtype == torch.float32 and a32.device.type == "cpu"
            and _native.kernels() is not None
        ):
            acc = _native.cov_finish(a32, a64, delta, self._totals.count, scale)
        else:
            if a32 is not None:
                acc = a32.to(F64)
                if a64 is not None:
                    acc.add_(a64)  # measured 6x faster than a64 + a32
            else:
                assert a64 is not None
                acc = a64.clone()
            _mirror_blocks_(acc)
            acc.addr_(delta, delta, beta=scale, alpha=-self._totals.count * scale)
        acc.diagonal().copy_(self._totals.m2 * scale)
        out.comoment = acc
        return out


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
