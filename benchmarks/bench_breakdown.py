"""Where the time of ``st.profile`` goes, on one model (the S1 setting of bench_profile.py).

Each round runs, on the same batches and in an order that rotates from round to round: a plain
``no_grad`` forward; ``st.profile`` with the default statistics (timing inside it the fused
kernels, ``RunningStats.update`` and the finish of every layer); and ``st.profile`` with parts
of the statistics switched off: no covariance; no covariance and no histogram; and no
covariance, no histogram and the log moments of one position a batch; and two plain forwards
with a hook on every layer the profile reads: one that does nothing, one that takes a single
per-channel sum of every value (``torch.sum``): one read of every value, about the least a
statistic of every value can cost.
Differences of medians give the cost of each part; ``update`` minus the kernels is the per-layer
Python and torch work around them. Wall time per batch, milliseconds.

Usage::

    .venv/bin/python benchmarks/bench_breakdown.py [--model efficientnet_lite0_96px] [--repeats 5]

Writes ``benchmarks/results/breakdown_<model>.json`` (after every round) and ``.md`` (or into
``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import smart_transfer as st
from smart_transfer._atomic import atomic_write_text
from smart_transfer.layers import select_layers
from smart_transfer.stats import native, running
from smart_transfer.stats.profiler import resolve_points

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine
from bench_profile import RESULTS, _models

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no covariance": {"covariance": False},
    "no covariance, no histogram": {"covariance": False, "hist_bins": 0},
    "no covariance, no histogram, logs of 1 position": {
        "covariance": False,
        "hist_bins": 0,
        "sample_per_batch": 1,
    },
}
TIMED = ("kernels", "update", "finish")
# plain forwards with a hook on every profiled layer: nothing in it, or one per-channel sum
HOOKED = ("forward, empty hooks", "forward, a sum in every hook")


class _Timers:
    """Wall time spent in the fused kernels, in ``RunningStats.update`` and in the finish of
    every layer, while :meth:`on` is active (wrappers installed for one profile only)."""

    def __init__(self) -> None:
        self.secs = dict.fromkeys(TIMED, 0.0)
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, attr: str, key: str) -> None:
        fn = getattr(owner, attr)
        self._saved.append((owner, attr, fn))

        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.secs[key] += time.perf_counter() - t

        setattr(owner, attr, timed)

    def on(self) -> None:
        self.secs = dict.fromkeys(TIMED, 0.0)
        self._wrap(native, "moments", "kernels")
        self._wrap(native, "sample_logs", "kernels")
        self._wrap(running.RunningStats, "update", "update")
        self._wrap(running.RunningStats, "to_layer_profile", "finish")

    def off(self) -> None:
        for owner, attr, fn in reversed(self._saved):
            setattr(owner, attr, fn)
        self._saved.clear()


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _markdown(res: dict[str, Any]) -> str:
    nb = res["batches"]
    med = {k: statistics.median(v) * 1000 / nb for k, v in res["seconds"].items()}
    f = med["forward"]
    d = med["default"]
    parts = [
        ("plain forward", f),
        ("profile, default statistics", d),
        ("  of which the fused kernels (timed inside)", med["kernels"]),
        (
            "  of which the per-layer work around them (update - kernels)",
            med["update"] - med["kernels"],
        ),
        ("  of which finishing the layers (timed inside)", med["finish"]),
        ("covariance (default - no covariance)", d - med["no covariance"]),
        ("histogram", med["no covariance"] - med["no covariance, no histogram"]),
        (
            "log moments",
            med["no covariance, no histogram"]
            - med["no covariance, no histogram, logs of 1 position"],
        ),
        (
            "the rest: moments, hooks, glue (last variant - forward)",
            med["no covariance, no histogram, logs of 1 position"] - f,
        ),
        ("forward with an empty hook on every profiled layer", med["forward, empty hooks"]),
        (
            "forward with one per-channel sum of every value in each hook",
            med["forward, a sum in every hook"],
        ),
    ]
    lines = [
        f"# Where the time of profiling goes: {res['model']}",
        "",
        f"Command: `{res['command']}`  ",
        _machine.header_line(res.get("cpu")),
        (
            f"torch {res['torch']}, {res['threads']} threads, {res['date']}; batch "
            f"{res['batch_size']}, {nb} batches, {len(res['seconds']['forward'])} rounds; load "
            f"average (1 min) {res['loadavg_start'][0]:.2f} at start, "
            f"{res.get('loadavg_end', [float('nan')])[0]:.2f} at end."
        ),
        "",
        "Milliseconds per batch, medians over the rounds; the parts below the first two rows are",
        "differences of medians or times taken inside the default profile, so they need not add "
        "up.",
        "",
        "| part | ms per batch | share of the forward |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {ms:.0f} | {ms / f:.2f} |" for name, ms in parts]
    floor = med["forward, a sum in every hook"]
    lines += [
        "",
        (
            f"S1 ratio of the medians (forward / default profile): **{f / d:.2f}**; the same "
            f"ratio with nothing but a per-channel sum in every hook (the floor for any "
            f"statistic of every value): {f / floor:.2f}"
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - a script: options, rounds, table
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default="efficientnet_lite0_96px",
        help="a model name of bench_profile.py's S1 table",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument(
        "--size", type=int, default=None, help="image size (default: the model's S1 size)"
    )
    ap.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the JSON and Markdown files"
    )
    args = ap.parse_args(argv)
    models = _models(64, quick=False)
    if args.model not in models:
        ap.error(f"unknown --model {args.model!r}; choose one of {', '.join(models)}")
    factory, size, _ = models[args.model]
    size = args.size or size
    torch.manual_seed(0)
    model = factory().eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(args.batch, 3, size, size, generator=gen) for _ in range(args.batches)]

    def forward() -> None:
        with torch.no_grad():
            for x in batches:
                model(x)

    # the modules st.profile hooks by default, with the dim that holds their channels
    points, _ = resolve_points(model, select_layers(model), "output")

    def hooked_forward(work: bool) -> None:
        def hook(dim: int) -> Callable[..., None]:
            def fn(module: torch.nn.Module, inputs: Any, out: torch.Tensor) -> None:
                if work:
                    out.sum(dim=[d for d in range(out.ndim) if d != dim % out.ndim])

            return fn

        handles = [p.module.register_forward_hook(hook(p.channel_dim)) for p in points]
        try:
            forward()
        finally:
            for h in handles:
                h.remove()

    forward()  # warm-up
    st.profile(model, batches[:1], progress=False)
    res: dict[str, Any] = {
        "model": args.model,
        "image_size": size,
        "batch_size": args.batch,
        "batches": args.batches,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _machine.cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": list(os.getloadavg()),
        "seconds": {k: [] for k in ("forward", *VARIANTS, *TIMED, *HOOKED)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"breakdown_{args.model}"
    timers = _Timers()
    steps = ["forward", *VARIANTS, *HOOKED]
    for r in range(args.repeats):
        order = steps[r % len(steps) :] + steps[: r % len(steps)]
        for what in order:
            if what == "forward":
                res["seconds"]["forward"].append(_timed(forward))
                continue
            if what in HOOKED:
                res["seconds"][what].append(_timed(lambda w=what: hooked_forward(w == HOOKED[1])))
                continue
            if what == "default":
                timers.on()
            try:
                kw = VARIANTS[what]
                secs = _timed(lambda kw=kw: st.profile(model, batches, progress=False, **kw))
            finally:
                timers.off()
            res["seconds"][what].append(secs)
            if what == "default":
                for k in TIMED:
                    res["seconds"][k].append(timers.secs[k])
        res["loadavg_end"] = list(os.getloadavg())
        print(
            f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res["seconds"].items()),
            flush=True,
        )
        atomic_write_text(stem.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
        atomic_write_text(stem.with_suffix(".md"), _markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
