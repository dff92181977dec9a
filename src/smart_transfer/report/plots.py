"""The report's figures, one function each.

Every function draws on one matplotlib ``Axes``: pass ``ax`` to place it in your own figure,
or leave it ``None`` to draw on a new pyplot figure. Each returns the axes. matplotlib is
imported only when a function runs; the report itself draws on ``matplotlib.figure.Figure``
objects and never touches pyplot or the global backend.

Inputs are the package's own objects (``Similarity``, ``LayerProfile``, ``FreezePlan``) or
the plain data of a run directory (``log.jsonl`` rows, ``metrics.json`` lists), so the same
functions work in a notebook on a run that is still going.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..freeze import FreezePlan
    from ..measures import Similarity
    from ..stats import LayerProfile

PRE_COLOR = "#1f77b4"  # D_pre (source) everywhere in the report
NEW_COLOR = "#ff7f0e"  # D_new (target)
TRAIN_COLOR = "#2ca02c"
VAL_COLOR = "#d62728"


def plain(text: Any) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` would start mathtext (``a$b$`` is
    typeset as math, ``$\\frac{`` stops the drawing with a parse error), so it is escaped."""
    return str(text).replace("$", r"\$")


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependencyError(
            "plotting needs matplotlib; install it with pip install matplotlib"
        ) from e
    _, new = plt.subplots()
    return new


def _layer_ticks(ax: Axes, names: Sequence[str], max_labels: int = 24) -> None:
    """Layer names under the x axis, thinned to at most ``max_labels`` labels."""
    step = max(1, math.ceil(len(names) / max_labels))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([plain(names[i]) for i in ticks], rotation=60, ha="right", fontsize=7)


# ---------------------------------------------------------------------------------- similarity


def similarity_curve(
    sim: Similarity | Mapping[str, float],
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Layer score (1 = same distribution on D_pre and D_new) against depth.

    ``sim``: a :class:`~smart_transfer.Similarity` (its ``layer_scores``) or a mapping
    ``{layer: score}`` in input-to-output order. The line's y data are exactly those scores.
    """
    ax = _axes(ax)
    scores = dict(sim.layer_scores) if hasattr(sim, "layer_scores") else dict(sim)
    names = list(scores)
    y = np.array([float(scores[n]) for n in names], dtype=float)
    ax.plot(np.arange(len(y)), y, marker="o", markersize=3, color=PRE_COLOR)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("layer (input to output)")
    ax.set_ylabel("layer similarity")
    measure = getattr(sim, "measure", None)
    ax.set_title(
        title or (f"layer-wise similarity ({measure})" if measure else "layer-wise similarity")
    )
    ax.grid(alpha=0.3)
    _layer_ticks(ax, names)
    return ax


def _density(lp: LayerProfile, channel: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(density per bin, edges, fraction of exact zeros) of one channel's histogram.

    The bins are not equally wide, hence densities. Exact zeros (ReLU outputs) are a point
    mass, not a density: they are taken out of the bin that starts at 0 (``zero_frac`` of the
    histogram's values) and returned apart, so the continuous part integrates to 1 - p0.
    """
    if lp.hist is None or lp.hist_edges is None:
        return None
    counts = lp.hist[channel].double().numpy().copy()
    edges = lp.hist_edges.double().numpy()
    total = counts.sum()
    if total <= 0:
        return None
    p0 = 0.0
    if lp.zero_frac is not None and float(lp.zero_frac[channel]) > 0:
        k = int(np.searchsorted(edges, 0.0, side="right")) - 1  # the bin [0, next edge)
        if 0 <= k < counts.size:
            zeros = min(float(lp.zero_frac[channel]) * total, counts[k])
            counts[k] -= zeros
            p0 = zeros / total
    return counts / (total * np.diff(edges)), edges, p0


def _support(
    density: tuple[np.ndarray, np.ndarray, float] | None,
) -> tuple[float, float] | None:
    """Value range holding all but 0.5% of the mass at each end (the end bins reach +-1e4)."""
    if density is None:
        return None
    d, edges, _ = density
    mass = d * np.diff(edges)
    if mass.sum() <= 0:  # only exact zeros
        return (-1.0, 1.0)
    cdf = np.cumsum(mass) / mass.sum()
    lo = int(np.searchsorted(cdf, 0.005))
    hi = int(np.searchsorted(cdf, 0.995))
    return float(edges[lo]), float(edges[min(hi + 1, len(edges) - 1)])


def gaussian_pdf(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    """N(mean, var) density at ``x`` (a point mass drawn as a narrow peak when var is 0)."""
    var = max(float(var), 1e-12)
    return np.exp(-0.5 * (x - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)


def kernel_histogram(
    pre: LayerProfile,
    new: LayerProfile,
    channel: int,
    ax: Axes | None = None,
    score: float | None = None,
    labels: tuple[str, str] = ("D_pre", "D_new"),
) -> Axes:
    """One kernel's activation distribution on the source (D_pre) and target (D_new) data.

    Histograms are drawn as densities (the profile's bins are narrower near zero), with the
    share of exact zeros in the legend instead of as a spike at 0. A profile without a
    histogram, such as one read from BatchNorm running statistics, is drawn as its
    Gaussian N(mean, var) over the other's histogram.
    """
    ax = _axes(ax)
    c = int(channel)
    if not 0 <= c < new.num_channels:
        raise ConfigError(
            f"layer {new.name!r} has {new.num_channels} channels; channel {c} does not exist"
        )
    dens = {"pre": _density(pre, c), "new": _density(new, c)}
    lows, highs = [], []
    for lp, d in ((pre, dens["pre"]), (new, dens["new"])):
        span = _support(d)
        if span is None:  # a Gaussian: +-4 standard deviations
            m, s = float(lp.mean[c]), math.sqrt(max(float(lp.var[c]), 0.0))
            span = (m - 4 * s, m + 4 * s) if s > 0 else (m - 1, m + 1)
        lows.append(span[0])
        highs.append(span[1])
    lo, hi = min(lows), max(highs)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad
    x = np.linspace(lo, hi, 400)
    for key, lp, color, label in (
        ("pre", pre, PRE_COLOR, labels[0]),
        ("new", new, NEW_COLOR, labels[1]),
    ):
        d = dens[key]
        if d is not None:
            zeros = f", {100 * d[2]:.1f}% exact zeros" if d[2] >= 0.001 else ""
            ax.stairs(
                d[0], d[1], fill=True, alpha=0.35, color=color, label=f"{label} histogram{zeros}"
            )
            ax.stairs(d[0], d[1], color=color, linewidth=0.8)
        else:
            m, v = float(lp.mean[c]), float(lp.var[c])
            ax.plot(
                x,
                gaussian_pdf(x, m, v),
                color=color,
                linewidth=1.8,
                label=f"{label} Gaussian N({m:.2g}, {v:.2g})",
            )
    ax.set_xlim(lo, hi)
    ax.set_xlabel("activation")
    ax.set_ylabel("density")
    title = f"{plain(new.name)} kernel {c}"
    if score is not None:
        title += f" (similarity {score:.3f})"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return ax


# ---------------------------------------------------------------------------------- images


def to_rgb(images: Tensor | np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` or ``(C, H, W)`` in [0, 1] -> ``(N, H, W, 3)`` float (gray repeated)."""
    t = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ConfigError(f"images must be (N, C, H, W), got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] == 4:
        t = t[:, :3]
    elif t.shape[1] != 3:
        raise ConfigError(f"images need 1, 3 or 4 channels to be drawn, got {t.shape[1]}")
    return t.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def colorize(maps: Tensor | np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """``(N, H, W)`` values -> ``(N, H, W, 3)`` colours, scaled jointly to the maps' range."""
    from matplotlib import colormaps

    a = torch.as_tensor(maps).detach().to("cpu", torch.float32).numpy()
    lo, hi = float(np.min(a)), float(np.max(a))
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return colormaps[cmap](a)[..., :3]


def image_grid(
    tiles: Sequence[Sequence[np.ndarray | None]],
    ax: Axes | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Axes:
    """A grid of RGB tiles ``(H, W, 3)`` in [0, 1] as one image (rows may have holes: None).

    Tiles are shown at the largest tile size (nearest-neighbour upsampling), separated by
    ``pad`` white pixels; row labels go on the left, column labels on top.
    """
    ax = _axes(ax)
    rows = [list(r) for r in tiles]
    cols = max((len(r) for r in rows), default=0)
    present = [t for r in rows for t in r if t is not None]
    if not present:
        ax.set_axis_off()
        return ax
    h = max(t.shape[0] for t in present)
    w = max(t.shape[1] for t in present)
    canvas = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, t in enumerate(r):
            if t is None:
                continue
            t = _upsample(np.asarray(t, dtype=np.float32), h, w)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = t
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([pad + j * (w + pad) + w / 2 for j in range(cols)] if col_labels else [])
    if col_labels:
        ax.set_xticklabels([plain(c) for c in list(col_labels)[:cols]], fontsize=7)
        ax.xaxis.tick_top()
    ax.set_yticks([pad + i * (h + pad) + h / 2 for i in range(len(rows))] if row_labels else [])
    if row_labels:
        ax.set_yticklabels([plain(r) for r in list(row_labels)[: len(rows)]], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def _upsample(t: np.ndarray, h: int, w: int) -> np.ndarray:
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, axis=2)
    if t.shape[:2] == (h, w):
        return t
    ys = (np.arange(h) * t.shape[0] // h).clip(0, t.shape[0] - 1)
    xs = (np.arange(w) * t.shape[1] // w).clip(0, t.shape[1] - 1)
    return cast(np.ndarray, t[ys][:, xs])


def activation_maps(
    images: Tensor,
    maps: Mapping[str, Tensor],
    ax: Axes | None = None,
    col_labels: Sequence[str] | None = None,
    cmap: str = "viridis",
) -> Axes:
    """The input images in the first row, then one row per kernel: its activation maps.

    ``images``: ``(N, C, H, W)`` in [0, 1]; ``maps``: row label -> ``(N, h, w)`` activations
    of one kernel on those images. Each row is coloured on its own range, shared by its
    images, so brighter means a stronger response of that kernel.
    """
    rgb = to_rgb(images)
    rows: list[list[np.ndarray | None]] = [list(rgb)]
    for m in maps.values():
        rows.append(list(colorize(m, cmap)))
    return image_grid(rows, ax=ax, row_labels=["input", *maps], col_labels=col_labels)


def grad_cam(
    images: Tensor,
    cams: Tensor | np.ndarray,
    ax: Axes | None = None,
    col_labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Axes:
    """Images (first row) and their class-activation maps laid over them (second row).

    ``cams``: ``(N, H, W)`` in [0, 1] at the images' size, as ``pytorch_grad_cam`` returns.
    """
    from matplotlib import colormaps

    rgb = to_rgb(images)
    heat = colormaps[cmap](np.clip(np.asarray(cams, dtype=np.float32), 0, 1))[..., :3]
    if heat.shape[1:3] != rgb.shape[1:3]:
        raise ConfigError(
            f"Grad-CAM maps are {heat.shape[1:3]} but the images are {rgb.shape[1:3]}; give "
            "the images at the size the network saw"
        )
    overlay = (1 - alpha) * rgb + alpha * heat
    return image_grid(
        [list(rgb), list(overlay)], ax=ax, row_labels=["input", "Grad-CAM"], col_labels=col_labels
    )


def sample_grid(
    images: Tensor,
    labels: Tensor | Sequence[int],
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    per_class: int = 8,
) -> Axes:
    """Up to ``per_class`` images of each class, one row per class (rows labelled by name)."""
    rgb = to_rgb(images)
    lab = [int(v) for v in torch.as_tensor(labels).flatten().tolist()]
    classes = sorted(set(lab))
    names = list(class_names or [])
    rows = [[rgb[i] for i, v in enumerate(lab) if v == c][:per_class] for c in classes]
    row_labels = [names[c] if 0 <= c < len(names) else str(c) for c in classes]
    return image_grid(rows, ax=ax, row_labels=row_labels)


# ---------------------------------------------------------------------------------- freezing


def frozen_fraction(plan: FreezePlan | Mapping[str, Any], ax: Axes | None = None) -> Axes:
    """Fraction of each layer's parameters that the plan freezes (bars), and the total.

    ``plan``: a :class:`~smart_transfer.FreezePlan` or its ``summary()``. Bar heights are the
    summary rows' ``frozen_fraction``.
    """
    ax = _axes(ax)
    s = plan.summary() if hasattr(plan, "summary") else dict(plan)
    rows = s["layers"]
    names = [r["layer"] for r in rows]
    y = [float(r["frozen_fraction"]) for r in rows]
    ax.bar(np.arange(len(y)), y, color=PRE_COLOR, width=0.8)
    ax.axhline(
        float(s["frozen_fraction"]),
        color="k",
        linestyle="--",
        linewidth=1,
        label=f"all layers: {100 * float(s['frozen_fraction']):.1f}%",
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("frozen fraction of parameters")
    ax.set_title(
        f"frozen per layer ({s['frozen_channels']}/{s['channels']} channels, "
        f"{s['frozen_params']}/{s['num_params']} parameters)"
    )
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _layer_ticks(ax, names)
    return ax


# ---------------------------------------------------------------------------------- training


def training_curves(
    log: Sequence[Mapping[str, Any]], metric: str = "loss", ax: Axes | None = None
) -> Axes:
    """``train_<metric>`` and ``val_<metric>`` per epoch from ``log.jsonl`` rows.

    Missing values are gaps. With ``metric="accuracy"`` the best validation epoch (the one
    model selection keeps) is marked.
    """
    ax = _axes(ax)
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(log)]
    for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
        key = f"{split}_{metric}"
        y = [_num(r.get(key)) for r in log]
        if any(not math.isnan(v) for v in y):
            ax.plot(epochs, y, marker="o", markersize=3, color=color, label=split)
    if metric == "accuracy":
        val = [_num(r.get("val_accuracy")) for r in log]
        if any(not math.isnan(v) for v in val):
            best = int(np.nanargmax(np.array(val)))
            ax.axvline(
                epochs[best],
                color="k",
                linestyle=":",
                linewidth=1,
                label=f"best val epoch {epochs[best]}",
            )
        ax.set_ylim(-0.02, 1.02)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best" if len(log) < 50 else "upper right")
    return ax


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Counts of (true class, predicted class) as an image, each cell annotated.

    The image's array is ``matrix`` itself (rows = true class, columns = prediction).
    """
    ax = _axes(ax)
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ConfigError(f"a confusion matrix must be square, got shape {m.shape}")
    k = m.shape[0]
    ax.imshow(m, cmap="Blues", interpolation="nearest")
    names = [plain(n) for n in list(class_names or [str(i) for i in range(k)])[:k]]
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = m.max() if m.size else 0
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=9 if k <= 10 else 7,
                    color="white" if top and m[i, j] > top / 2 else "black",
                )
    ax.set_title("confusion matrix (test)")
    return ax


def strategy_comparison(rows: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Axes:
    """Validation and test accuracy of each strategy (grouped bars; ``val_std`` / ``test_std``,
    the standard deviation over seeds, as error bars where given)."""
    ax = _axes(ax)
    names = [plain(r.get("strategy", "?")) for r in rows]
    x = np.arange(len(rows))
    for k, (key, color) in enumerate((("val_accuracy", VAL_COLOR), ("test_accuracy", PRE_COLOR))):
        y = [_num(r.get(key)) for r in rows]
        err = [_num(r.get(key.replace("accuracy", "std"))) for r in rows]
        bars = ax.bar(
            x + (k - 0.5) * 0.38,
            np.nan_to_num(y),
            width=0.38,
            color=color,
            label=key.replace("_", " "),
            yerr=None if all(math.isnan(e) for e in err) else np.nan_to_num(err),
            capsize=3,
        )
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.3f}" for v in y], fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("strategies")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax


def misclassified(
    image: Tensor | np.ndarray, true_name: str, predicted_name: str, ax: Axes | None = None
) -> Axes:
    """One misclassified test image, titled with its true and its predicted class."""
    ax = _axes(ax)
    ax.imshow(to_rgb(image)[0], interpolation="nearest")
    ax.set_title(f"true: {plain(true_name)}\npred: {plain(predicted_name)}", fontsize=8)
    ax.set_axis_off()
    return ax
