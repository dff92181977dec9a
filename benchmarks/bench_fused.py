"""Per-layer cost of one ``RunningStats.update`` with the fused C statistics and with the eager
torch operations, for the activation shapes of SmallVGG (64 px) and EfficientNet-Lite0 (96 px),
batch 64, in both memory formats. This is the measurement behind the routing rule of
``smart_transfer.stats.native.supported``.

Usage::

    .venv/bin/python benchmarks/bench_fused.py [--repeats N]

Writes ``benchmarks/results/fused.json`` and ``fused.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from smart_transfer._atomic import atomic_write_text
from smart_transfer.stats import native
from smart_transfer.stats.running import RunningStats

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [
    (64, 64, 64, 64),
    (64, 128, 32, 32),
    (64, 256, 16, 16),
    (64, 512, 8, 8),  # SmallVGG
    (64, 32, 48, 48),
    (64, 96, 24, 24),
    (64, 144, 24, 24),
    (64, 240, 12, 12),  # EfficientNet
    (64, 480, 6, 6),
    (64, 672, 6, 6),
    (64, 1152, 3, 3),
    (64, 1280, 3, 3),
]


def _time(rs: RunningStats, x: torch.Tensor, repeats: int) -> float:
    rs.update(x)  # warm-up (buffers, first-batch reference)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        rs.update(x)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", type=int, default=None, help="only the first N shapes (smoke)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)
    if native.kernels() is None:
        print("the fused statistics are not available (no C compiler?)", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    for shape in SHAPES[: args.shapes]:
        x = torch.randn(*shape).relu_()
        for fmt in ("contiguous", "channels_last"):
            v = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
            eager = _time(RunningStats(shape[1], native=False), v, args.repeats)
            fused = _time(RunningStats(shape[1], native=True), v, args.repeats)
            used = native.supported(v.flatten(2))
            rows.append(
                {
                    "shape": list(shape),
                    "format": fmt,
                    "eager_ms": eager * 1e3,
                    "fused_ms": fused * 1e3,
                    "speedup": eager / fused,
                    "routed": used,
                }
            )
            print(
                f"{shape} {fmt:13s} eager {eager * 1e3:7.2f} ms  fused {fused * 1e3:7.2f} ms  "
                f"x{eager / fused:.2f}  {'fused' if used else 'eager'} by default",
                flush=True,
            )
    res = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": rows,
    }
    out = Path(args.out)
    atomic_write_text(out / "fused.json", json.dumps(res, indent=2) + "\n")
    lines = [
        "# Fused C statistics against eager torch operations, one update per layer",
        "",
        (
            f"Command: `{res['command']}`, torch {res['torch']}, {res['threads']} threads, "
            f"{res['date']}. Medians of {args.repeats} updates (default statistics)."
        ),
        "",
        "| activation (N, C, H, W) | memory format | eager ms | fused ms | speed-up | default |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {tuple(r['shape'])} | {r['format']} | {r['eager_ms']:.2f} | "
            f"{r['fused_ms']:.2f} | {r['speedup']:.2f}x | "
            f"{'fused' if r['routed'] else 'eager'} |"
        )
    atomic_write_text(out / "fused.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
