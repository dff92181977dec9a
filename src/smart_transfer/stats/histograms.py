"""Fixed-bin histograms of activations: the bin edges and the bin of each value.

The edges depend only on the settings, never on the data, so histograms of two profiles made
with the same settings line up bin by bin and merge by adding counts. The histogram itself is
fed from a sample of each batch's positions (:mod:`.sampling`).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError, ProfileError

F64 = torch.float64

# Histogram defaults: bins uniform in asinh(x / scale) between -asinh(max/scale) and
# +asinh(max/scale). Near zero the bins are linear (width ~ scale), far from zero they are
# logarithmic (each bin ~25% wider than the last with 128 bins), so one fixed set of edges
# resolves both small and large activations of any layer without looking at the data.
DEFAULT_HIST_BINS = 128
DEFAULT_HIST_SCALE = 1e-2
DEFAULT_HIST_MAX = 1e4


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


def bin_index(
    v: Tensor,
    inner: Tensor,
    settings: tuple[int, float, float],
    buf: Callable[..., Tensor] | None = None,
) -> Tensor:
    """Bin of each value: ``i`` with ``edges[i] <= v < edges[i+1]``, end bins open-ended.

    Exactly ``bucketize`` against the float64 inner edges ``inner``. For float32 on the CPU,
    where a binary search per value is slow, the bin is read from tables indexed by the upper
    16 bits of the float (see :func:`_float32_bin_table`): two lookups and one comparison per
    value. ``settings``: (bins, scale, max_abs); ``buf(name, dtype)`` hands out work buffers
    shaped like ``v``.
    """
    tables = _float32_bin_table(*settings)
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


def add_counts_(
    hist: Tensor,
    hv: Tensor,
    inner: Tensor | None,
    settings: tuple[int, float, float] | None,
    buf: Callable[..., Tensor] | None = None,
) -> float:
    """Add the bin counts of ``hv`` ((k, C) or (N, C, L) values) to ``hist`` ((C, B) float64)
    in place; returns the positions counted per channel."""
    if inner is None or settings is None:
        raise ProfileError("no histogram bins configured")
    c = hist.shape[0]
    idx = bin_index(hv, inner, settings, buf)
    bins = inner.numel() + 1
    offsets = torch.arange(c, device=hv.device, dtype=idx.dtype) * bins
    idx += offsets.view((1, -1) + (1,) * (hv.ndim - 2))
    counts = torch.bincount(idx.view(-1), minlength=hist.numel())
    hist.view(-1).add_(counts)
    return float(hv.numel() // c)
