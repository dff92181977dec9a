"""The (C, C) channel covariance of a layer, accumulated over batches.

Its diagonal is the exact variance (every value, :mod:`.moments`); the off-diagonal entries
come from a stratified random subsample of at most ``cov_sample_per_batch`` positions per
batch (every position when the batch has no more), centred on a fixed reference and weighted
by the inverse inclusion probability, so the estimate is unbiased. A (C, C) product costs C
times more per position than any per-channel statistic, and for the wide layers of mobile
networks it would cost several times the network's own forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import native as _native

F64 = torch.float64

# Positions per batch behind the off-diagonal covariance entries (see the module docstring).
DEFAULT_COV_SAMPLE_PER_BATCH = 128
# Batches whose sampled (C, C) products are summed in the activation dtype before they are
# added to the float64 totals (fewer passes over a matrix that can be as large as a batch).
COV_FLUSH_BATCHES = 16
# Batches whose covariance sample rows go into one (C, C) product.
COV_GEMM_BATCHES = 4


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


class CoMoment:
    """The co-moment of one layer about a fixed reference (the first batch's mean).

    About a fixed reference a batch adds its (C, C) product with no correction term: float32
    totals in the activation dtype, folded into float64 every COV_FLUSH_BATCHES batches, the
    sample rows of COV_GEMM_BATCHES batches multiplied at once.
    """

    def __init__(self, num_channels: int, device: torch.device) -> None:
        self.num_channels = num_channels
        self.device = device
        self.subsampled = False  # True once a batch's product came from a sample
        self._ref: Tensor | None = None
        self._ref_dt: Tensor | None = None  # the same in the sample's dtype
        self._acc: Tensor | None = None
        self._acc64: Tensor | None = None
        self._pending = 0
        self._rows: Tensor | None = None  # sample rows of the last batches, not yet multiplied
        self._used = 0

    def add_exact(self, gram: Tensor, mean: Tensor, count: float) -> None:
        """Add a batch's co-moment ``gram`` about its own ``mean`` over every position."""
        c = self.num_channels
        if self._ref is None:
            self._ref = mean.clone()
        delta = mean - self._ref
        if self._acc64 is None:
            self._acc64 = torch.zeros(c, c, dtype=F64, device=gram.device)
        self._acc64.add_(gram).addr_(delta, delta, alpha=count)

    def add_sampled(self, n: int, mean: Tensor, sub: Tensor) -> None:
        """Add the product of ``sub``'s k sampled positions of a batch of ``n`` (whose channel
        means are ``mean``), each drawn with probability k / n and weighted by n / k; the
        diagonal is later replaced by the exact sums of squares."""
        c, dev, k = self.num_channels, sub.device, sub.shape[0]
        if self._ref is None:
            self._ref = mean.clone()
        self.subsampled = True
        dt = sub.dtype
        if self._acc is None or self._acc.dtype != dt:
            self.flush()
            self._acc = torch.zeros(c, c, dtype=dt, device=dev)
            self._rows = torch.empty(COV_GEMM_BATCHES * k, c, dtype=dt, device=dev)
        if self._rows is None:
            raise RuntimeError("covariance row buffer missing")  # unreachable: set with _acc
        if self._used + k > self._rows.shape[0]:
            self.gemm_rows()
        d = self._rows[self._used : self._used + k]
        if self._ref_dt is None or self._ref_dt.dtype != dt:
            self._ref_dt = self._ref.to(dt)
        torch.sub(sub, self._ref_dt, out=d).mul_(math.sqrt(n / k))
        self._used += k
        self._pending += 1
        if self._pending >= COV_FLUSH_BATCHES:
            self.flush()

    def gemm_rows(self) -> None:
        """Add the buffered sample rows' product to the float32 co-moment (upper blocks;
        mirrored when finished): one product over several batches' rows runs several times
        faster than one per batch, whose (C, C) result would be read and written each time."""
        if self._used and self._acc is not None and self._rows is not None:
            _gram_add_(self._acc, self._rows[: self._used].T, first=False)
            self._used = 0

    def flush(self) -> None:
        """Fold the float32 co-moment into the float64 one."""
        if self._acc is not None and self._pending:
            self.gemm_rows()
            if self._acc64 is None:  # created here, not zeroed up front: a pass saved
                self._acc64 = self._acc.to(F64)
            else:
                self._acc64.add_(self._acc)
            self._acc.zero_()
        self._pending = 0

    def finished(self, mean: Tensor, count: float, m2: Tensor, scale: float) -> Tensor:
        """The co-moment about ``mean`` (the totals' mean over ``count`` values) times
        ``scale``, with the diagonal ``m2 * scale``; the state is left as it is.

        The float64 totals plus the float32 products not yet added to them, centred and
        scaled, the blocks below the diagonal mirrored: one pass in the C kernels
        (native.cov_finish), else two and a third in torch; the diagonal is the exact sum of
        squares."""
        c = self.num_channels
        if self._ref is None:
            return torch.zeros(c, c, dtype=F64, device=self.device)
        self.gemm_rows()
        a32, a64 = (self._acc if self._pending else None), self._acc64
        delta = mean - self._ref
        if (
            a32 is not None
            and a32.dtype == torch.float32
            and a32.device.type == "cpu"
            and _native.kernels() is not None
        ):
            acc = _native.cov_finish(a32, a64, delta, count, scale)
        else:
            if a32 is not None:
                acc = a32.to(F64)
                if a64 is not None:
                    acc.add_(a64)  # measured 6x faster than a64 + a32
            elif a64 is not None:
                acc = a64.clone()
            else:
                acc = torch.zeros(c, c, dtype=F64, device=self.device)
            _mirror_blocks_(acc)
            acc.addr_(delta, delta, beta=scale, alpha=-count * scale)
        acc.diagonal().copy_(m2 * scale)
        return acc
