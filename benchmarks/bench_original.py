"""smart-transfer against the original method's algorithm: time and peak memory, end to end.

The original method keeps every activation of every layer as float64 arrays (memory grows
linearly with the number of images), then runs one scipy test per kernel on the log of the
positive activations and freezes the kernels above a per-layer percentile. Its repository needs
CUDA and local files to run, so its algorithm is re-implemented here, as it computes:

* ``original``: forward hooks on the convolutions append
  ``abs(output + 1e-4)`` as float64 arrays per batch (the original copies each kernel's values
  into float64 arrays); after both data sets, per layer and kernel, as the original's t-test
  does: the log of the kernel's values, a 100-bin histogram of them, the logs below -4 replaced
  by the left edge of the fullest bin from the 11th on, the mean and standard deviation of the
  result; 200 values drawn from each data set's normal fit and ``scipy.stats.ttest_ind``
  (Welch) on the two draws; kernels whose p-value is at or above the layer's median are frozen
  (``stats_value=0.5``). The original hooks every module (BatchNorm, ReLU and pooling outputs
  too); hooking only the convolutions, as here, costs it less time and memory, never more.
* ``smart``: ``st.profile`` of both data sets (streaming statistics, defaults),
  ``st.compare(..., "gaussian_kl")``, ``st.plan_freeze(..., quantile=0.5)``.
* ``forward``: a plain ``torch.no_grad()`` forward of the same images: the floor of any method
  that has to look at every activation.

Each runs in a fresh process, so that its peak resident memory (``ru_maxrss``) is its own.
SmallVGG with BatchNorm, 32 px, random weights (seed 0), D_pre and D_new as random images of
two different distributions; images are made batch by batch, so the data set itself takes no
memory in any of the three.

Usage::

    .venv/bin/python benchmarks/bench_original.py [--images 512] [--also 128] [--repeats 3]

Writes ``benchmarks/results/original.json`` and ``original.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import smart_transfer as st
from smart_transfer._atomic import atomic_write_text
from smart_transfer.models.small import SmallVGG

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 4.0


def _model() -> nn.Module:
    torch.manual_seed(0)
    return SmallVGG(batch_norm=True).eval()


def _batches(images: int, batch: int, size: int, shift: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, images, batch):
        n = min(batch, images - start)
        yield torch.randn(n, 3, size, size, generator=gen) * (1 + shift) + shift


def _convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def original(
    model: nn.Module, pre: Any, new: Any, stats_value: float = 0.5
) -> dict[str, np.ndarray]:
    """The original algorithm: every activation kept as float64, one fit and scipy t-test per
    kernel."""
    from scipy import stats

    def collect(batches: Any) -> dict[str, np.ndarray]:
        acts: dict[str, list[np.ndarray]] = {n: [] for n, _ in _convs(model)}
        hooks = [
            m.register_forward_hook(
                lambda _m, _i, out, n=n: acts[n].append(
                    np.abs(out.detach().cpu().numpy() + 1e-4).astype(np.float64)
                )
            )
            for n, m in _convs(model)
        ]
        try:
            with torch.no_grad():
                for x in batches:
                    model(x)
        finally:
            for h in hooks:
                h.remove()
        return {n: np.concatenate(v) for n, v in acts.items()}

    def fit(v: np.ndarray) -> tuple[float, float]:
        logs = np.log(v)
        counts, edges = np.histogram(logs, 100)
        logs[logs < -4] = edges[10 + np.argmax(counts[10:])]
        return float(logs.mean()), float(logs.std())

    a_pre, a_new = collect(pre), collect(new)
    rng = np.random.default_rng(0)
    frozen = {}
    for name in a_pre:
        p = np.ones(a_pre[name].shape[1])
        for k in range(a_pre[name].shape[1]):
            (mu_p, sd_p), (mu_n, sd_n) = (
                fit(a_pre[name][:, k].ravel()),
                fit(a_new[name][:, k].ravel()),
            )
            draw_p, draw_n = rng.normal(mu_p, sd_p, 200), rng.normal(mu_n, sd_n, 200)
            p[k] = stats.ttest_ind(draw_p, draw_n, equal_var=False).pvalue
        frozen[name] = p >= np.percentile(p, 100 * stats_value)
    return frozen


def smart(model: nn.Module, pre: Any, new: Any) -> Any:
    prof_pre = st.profile(model, pre, progress=False)
    prof_new = st.profile(model, new, progress=False)
    return st.plan_freeze(st.compare(prof_pre, prof_new, "gaussian_kl"), quantile=0.5)


def forward(model: nn.Module, pre: Any, new: Any) -> None:
    with torch.no_grad():
        for batches in (pre, new):
            for x in batches:
                model(x)


def child(what: str, images: int, batch: int, size: int) -> dict[str, Any]:
    model = _model()
    fn = {"original": original, "smart": smart, "forward": forward}[what]
    fn(model, _batches(batch, batch, size, 0.0, 1), _batches(batch, batch, size, 0.5, 2))  # warm-up
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    fn(model, _batches(images, batch, size, 0.0, 1), _batches(images, batch, size, 0.5, 2))
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "what": what,
        "images": images,
        "seconds": seconds,
        "peak_rss_mb": rss / 1024,
        "rss_before_mb": rss_before / 1024,
    }


def _run_child(what: str, images: int, batch: int, size: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        what,
        "--images",
        str(images),
        "--batch",
        str(batch),
        "--size",
        str(size),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _markdown(res: dict[str, Any]) -> str:
    lines = [
        "# smart-transfer against the original method's algorithm",
        "",
        f"Command: `{res['command']}`  ",
        _machine.header_line(res.get("cpu")),
        (
            f"torch {res['torch']}, {res['cpus']} CPUs, {res['threads']} torch threads, "
            f"{res['date']}; load average (1 min) {res['load_start']:.2f} at start, "
            f"{res['load_end']:.2f} at end."
        ),
        "",
        (
            f"SmallVGG with BatchNorm, {res['size']} px, batch {res['batch']}, random weights; "
            "D_pre and D_new are random images of two distributions, made batch by batch. End to "
            "end: profile (or collect) both data sets, compare, plan. Each figure is the median "
            "of the repeats, each repeat a fresh process; peak memory is that process's "
            "`ru_maxrss`."
        ),
        "",
        (
            "| images (D_pre + D_new) | original s | smart-transfer s | plain forward s | speed-up "
            "(original / smart) | bound (original / forward) | original peak MB | smart-transfer "
            "peak MB | forward peak MB |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        lines.append(
            f"| 2 x {row['images']} | {row['original_s']:.2f} | {row['smart_s']:.2f} | "
            f"{row['forward_s']:.2f} | **{row['speedup']:.2f}x** | {row['bound']:.2f}x | "
            f"{row['original_mb']:.0f} | {row['smart_mb']:.0f} | {row['forward_mb']:.0f} |"
        )
    lines += [
        "",
        (
            f"Target: speed-up >= {TARGET_RATIO:g}x at 2 x 512 images, with smart-transfer's "
            "memory flat in the number of images. Every repeat is in the JSON file of the same "
            "name."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=512, help="images in each of D_pre and D_new")
    ap.add_argument(
        "--also", type=int, nargs="*", default=[128], help="smaller image counts, for memory growth"
    )
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--child", choices=("original", "smart", "forward"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.images, args.batch, args.size)))
        return 0
    res: dict[str, Any] = {
        "command": "python benchmarks/bench_original.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu": _machine.cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_start": os.getloadavg()[0],
        "size": args.size,
        "batch": args.batch,
        "rows": [],
        "repeats": [],
    }
    for images in sorted(set(args.also) | {args.images}):
        runs: dict[str, list[dict[str, Any]]] = {"original": [], "smart": [], "forward": []}
        for r in range(args.repeats):
            order = (
                ("original", "smart", "forward") if r % 2 == 0 else ("forward", "smart", "original")
            )
            for what in order:
                got = _run_child(what, images, args.batch, args.size)
                runs[what].append(got)
                res["repeats"].append({**got, "repeat": r, "loadavg_1min": os.getloadavg()[0]})
                print(
                    f"  {images} images, {what}: {got['seconds']:.2f} s, peak "
                    f"{got['peak_rss_mb']:.0f} MB",
                    flush=True,
                )

        def med(what: str, field: str, runs: dict[str, list[dict[str, Any]]] = runs) -> float:
            return statistics.median(x[field] for x in runs[what])

        row = {
            "images": images,
            **{f"{w}_s": med(w, "seconds") for w in runs},
            **{f"{w}_mb": med(w, "peak_rss_mb") for w in runs},
        }
        row["speedup"] = row["original_s"] / row["smart_s"]
        row["bound"] = row["original_s"] / row["forward_s"]
        res["rows"].append(row)
    res["load_end"] = os.getloadavg()[0]
    out = Path(args.results)
    atomic_write_text(out / "original.json", json.dumps(res, indent=1) + "\n")
    atomic_write_text(out / "original.md", _markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
