"""Streaming per-channel statistics of one layer's activations.

:class:`RunningStats` sees one batch of activations at a time and folds it into running
totals; the statistics themselves live in :mod:`.moments` (count, mean, variance, min/max,
zeros, log moments; Chan's merge), :mod:`.sampling` (which positions feed the sampled
statistics), :mod:`.histograms` (fixed bins) and :mod:`.covariance` (the (C, C) co-moment).
Which of them a layer computes, and the sample sizes, come from one
:class:`~smart_transfer.stats.config.StatsConfig`. Float32 batches on the CPU go through the
fused C statistics of :mod:`.native` where they can be built (the same values from the same
positions as the eager torch path).

The names that lived here before the split are re-exported below, so ``from
smart_transfer.stats.running import ...`` keeps working.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, ProfileError
from . import native as _native
from .config import StatsConfig
from .covariance import (
    COV_FLUSH_BATCHES,
    COV_GEMM_BATCHES,
    DEFAULT_COV_SAMPLE_PER_BATCH,
    CoMoment,
    _gram_add_,
    _gram_blocks,
    _mirror_blocks_,
)
from .histograms import (
    DEFAULT_HIST_BINS,
    DEFAULT_HIST_MAX,
    DEFAULT_HIST_SCALE,
    _float32_bin_table,
    _native_bin_table,
    add_counts_,
    bin_index,
    hist_edges,
)
from .moments import (
    CHUNK_ELEMS,
    RAW_MOMENT_LIMIT,
    SMALL_MAP,
    ChannelStats,
    Scratch,
    _as_rows,
    _channel_sum,
    _merge_into_,
    _merge_vec,
    _Scratch,
    from_layer_profile,
    log_moments,
    merge_stats,
    moments_ncl,
    to_layer_profile,
)
from .profile import LayerProfile
from .sampling import (
    DEFAULT_HIST_SAMPLE_PER_BATCH,
    DEFAULT_SAMPLE_PER_BATCH,
    MIN_HIST_POSITIONS,
    MIN_LOG_POSITIONS,
    Sampler,
    _block_rate,
    _Draw,
    check_sample,
    gather_positions,
)

__all__ = [
    "CHUNK_ELEMS",
    "COV_FLUSH_BATCHES",
    "COV_GEMM_BATCHES",
    "DEFAULT_COV_SAMPLE_PER_BATCH",
    "DEFAULT_HIST_BINS",
    "DEFAULT_HIST_MAX",
    "DEFAULT_HIST_SAMPLE_PER_BATCH",
    "DEFAULT_HIST_SCALE",
    "DEFAULT_SAMPLE_PER_BATCH",
    "MIN_HIST_POSITIONS",
    "MIN_LOG_POSITIONS",
    "RAW_MOMENT_LIMIT",
    "SMALL_MAP",
    "ChannelStats",
    "RunningStats",
    "Scratch",
    "StatsConfig",
    "_Draw",
    "_Scratch",
    "_as_rows",
    "_block_rate",
    "_channel_sum",
    "_float32_bin_table",
    "_gram_add_",
    "_gram_blocks",
    "_merge_into_",
    "_merge_vec",
    "_mirror_blocks_",
    "_native_bin_table",
    "check_sample",
    "from_layer_profile",
    "hist_edges",
    "merge_stats",
    "to_layer_profile",
]

F64 = torch.float64
_gather_positions = gather_positions  # the previous private name

# The individual keyword arguments of RunningStats / profile and their defaults; a config
# passed as well must not be contradicted by one of them.
LEGACY_DEFAULTS: dict[str, Any] = {
    "hist_bins": DEFAULT_HIST_BINS,
    "hist_scale": DEFAULT_HIST_SCALE,
    "hist_max": DEFAULT_HIST_MAX,
    "covariance": True,
    "sample_per_batch": DEFAULT_SAMPLE_PER_BATCH,
    "cov_sample_per_batch": DEFAULT_COV_SAMPLE_PER_BATCH,
    "hist_sample_per_batch": DEFAULT_HIST_SAMPLE_PER_BATCH,
}


def resolve_config(config: StatsConfig | None, seed: int = 0, **settings: Any) -> StatsConfig:
    """``config``, or the config of the individual settings (``profile``'s and
    ``RunningStats``'s keyword arguments) when it is None; both at once is refused unless the
    settings are all at their defaults."""
    if config is None:
        return StatsConfig.from_settings(seed=int(seed), **settings)
    if not isinstance(config, StatsConfig):
        raise ConfigError(f"config must be a StatsConfig, got {type(config).__name__}")
    changed = [k for k, v in settings.items() if v != LEGACY_DEFAULTS[k]]
    if changed:
        raise ConfigError(
            f"pass the sampling settings either in config=StatsConfig(...) or as keyword "
            f"arguments, not both ({', '.join(changed)} given beside config); move them into "
            "the StatsConfig"
        )
    return config


class RunningStats:
    """Accumulates :class:`ChannelStats` of one layer over batches of activations.

    ``config``: the statistics and their sampling (:class:`StatsConfig`); the individual
    keyword arguments are the same settings (``hist_bins`` 0 or None: no histogram;
    ``covariance=False``: no covariance), used when ``config`` is None. ``generator`` draws the
    sampled positions (seed it for reproducible profiles). ``native``: float32 batches on the
    CPU go through the fused C statistics of :mod:`.native` where they can be built (the same
    values as the eager torch path, much faster); False forces the eager path.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        config: StatsConfig | None = None,
        hist_bins: int | None = DEFAULT_HIST_BINS,
        hist_scale: float = DEFAULT_HIST_SCALE,
        hist_max: float = DEFAULT_HIST_MAX,
        covariance: bool = True,
        sample_per_batch: float | None = DEFAULT_SAMPLE_PER_BATCH,
        cov_sample_per_batch: int | None = DEFAULT_COV_SAMPLE_PER_BATCH,
        hist_sample_per_batch: float | None = DEFAULT_HIST_SAMPLE_PER_BATCH,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        scratch: Scratch | None = None,
        native: bool = True,
    ) -> None:
        cfg = resolve_config(
            config,
            hist_bins=hist_bins,
            hist_scale=hist_scale,
            hist_max=hist_max,
            covariance=covariance,
            sample_per_batch=sample_per_batch,
            cov_sample_per_batch=cov_sample_per_batch,
            hist_sample_per_batch=hist_sample_per_batch,
        )
        c = int(num_channels)
        dev = torch.device(device)
        self.config = cfg
        self.num_channels = c
        self.covariance = cfg.covariance
        self.sample_per_batch = cfg.sample_per_batch
        self.cov_sample_per_batch = cfg.cov_sample_per_batch
        self.hist_sample_per_batch = cfg.hist_sample_per_batch
        self.generator = generator
        self.device = dev
        self.native = native
        self.used_native = False  # True once a batch went through the fused C statistics
        self.used_eager = False  # True once a batch went through the eager torch statistics
        edges = hist_edges(cfg.hist_bins, cfg.hist_scale, cfg.hist_max) if cfg.histogram else None
        self.edges = edges
        self._inner_edges = None if edges is None else edges[1:-1].to(dev)
        self._hist_settings = (
            (int(cfg.hist_bins), float(cfg.hist_scale), float(cfg.hist_max))
            if edges is not None
            else None
        )
        self._scratch = scratch if scratch is not None else Scratch()
        self._sampler = Sampler(
            cfg.sample_per_batch, cfg.hist_sample_per_batch, edges is not None, generator
        )
        self._comoment = CoMoment(c, dev)
        self.batches = 0
        self._totals = self._empty_totals(c, dev, edges)

    def _empty_totals(self, c: int, dev: torch.device, edges: Tensor | None) -> ChannelStats:
        z = torch.zeros(c, dtype=F64, device=dev)
        logs = self.config.logs
        return ChannelStats(
            count=0.0,
            mean=z.clone(),
            m2=z.clone(),
            comoment=None,  # kept apart, about a fixed reference (see covariance.CoMoment)
            min=torch.full((c,), math.inf, dtype=F64, device=dev),
            max=torch.full((c,), -math.inf, dtype=F64, device=dev),
            zeros=z.clone(),
            log_count=z.clone() if logs else None,
            log_mean=z.clone() if logs else None,
            log_m2=z.clone() if logs else None,
            hist=None
            if edges is None
            else torch.zeros(c, edges.numel() - 1, dtype=F64, device=dev),
            hist_count=None if edges is None else z.clone(),
            cov_count=z.clone() if self.covariance else None,
        )

    @property
    def subsampled(self) -> bool:
        """True once a batch had more positions than sample_per_batch (or the histogram's)."""
        return self._sampler.subsampled

    @property
    def cov_subsampled(self) -> bool:
        """True once a batch's off-diagonal covariance came from a sample."""
        return self._comoment.subsampled

    @property
    def engine(self) -> str | None:
        """``"native"`` / ``"eager"``: the path every batch so far took, ``"mixed"`` when both
        did, None before the first batch."""
        if self.used_native and self.used_eager:
            return "mixed"
        return "native" if self.used_native else ("eager" if self.used_eager else None)

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
        batch = moments_ncl(
            rows if rows.ndim == 3 else rows.T.unsqueeze(0), self._scratch, exact_cov
        )
        self.used_eager = True
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
        _merge_into_(self._totals, batch)
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
        d = self._sampler.draw(num, length)
        off = None if d.log_pos is None else _native.offsets(v, d.log_pos)
        logs = d.log_rate if self.config.logs else 0
        hist = None
        if self._inner_edges is not None and self._totals.hist is not None:
            low, cut = _native_bin_table(*self._hist_settings)  # type: ignore[misc]
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
            pos = self._sampler.stratified(n, kc, cpu)
            sub = self._scratch.get(kc * c, torch.float32, cpu, "cov_gather").view(kc, c)
            cov = (_native.offsets(v, pos), sub)
        out = _native.moments(v, logs, d.log_phase, hist=hist, cov=cov)
        if off is not None and self.config.logs:
            _native.sample_logs(v, off, out)
        t = self._totals
        finite = _native.merge(  # into the totals in one call; out[0]: the batch means
            out,
            n,
            t.count,
            (t.mean, t.m2, t.min, t.max, t.zeros, t.log_count, t.log_mean, t.log_m2),
        )
        if cov is not None:
            self._comoment.add_sampled(n, out[0], cov[1])
            t.cov_count.add_(float(min(n, kc)))  # type: ignore[union-attr]
        t.count += n
        self.used_native = True
        self.batches += 1
        return torch.tensor(finite)

    def _add_comoment(
        self, x: Tensor, n: int, batch: ChannelStats, exact: bool, sub: Tensor | None = None
    ) -> None:
        """Add the batch's (C, C) co-moment about the reference to the running totals.

        ``exact``: ``batch.comoment`` holds the co-moment about the batch mean over every
        position. Otherwise an unbiased estimate comes from a sample of
        ``cov_sample_per_batch`` positions (:meth:`CoMoment.add_sampled`). ``sub``: the sampled
        positions' values, (k, C), when the caller drew and gathered them.
        """
        if exact:
            if batch.comoment is None:
                raise ProfileError("an exact covariance was asked of a batch without one")
            self._comoment.add_exact(batch.comoment, batch.mean, batch.count)
            return
        if sub is None:
            k = int(self.cov_sample_per_batch or n)
            sub = gather_positions(x, self._sampler.stratified(n, k, x.device))  # (k, C)
        self._comoment.add_sampled(n, batch.mean, sub)

    def _sample_stats(self, x: Tensor, n: int, out: ChannelStats) -> None:
        """Log moments and histogram counts on stratified subsamples of positions.

        The positions come from :meth:`Sampler.draw` (the same draws as the fused statistics).
        A batch with at most twice as many positions as an int sample is used whole, in its
        own layout: gathering scattered positions costs more per value than the statistics
        themselves.
        """
        num, length = (x.shape[0], x.shape[2]) if x.ndim == 3 else (1, x.shape[0])
        draw = self._sampler.draw(num, length)
        if draw.log_rate == 1:
            v = x  # (N, C, L) or (M, C): every position
        else:
            pos = (
                draw.log_pos
                if draw.log_pos is not None
                else _native.block_positions(num, length, draw.log_rate, draw.log_phase)
            )
            v = gather_positions(x, pos.to(x.device))  # (k, C)
        if self.config.logs:
            m = n if v is x else v.shape[0]
            out.log_count, out.log_mean, out.log_m2 = log_moments(v, m, self._buffers(v, ""))
        if self._inner_edges is not None:
            hv = self._hist_values(x, v, draw, num, length)
            hist, hist_count = self._totals.hist, self._totals.hist_count
            if hist is None or hist_count is None:
                raise ProfileError("histogram totals missing")  # unreachable: set with edges
            hist_count.add_(
                add_counts_(
                    hist, hv, self._inner_edges, self._hist_settings, self._buffers(hv, "hist_")
                )
            )

    def _hist_values(self, x: Tensor, v: Tensor, draw: _Draw, num: int, length: int) -> Tensor:
        """The histogram's positions of the batch ``x`` (``v``: the log moments' sample)."""
        if draw.hist_step is not None:  # every m-th of the log sample
            hv = v[:: draw.hist_step]
        elif draw.hist_pos is not None:
            hv = gather_positions(x, draw.hist_pos.to(x.device))
        elif draw.hist_rate > 1:
            hv = gather_positions(
                x,
                _native.block_positions(num, length, draw.hist_rate, draw.hist_phase).to(x.device),
            )
        else:
            hv = x
        return hv.contiguous()

    def _buffers(self, v: Tensor, prefix: str) -> Callable[..., Tensor]:
        """``buf(name, dtype)``: a reused work buffer shaped like ``v``."""
        shape, size, dt, dev = v.shape, v.numel(), v.dtype, v.device

        def buf(name: str, dtype: torch.dtype = dt) -> Tensor:
            return self._scratch.get(size, dtype, dev, prefix + name).view(shape)

        return buf

    def _bin_index(self, v: Tensor, buf: Callable[..., Tensor] | None = None) -> Tensor:
        """Bin of each value (see :func:`.histograms.bin_index`)."""
        if self._inner_edges is None or self._hist_settings is None:
            raise ProfileError("no histogram bins configured")
        return bin_index(v, self._inner_edges, self._hist_settings, buf)

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
        if self.covariance:
            t = self._totals
            out.comoment = self._comoment.finished(t.mean, t.count, t.m2, scale)
        return out
