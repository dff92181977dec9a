"""Which positions of a batch feed the sampled statistics (log moments, histogram, covariance).

Count, mean, variance, min/max and the zero fraction always use every value. The log moments
take a quarter of the positions of each batch by default, in blocks of 16 consecutive
positions (every 4th block from a random one on; at least MIN_LOG_POSITIONS positions of a
batch), because a log costs far more per value than a sum and a block is read where the pass
over the batch already has it; the histogram 1,024 stratified random positions of each batch
(every position of a batch of at most 2,048); the off-diagonal covariance entries
``cov_sample_per_batch`` stratified random positions. A fraction setting takes that share of
the blocks instead, an int that many stratified random positions.

Every subsample draws each position with the same probability, so sample means are unbiased
estimates of the batch's. The draws come in a fixed order (logs, histogram, covariance), so
that the eager and the fused C statistics see the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError

F64 = torch.float64

# The log moments: a quarter of the positions of every batch, in blocks of 16 (see
# block_positions in native.py); the histogram: 1,024 stratified random positions a batch.
DEFAULT_SAMPLE_PER_BATCH: int | float | None = 0.25
DEFAULT_HIST_SAMPLE_PER_BATCH: int | float | None = 1024


def gather_positions(x: Tensor, pos: Tensor) -> Tensor:
    """Rows ``pos`` of the flattened positions of an (N, C, L) or (M, C) batch, as (k, C)."""
    if x.ndim == 3:
        length = x.shape[2]
        return x[pos // length, :, pos % length]
    return x[pos]


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
    allowed = (
        "a positive int (positions per batch), a fraction in (0, 1]"
        if fraction
        else ("a positive int")
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
class Draw:
    """Where one batch's log moments and histogram come from (see :meth:`Sampler.draw`).

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


class Sampler:
    """Draws the sampled positions of each batch for one layer.

    ``sample_per_batch`` / ``hist_sample_per_batch``: the log moments' and the histogram's
    settings (see :func:`check_sample`); ``histogram``: whether a histogram is kept at all;
    ``generator`` seeds the draws.
    """

    def __init__(
        self,
        sample_per_batch: float | None,
        hist_sample_per_batch: float | None,
        histogram: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.log_rate = check_sample("sample_per_batch", sample_per_batch)
        self.hist_rate = check_sample("hist_sample_per_batch", hist_sample_per_batch)
        self.sample_per_batch = sample_per_batch
        self.hist_sample_per_batch = hist_sample_per_batch
        self.histogram = histogram
        self.generator = generator
        self.subsampled = False  # True once a batch had more positions than its sample
        # (n, k) -> (stretch starts, widths) of the stratified samples, per batch shape
        self._strata: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def phase(self, rate: int) -> int:
        return int(torch.randint(rate, (1,), generator=self.generator))

    def draw(self, num: int, length: int) -> Draw:
        """The positions of one (N, C, L) batch behind the log moments and the histogram,
        drawn in a fixed order (logs, then histogram; the covariance after both), so that the
        eager and fused statistics see the same ones."""
        n = num * length
        k = self.sample_per_batch
        d = Draw()
        log_rate = _block_rate(self.log_rate, n, MIN_LOG_POSITIONS)
        if log_rate > 1:
            self.subsampled = True
            d.log_rate, d.log_phase = log_rate, self.phase(log_rate)
        elif self.log_rate is None and k is not None and 2 * int(k) < n:  # int: positions
            self.subsampled = True
            d.log_rate, d.log_pos = 0, self.stratified(n, int(k), torch.device("cpu"))
        if not self.histogram:
            return d
        if self.hist_rate is not None:
            hist_rate = _block_rate(self.hist_rate, n, MIN_HIST_POSITIONS)
            if hist_rate > 1:
                self.subsampled = True
                d.hist_rate, d.hist_phase = hist_rate, self.phase(hist_rate)
            return d
        kh = self.hist_sample_per_batch
        m = n if d.log_pos is None else d.log_pos.numel()
        if kh is not None and 2 * int(kh) < m:
            self.subsampled = True
            if d.log_pos is None:
                d.hist_pos = self.stratified(n, int(kh), torch.device("cpu"))
            else:  # every m-th position of an equal-probability sample is one as well
                d.hist_step = -(-m // int(kh))
        elif d.log_pos is not None:
            d.hist_step = 1  # the whole log sample
        return d

    def stratified(self, n: int, k: int, device: torch.device) -> Tensor:
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


# Kept for code written against the previous private name.
_Draw = Draw
