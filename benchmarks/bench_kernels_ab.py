"""The fused statistics of this checkout's ``_kernels.c`` against another revision's, side by side.

Both libraries are built (into the usual kernel cache) and loaded in one process; each shape
is timed in rounds that alternate which library goes first, every statistic on (moments, the
logs and the histogram of every value), and the two must give the same sums and histogram
counts. Nanoseconds per activation value, medians over the rounds of each round's best of
``--calls`` calls, torch's threads.

With ``--models``, also end to end: ``st.profile`` of each named S1 model (see
bench_profile.py) with one library and then the other, in rounds that alternate the order,
beside a plain forward of the same batches; seconds per profile, medians over the rounds.

Usage::

    .venv/bin/python benchmarks/bench_kernels_ab.py [--against HEAD~1] [--rounds 6]
        [--models efficientnet_lite0_96px torchvision_resnet50_224px --model-rounds 3]

Prints a Markdown table; ``--out FILE`` also writes it (with the JSON beside it).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from smart_transfer._atomic import atomic_write_text
from smart_transfer.stats import native, running

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "src/smart_transfer/stats/_kernels.c"
# (N, C, L): Lite0's 3x3, 6x6 and 12x12 maps at 96 px, a 48x48 map, and (N, C) rows
SHAPES = [(64, 1152, 9), (64, 672, 36), (64, 240, 144), (64, 96, 2304), (64, 10368, 1)]


def _library(source: Path) -> Any:
    saved = native.SOURCE
    native.SOURCE = source
    try:
        lib = native._load()
    finally:
        native.SOURCE = saved
    if lib is None:
        raise SystemExit(f"could not build the kernels of {source}")
    return lib


def _best(fn: Any, calls: int) -> float:
    fn()
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _order(libs: dict[str, Any], r: int) -> list[str]:
    """The libraries' order in round ``r``: each goes first every other round."""
    return list(libs) if r % 2 == 0 else list(libs)[::-1]


def _end_to_end(libs: dict[str, Any], names: list[str], rounds: int) -> list[dict[str, Any]]:
    """Seconds per ``st.profile`` of each model with each library, beside a plain forward."""
    if not names:
        return []
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_profile import _models, _time_forward, _time_profile

    known = _models(64, quick=False)
    out = []
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(known)}")
        factory, size, n_batches = known[name]
        model = factory().eval()
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(64, 3, size, size, generator=gen) for _ in range(n_batches)]
        for lib in libs.values():  # warm-up: oneDNN caches, allocator, each library once
            native._lib = lib
            _time_profile(model, batches[:1])
        secs: dict[str, list[float]] = {"forward": [], **{k: [] for k in libs}}
        for r in range(rounds):
            secs["forward"].append(_time_forward(model, batches)[0])
            for key in _order(libs, r):
                native._lib = libs[key]
                secs[key].append(_time_profile(model, batches)[0])
            print(
                f"  {name} round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in secs.items()),
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in secs.items()}
        out.append(
            {
                "model": name,
                "forward_s": med["forward"],
                "baseline_s": med["baseline"],
                "new_s": med["this checkout"],
                "rounds": secs,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--against", default="HEAD~1", help="git revision whose kernels are the baseline"
    )
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=None, help="Markdown file to write (JSON beside it)"
    )
    ap.add_argument("--models", nargs="*", default=[], help="S1 models to profile end to end")
    ap.add_argument("--model-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    text = subprocess.run(
        ["git", "show", f"{args.against}:{KERNELS}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        base_src = Path(tmp) / "_kernels.c"
        base_src.write_text(text)
        libs = {"baseline": _library(base_src), "this checkout": native.kernels()}
    settings = (running.DEFAULT_HIST_BINS, running.DEFAULT_HIST_SCALE, running.DEFAULT_HIST_MAX)
    low, cut = running._native_bin_table(*settings)  # type: ignore[misc]
    bins = running.hist_edges(*settings).numel() - 1
    rows: list[dict[str, Any]] = []
    saved = native._lib
    try:
        for shape in SHAPES:
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
            times: dict[str, list[float]] = {k: [] for k in libs}
            outs = {}
            for r in range(args.rounds):
                for name in _order(libs, r):
                    native._lib = libs[name]
                    counts = torch.zeros(shape[1], bins, dtype=torch.float64)
                    outs[name] = (native.moments(x, 1, hist=(1, 0, None, low, cut, counts)), counts)
                    secs = _best(
                        functools.partial(
                            native.moments, x, 1, hist=(1, 0, None, low, cut, counts)
                        ),
                        args.calls,
                    )
                    times[name].append(secs / x.numel() * 1e9)
            (sa, ca), (sb, cb) = outs["baseline"], outs["this checkout"]
            same = bool(torch.equal(sa, sb) and torch.equal(ca, cb))
            base, new = (statistics.median(times[k]) for k in libs)
            rows.append(
                {
                    "shape": list(shape),
                    "baseline_ns": base,
                    "new_ns": new,
                    "speedup": base / new,
                    "same_results": same,
                    "rounds": times,
                }
            )
            print(
                f"  {shape}: {base:.2f} -> {new:.2f} ns a value ({base / new:.2f}x), same: {same}",
                flush=True,
            )
        models = _end_to_end(libs, args.models, args.model_rounds)
    finally:
        native._lib = saved
    lines = [
        f"# Fused statistics: `{args.against}` against this checkout",
        "",
        "Command: `python benchmarks/bench_kernels_ab.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        (
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{time.strftime('%Y-%m-%d %H:%M')}; every statistic of every value (moments, logs, "
            "histogram)."
        ),
        "",
        "| batch (N, C, L) | baseline ns/value | this checkout ns/value | speed-up | same sums and "
        "counts |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {tuple(row['shape'])} | {row['baseline_ns']:.2f} | {row['new_ns']:.2f} | "
            f"{row['speedup']:.2f}x | {'yes' if row['same_results'] else '**no**'} |"
        )
    if models:
        lines += [
            "",
            f"End to end: `st.profile` with the default statistics, medians of {args.model_rounds} "
            "rounds.",
            "",
            "| model | forward s | profile s, baseline | profile s, this checkout | baseline / "
            "this checkout |",
            "|---|---|---|---|---|",
        ]
        for m in models:
            lines.append(
                f"| {m['model']} | {m['forward_s']:.2f} | {m['baseline_s']:.2f} | {m['new_s']:.2f} "
                f"| {m['baseline_s'] / m['new_s']:.2f}x |"
            )
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out is not None:
        atomic_write_text(args.out, md)
        atomic_write_text(
            args.out.with_suffix(".json"),
            json.dumps({"kernels": rows, "models": models}, indent=1) + "\n",
        )
    return 0 if all(r["same_results"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
