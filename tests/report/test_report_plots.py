"""The plotted numbers are the run's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from smart_transfer.report import load_run, plots


def _ax() -> Any:
    return Figure().subplots()


def test_similarity_curve_is_the_layer_scores(run_bn: tuple[Path, dict[str, Any]]) -> None:
    run_dir, data = run_bn
    run = load_run(run_dir)
    import smart_transfer as st

    sim = st.compare(run.profile_pre, run.profile_new, measure=run.measure)
    ax = plots.similarity_curve(sim, ax=_ax())
    (line,) = ax.lines
    assert line.get_ydata().tolist() == list(sim.layer_scores.values())
    assert line.get_ydata().tolist() == pytest.approx(list(data["sim"].layer_scores.values()))
    assert [t.get_text() for t in ax.get_xticklabels()] == list(sim.layer_scores)


def test_confusion_matrix_image_is_metrics_json(run_bn: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = run_bn
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ax = plots.confusion_matrix(metrics["confusion_matrix"], metrics["class_names"], ax=_ax())
    assert np.array_equal(np.asarray(ax.images[0].get_array()), metrics["confusion_matrix"])
    cells = [t.get_text() for t in ax.texts]
    assert cells == [str(v) for row in metrics["confusion_matrix"] for v in row]


def test_frozen_fraction_bars_are_the_plan(run_bn: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = run_bn
    plan = load_run(run_dir).plan
    ax = plots.frozen_fraction(plan, ax=_ax())
    heights = [p.get_height() for p in ax.patches]
    assert heights == [r["frozen_fraction"] for r in plan.summary()["layers"]]


def test_batchnorm_source_is_its_gaussian(run_bn: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = run_bn
    run = load_run(run_dir)
    layer = "features.3"
    pre, new = run.profile_pre.layers[layer], run.profile_new.layers[layer]
    ax = plots.kernel_histogram(pre, new, 2, ax=_ax())
    (curve,) = ax.lines
    x, y = curve.get_xdata(), curve.get_ydata()
    m, v = float(pre.mean[2]), float(pre.var[2])
    assert np.allclose(y, np.exp(-((x - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v))
    # the target histogram as a density: counts / (total * bin width), integrating to 1
    stairs = [p for p in ax.patches if p.get_label().startswith("D_new histogram")]
    (hist,) = stairs
    values, edges = hist.get_data().values, hist.get_data().edges
    counts = new.hist[2].numpy()
    assert np.allclose(values, counts / (counts.sum() * np.diff(new.hist_edges.numpy())))
    assert np.isclose((values * np.diff(edges)).sum(), 1.0)


def test_training_curves_are_the_log(run_bn: tuple[Path, dict[str, Any]]) -> None:
    run_dir, data = run_bn
    log = load_run(run_dir).log
    ax = plots.training_curves(log, "accuracy", ax=_ax())
    train, val = ax.lines[:2]
    assert val.get_ydata().tolist() == [r["val_accuracy"] for r in data["log"]]
    assert train.get_ydata().tolist() == [r["train_accuracy"] for r in data["log"]]
    best = ax.lines[2]  # the best validation epoch, the one model selection keeps
    assert best.get_xdata()[0] == 3


def test_sample_grid_rows_are_classes(run_bn: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = run_bn
    run = load_run(run_dir)
    ax = plots.sample_grid(run.samples.images, run.samples.labels, run.class_names, ax=_ax())
    assert [t.get_text() for t in ax.get_yticklabels()] == run.class_names
    canvas = np.asarray(ax.images[0].get_array())
    first = run.samples.images[run.samples.labels.tolist().index(0), 0].numpy()
    assert np.allclose(canvas[2 : 2 + 20, 2 : 2 + 20, 0], first)  # 2 px padding, gray -> RGB


def test_ax_none_draws_on_a_new_pyplot_figure() -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    try:
        ax = plots.similarity_curve({"a": 0.2, "b": 0.9})
        assert ax.figure is plt.gcf()
        assert ax.lines[0].get_ydata().tolist() == [0.2, 0.9]
    finally:
        plt.close("all")


def test_activation_map_rows_share_a_colour_scale() -> None:
    images = torch.rand(2, 1, 4, 4)
    maps = {"k": torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])}
    ax = plots.activation_maps(images, maps, ax=_ax())
    canvas = np.asarray(ax.images[0].get_array())
    row = 2 + 4 + 2  # below the input row
    low, high = canvas[row, 2], canvas[row, 2 + 4 + 2]
    assert not np.allclose(low, high)  # 0 and 1 on one scale: two different colours


def test_exact_zeros_are_a_point_mass_not_a_spike() -> None:
    from smart_transfer.stats import LayerProfile, hist_edges

    edges = hist_edges(8, 0.5, 10.0)
    hist = torch.tensor([[0, 0, 0, 0, 6, 2, 2, 0]], dtype=torch.float64)  # 5 of the 6 are zeros
    one = torch.ones(1, dtype=torch.float64)
    lp = LayerProfile(
        name="relu",
        kind="conv",
        num_channels=1,
        params={},
        count=10 * one,
        mean=0.3 * one,
        var=one,
        zero_frac=0.5 * one,
        hist=hist,
        hist_edges=edges,
        hist_count=10 * one,
    )
    ax = plots.kernel_histogram(lp, lp, 0, ax=_ax())
    (hist_patch, *_rest) = [p for p in ax.patches if p.get_label().startswith("D_pre histogram")]
    assert "50.0% exact zeros" in hist_patch.get_label()
    values = hist_patch.get_data().values
    widths = np.diff(edges.numpy())
    assert np.allclose(values * widths * 10, [0, 0, 0, 0, 1, 2, 2, 0])


def test_extreme_kernels_pass_over_dead_ones() -> None:
    from smart_transfer.report.maps import extreme_kernels

    scores = torch.tensor([1.0, 0.8, float("nan"), 0.1, 0.5])
    var_pre = torch.tensor([0.0, 1.0, 1.0, 2.0, 1.0])  # channel 0 is dead on D_pre
    assert extreme_kernels(scores) == (0, 3)
    assert extreme_kernels(scores, var_pre, None) == (1, 3)
    assert extreme_kernels(scores, torch.zeros(5)) == (0, 3)  # all dead: fall back to all
